"""Channel script binding without lightningd: where the database is (`solvency.wallet_db`), what a
`channels` row means (`bound_from_row`), the read itself (`plugin/lightningd/nodedb.py`, read-only, failing
closed), and the Signer giving no nonce until its leaf output is its own node's channel."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from superscalar_plugin.engine import musig2, wire
from superscalar_plugin.engine.ceremony import Signer, SignerState
from superscalar_plugin.engine.solvency import (
    BoundChannel,
    SolvencyRefused,
    Step,
    WalletDb,
    bound_from_row,
    wallet_db,
)
from superscalar_plugin.plugin.creation.client import refusal
from superscalar_plugin.plugin.lightningd import nodedb
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.simulate import agreed_terms

from helpers import coordinator_for, participants

KEY_A = musig2.pubkey_from_secret(hashlib.sha256(b"a").digest())
KEY_B = musig2.pubkey_from_secret(hashlib.sha256(b"b").digest())
PEER = "02" + "11" * 32
TXID = "ab" * 31 + "cd"


# --- where the database is ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wallet", "lightning_dir", "expected"),
    [
        ("", "/ln", WalletDb("sqlite3", "/ln/regtest/lightningd.sqlite3")),  # listconfigs' dir
        ("", "/ln/", WalletDb("sqlite3", "/ln/regtest/lightningd.sqlite3")),
        ("", "/ln/regtest", WalletDb("sqlite3", "/ln/regtest/lightningd.sqlite3")),  # getinfo's
        ("sqlite3:///d/w.sqlite3", "/ln", WalletDb("sqlite3", "/d/w.sqlite3")),
        ("sqlite3:///d/w.sqlite3:/b/w.bak", "/ln", WalletDb("sqlite3", "/d/w.sqlite3")),
        ("sqlite3://w.sqlite3", "/ln/regtest", WalletDb("sqlite3", "/ln/regtest/w.sqlite3")),
        ("postgres://u:p@h:5432/db", "/ln", WalletDb("postgres", "postgres://u:p@h:5432/db")),
    ],
)
def test_the_database_is_where_listconfigs_says(
    wallet: str, lightning_dir: str, expected: WalletDb
) -> None:
    assert wallet_db(wallet, lightning_dir, "regtest") == expected


@pytest.mark.parametrize("wallet", ["/plain/path", "sqlite3://", "mysql://x", "sqlite3://:/bak"])
def test_a_database_we_cannot_name_is_refused(wallet: str) -> None:
    with pytest.raises(SolvencyRefused, match="channel_db"):
        wallet_db(wallet, "/ln", "regtest")


# --- what a row means -----------------------------------------------------------------------------


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "full_channel_id": bytes(range(32)),
        "funding_pubkey_local": KEY_A,
        "fundingkey_remote": KEY_B,
        "funding_tx_id": bytes.fromhex(TXID)[::-1],
        "funding_tx_outnum": 1,
        "funding_satoshi": 200_000,
        "state": 3,  # CHANNELD_NORMAL
    }
    row.update(changes)
    return row


def test_a_row_is_a_binding_with_the_txid_in_display_order() -> None:
    bound = bound_from_row(
        Step.TREE_SIGNATURE, *_row(funding_pubkey_local=memoryview(KEY_A)).values()
    )
    assert bound == BoundChannel(bytes(range(32)).hex(), KEY_A, KEY_B, TXID, 1, 200_000)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("fundingkey_remote", KEY_B[:32]),
        ("funding_pubkey_local", b"\x04" + KEY_A[1:]),
        ("funding_tx_id", None),
        ("full_channel_id", "not bytes"),
        ("funding_tx_outnum", -1),
        ("funding_satoshi", 0),
        ("state", "3"),
    ],
)
def test_a_row_that_is_not_what_it_must_be_is_refused_naming_the_column(
    column: str, value: object
) -> None:
    with pytest.raises(SolvencyRefused, match=f"channel_db.*{column}"):
        bound_from_row(Step.SALE_SIGNATURE, *_row(**{column: value}).values())


# --- the read: read-only, one row, fail closed -----------------------------------------------


def _db(path: Path, rows: list[dict[str, object]], peer: str = PEER) -> WalletDb:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE peers (id INTEGER PRIMARY KEY, node_id BLOB);"
        "CREATE TABLE channels (id INTEGER PRIMARY KEY, peer_id INTEGER, full_channel_id BLOB,"
        " funding_pubkey_local BLOB, fundingkey_remote BLOB, funding_tx_id BLOB,"
        " funding_tx_outnum INTEGER, funding_satoshi BIGINT, state INTEGER);"
    )
    conn.execute("INSERT INTO peers (id, node_id) VALUES (1, ?)", (bytes.fromhex(peer),))
    for r in rows:
        conn.execute(
            "INSERT INTO channels (peer_id, full_channel_id, funding_pubkey_local,"
            " fundingkey_remote, funding_tx_id, funding_tx_outnum, funding_satoshi, state)"
            " VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            tuple(r.values()),
        )
    conn.commit()
    conn.close()
    return WalletDb("sqlite3", str(path))


def test_the_node_database_is_read_only_for_that_peer_and_outpoint(tmp_path: Path) -> None:
    path = tmp_path / "lightningd.sqlite3"
    db = nodedb.NodeDb(_db(path, [_row()]))
    before = path.read_bytes()
    bound = db.bound_channel(Step.TREE_SIGNATURE, PEER, TXID, 1)
    assert bound is not None and bound.funding_sat == 200_000
    assert db.bound_channel(Step.TREE_SIGNATURE, PEER, TXID, 0) is None  # another output
    assert db.bound_channel(Step.TREE_SIGNATURE, "03" + "22" * 32, TXID, 1) is None  # another peer
    assert path.read_bytes() == before and not list(tmp_path.glob("*-journal"))


def test_a_database_that_cannot_be_read_is_a_refusal_never_no_channel(tmp_path: Path) -> None:
    missing = nodedb.NodeDb(WalletDb("sqlite3", str(tmp_path / "none.sqlite3")))
    with pytest.raises(SolvencyRefused, match=r"channel_db.*none\.sqlite3"):
        missing.bound_channel(Step.TREE_SIGNATURE, PEER, TXID, 1)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(SolvencyRefused, match="channel_db"):
        nodedb.NodeDb(WalletDb("sqlite3", str(garbage))).bound_channel(
            Step.TREE_SIGNATURE, PEER, TXID, 1
        )
    with pytest.raises(SolvencyRefused, match=r"channel_db.*lightning-dir"):
        nodedb.NodeDb(None, "lightningd did not say its lightning-dir").bound_channel(
            Step.TREE_SIGNATURE, PEER, TXID, 1
        )


def test_postgres_without_a_driver_cannot_bind_and_a_client_refuses_to_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodedb, "postgres_driver", lambda: None)
    db = nodedb.NodeDb(WalletDb("postgres", "postgres://u@h/db"))
    reason = db.usable()
    assert reason is not None and "psycopg2" in reason
    with pytest.raises(SolvencyRefused, match="psycopg2"):
        db.bound_channel(Step.TREE_SIGNATURE, PEER, TXID, 1)
    from superscalar_plugin.engine import protocol
    from superscalar_plugin.engine.tree import FactoryParams, Topology

    params = FactoryParams()
    ewt = Topology.build(2, params).ewt
    lsp = musig2.pubkey_from_secret(hashlib.sha256(b"lsp").digest())
    p = protocol.Propose(bytes(32), 0, 2, params, 10_000, lsp, 100_000, ewt)
    cfg = Config(accept_from=frozenset({PEER}))
    said = refusal(PEER, p, cfg, 100, reason)
    assert said is not None and "cannot check its channel's script" in said
    assert refusal(PEER, p, replace(cfg, trust_channel_script=True), 100, reason) is None
    assert refusal(PEER, p, cfg, 100, None) is None


# --- the Signer: no nonce before the binding -----------------------------------------------------


def _sign_request(client: int) -> tuple[bytes, BoundChannel, Signer, object]:
    p = participants(4)
    f = p.factory
    co = coordinator_for(p)
    request = co.start()[client]
    leaf = co.txs[f.topology.leaf_of_client[client]]
    vout = client - f.topology.nodes[f.topology.leaf_of_client[client]].lo
    client_pk, lsp_pk = f.client_pubkeys[client], f.lsp_pubkey
    sat = f.channels[client][1]
    bound = BoundChannel("00" * 32, client_pk, lsp_pk, leaf.txid, vout, sat)
    assert bound.script_pubkey() == f.channels[client][0]
    terms = agreed_terms(f, client, with_script=False)
    return request, bound, Signer(p.client_seckeys[client], terms), leaf


@pytest.mark.parametrize(
    ("lie", "kind"),
    [
        ("none", "channel_unbound"),
        ("other_keys", "channel_script"),
        ("other_outpoint", "channel_outpoint"),
        ("other_amount", "channel_amount"),
    ],
)
def test_the_signer_gives_no_nonce_unless_its_node_holds_that_exact_channel(
    lie: str, kind: str
) -> None:
    request, bound, signer, _ = _sign_request(1)
    lied: BoundChannel | None = {
        "none": None,
        "other_keys": replace(bound, remote_funding_key=KEY_B),
        "other_outpoint": replace(bound, funding_vout=bound.funding_vout + 1),
        "other_amount": replace(bound, funding_sat=bound.funding_sat + 1),
    }[lie]
    asked: list[tuple[str, int]] = []

    def binder(txid: str, vout: int) -> BoundChannel | None:
        asked.append((txid, vout))
        return lied

    signer.binder = binder
    with pytest.raises(SolvencyRefused, match=f"tree_signature refused \\({kind}\\)"):
        signer.receive(request)
    assert asked == [(bound.funding_txid, bound.funding_vout)]  # one read, our own channel
    assert signer.state is SignerState.FAILED and not signer._nonces and signer.bound is None


def test_the_signer_binds_its_leaf_output_then_signs_with_that_exact_script() -> None:
    request, bound, signer, _ = _sign_request(2)
    signer.binder = lambda txid, vout: bound
    reply = signer.receive(request)
    assert reply is not None and wire.decode(reply).type is wire.MsgType.NONCES
    assert signer.bound == bound and signer._pending_terms is not None
    assert signer._pending_terms.channel_script == bound.script_pubkey()


def test_a_binder_that_fails_is_a_refusal() -> None:
    request, _, signer, _ = _sign_request(0)

    def broken(txid: str, vout: int) -> BoundChannel | None:
        raise SolvencyRefused(Step.TREE_SIGNATURE, "channel_db", "database locked")

    signer.binder = broken
    with pytest.raises(SolvencyRefused, match="channel_db"):
        signer.receive(request)
    assert signer.state is SignerState.FAILED and not signer._nonces


# --- the record says the binding was checked -------------------------------------------------


def test_channel_bound_is_stored_backward_compatible_and_checked() -> None:
    from superscalar_plugin.engine import store
    from superscalar_plugin.engine.errors import InvalidRecord, StoreError

    from adversarial.records import client_record

    bound = client_record().replace(channel_bound="cd" * 32)
    assert store.from_json(store.to_json(bound)) == bound
    older = store.to_json(bound)
    del older["channel_bound"]  # a record written before the binding existed
    assert store.from_json(older).channel_bound is None
    with pytest.raises(StoreError, match="channel_bound"):
        store.from_json({**store.to_json(bound), "channel_bound": "cd" * 31})
    early = bound.replace(state=store.ClientState.ACCEPTED, header=None, path=(), funding_txid=None)
    with pytest.raises(InvalidRecord, match="channel_bound"):
        store.from_json(store.to_json(early))


def test_postgres_is_read_through_the_same_dsn_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """With psycopg2 installed, the row comes from the DSN lightningd uses, in a read-only
    autocommit session with short timeouts (a stand-in driver records what was asked)."""
    seen: dict[str, object] = {}

    class Cursor:
        def __enter__(self) -> Cursor:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def execute(self, query: str, params: tuple[object, ...]) -> None:
            seen["query"], seen["params"] = query, params

        def fetchall(self) -> list[tuple[object, ...]]:
            return [tuple(_row().values())]

    class Conn:
        autocommit = False

        def cursor(self) -> Cursor:
            seen["autocommit"] = self.autocommit
            return Cursor()

        def close(self) -> None:
            seen["closed"] = True

    class Driver:
        @staticmethod
        def connect(dsn: str, **kwargs: object) -> Conn:
            seen["dsn"], seen["kwargs"] = dsn, kwargs
            return Conn()

        @staticmethod
        def Binary(b: bytes) -> bytes:
            return b

    monkeypatch.setattr(nodedb, "postgres_driver", lambda: Driver)
    db = nodedb.NodeDb(WalletDb("postgres", "postgres://u@h/db"))
    assert db.usable() is None
    bound = db.bound_channel(Step.TREE_SIGNATURE, PEER, TXID, 1)
    assert bound is not None and bound.funding_txid == TXID
    assert seen["dsn"] == "postgres://u@h/db" and seen["autocommit"] is True and seen["closed"]
    assert "default_transaction_read_only=on" in str(seen["kwargs"])
    assert "%s" in str(seen["query"]) and "?" not in str(seen["query"])
    assert seen["params"] == (bytes.fromhex(TXID)[::-1], 1, bytes.fromhex(PEER))
