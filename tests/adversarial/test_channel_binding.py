"""A hostile LSP lies about a client's channel script (issue 16, "the fundee's script").

The client is the zero-conf fundee: only its own lightningd's database says which funding keys
its channel has. Through the real plugin process (tests/harness, whose fake lightningd writes the
`channels` row like lightningd), the LSP is played by the test (`HostileLsp`): it completes the
channels, then sends a tree whose leaf pays the client's amount to a 2-of-2 the client's node does
not hold (or sends the tree before completing, or the node's record has other keys). The client
must refuse before any nonce or partial signature leaves, and its unsigned channel takes no HTLC.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable

import pytest
from test_plugin_harness import _create
from test_plugin_migration import _funded as _migration_funded, _status as _mstatus

from superscalar_plugin.engine import musig2, protocol, wire

from .plugin_hostile import (
    HostileLsp,
    complete_channels,
    htlc_request,
    lsp_with_clients,
    open_channels,
    pig,
    status,
    wait,
)
from .test_hostile_sales import _completed, _coordinator, _funded, _offer
from harness import walletdb
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode


def _other_2of2(seed: bytes) -> bytes:
    """A P2WSH 2-of-2 of two keys that are not the client's channel keys (the LSP's, say)."""
    a, b = sorted(
        musig2.pubkey_from_secret(hashlib.sha256(seed + bytes([i])).digest()) for i in (1, 2)
    )
    witness = b"\x52\x21" + a + b"\x21" + b + b"\x52\xae"
    return b"\x00\x20" + hashlib.sha256(witness).digest()


def _setup(network_factory: Callable[..., Network]) -> tuple[Network, HostileLsp, list[FakeNode]]:
    net, lsp, clients = lsp_with_clients(network_factory, SUPERSCALAR_PLUGIN, 30)
    hostile = HostileLsp(net, lsp, clients)
    hostile.propose_all()
    return net, hostile, clients


def _replies(hostile: HostileLsp, seconds: float = 3.0) -> dict[int, list[protocol.Payload]]:
    """Everything the clients sent the LSP within `seconds`."""
    out: dict[int, list[protocol.Payload]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            i, payload = hostile.inbox.get(timeout=0.1)
        except Exception:
            continue
        out.setdefault(i, []).append(payload)
    return out


def _signed(payloads: list[protocol.Payload]) -> bool:
    """Whether the client answered with a signature round (its nonces went with its ACCEPT)."""
    return any(
        isinstance(p, protocol.Ceremony)
        and wire.decode(p.message).type in (wire.MsgType.NONCES, wire.MsgType.PARTIAL_SIGS)
        for p in payloads
    )


@pytest.mark.parametrize("lie", ["other_2of2", "never_completed", "node_keys_differ"])
def test_a_leaf_not_paying_the_clients_own_channel_gets_no_nonce(
    network_factory: Callable[..., Network], lie: str
) -> None:
    net, hostile, clients = _setup(network_factory)
    scripts = open_channels(hostile)
    honest = hostile.factory(scripts)
    outpoint = ("ab" * 32, 0)
    victim = clients[0]
    if lie == "never_completed":
        tree = honest  # the tree is right, but no channel exists at its leaf
    else:
        complete_channels(hostile, hostile.coordinator(honest, outpoint))
        # Before any tree: the completed channel is unsigned, it takes no HTLC.
        [ch] = victim.rpc_call("listpeerchannels")["channels"]
        verdict = victim.call_hook(
            "htlc_accepted", htlc_request(ch["alias"]["local"], net.blockheight)
        )
        assert verdict["result"] == "fail"
        tree = honest
        if lie == "other_2of2":  # the client's amount, to a 2-of-2 of keys it does not hold
            tree = hostile.factory([_other_2of2(b"lsp"), *scripts[1:]])
        else:  # the node recorded other funding keys than the leaf output's 2-of-2
            db = walletdb.db_path(victim)
            with sqlite3.connect(db) as conn:
                conn.execute(
                    "UPDATE channels SET fundingkey_remote = ?",
                    (musig2.pubkey_from_secret(hashlib.sha256(b"other").digest()),),
                )
            conn.close()
    coord = hostile.coordinator(tree, outpoint)
    for c, data in coord.start().items():
        hostile.send(c, protocol.Ceremony(hostile.instance, data))
    replies = _replies(hostile)
    assert not _signed(replies.get(0, [])), "the victim signed"
    assert any(isinstance(p, protocol.Text) for p in replies.get(0, []))
    wait(lambda: status(victim)[0]["state"] == "aborted", what="victim aborted")
    error = str(status(victim)[0]["error"])
    kind = {
        "other_2of2": "channel_unbound",  # no channel of ours at the lying leaf's txid
        "never_completed": "channel_unbound",
        "node_keys_differ": "channel_script",
    }[lie]
    assert f"tree_signature refused ({kind})" in error, error
    if lie != "never_completed":
        # The channel the LSP completed takes no HTLC, and the client closes it.
        def closed() -> bool:
            [ch] = victim.rpc_call("listpeerchannels")["channels"]
            return ch["state"] != "CHANNELD_NORMAL"

        wait(closed, what="the unsigned channel closed")
        [ch] = victim.rpc_call("listpeerchannels")["channels"]
        verdict = victim.call_hook(
            "htlc_accepted", htlc_request(ch["alias"]["local"], net.blockheight)
        )
        assert verdict["result"] == "fail"


def test_the_honest_tree_is_bound_and_signed(network_factory: Callable[..., Network]) -> None:
    """The same LSP, honest: every client checks its leaf against its own node and signs; the
    channel it checked is in its record (a migration target must have it)."""
    _, hostile, clients = _setup(network_factory)
    factory = hostile.factory(open_channels(hostile))
    coord = hostile.sign(factory, ("cd" * 32, 0))
    topo = factory.topology
    for i, c in enumerate(clients):
        [f] = status(c)
        assert f["state"] == "ready"
        [entry] = c.rpc_call("listdatastore", {"key": ["superscalar", "factories", f["instance"]]})[
            "datastore"
        ]
        [ch] = c.rpc_call("listpeerchannels")["channels"]
        assert ch["funding_txid"] == coord.txs[topo.leaf_of_client[i]].txid
        assert f'"channel_bound": "{ch["channel_id"]}"' in entry["string"]


@pytest.mark.parametrize("lie", ["never_completed", "other_2of2"])
def test_a_sale_not_paying_the_buyers_own_channel_gets_no_nonce_from_the_buyer(
    network_factory: Callable[..., Network], lie: str
) -> None:
    """The buyer binds its sale channel like its leaf: a SALE whose channel output its node does
    not hold (never completed, or another 2-of-2 while the completed channel is elsewhere) gets
    no nonce from it; the co-signer, not the buyer, keeps its own checks and answers."""
    f = _funded(network_factory)
    session = bytes([4]) * 32
    _offer(f, session)
    if lie == "never_completed":
        co = _coordinator(f, f.chain(), session)  # a P2WSH the buyer's node holds no channel for
    else:
        honest = _completed(f, f.chain(), session)  # the real channel, completed on this sale
        co = _coordinator(f, f.chain(), session)  # ...but SALE pays another 2-of-2
        assert co.sold.sale_tx.txid != honest.sold.sale_tx.txid
    proposal = co.proposal()
    for i in range(2):
        f.lsp.send(i, proposal)
    got: dict[int, protocol.Payload] = {}
    for _ in range(2):
        i, payload = f.lsp.expect(protocol.Payload)
        got[i] = payload
    refusal = got[0]
    assert isinstance(refusal, protocol.Text), refusal
    assert "sale_signature refused (channel_unbound)" in refusal.reason
    nonce = got[1]
    assert isinstance(nonce, protocol.SaleStep) and nonce.kind is protocol.SaleStepKind.NONCES
    assert status(f.clients[0])[0]["sales"] == []


def test_a_migration_target_whose_channel_was_never_bound_is_refused(
    network_factory: Callable[..., Network],
) -> None:
    """A factory signed before the binding existed (its record has no `channel_bound`) is no
    target for a move: the balance would go into a channel whose script nobody checked."""
    net, lsp, clients, old = _migration_funded(network_factory, 2)
    me = clients[0]
    new = _create(lsp, clients)["instance"]
    net.mine(1)
    wait(lambda: _mstatus(me, new)["state"] == "funded", what="the successor funded")
    key = ["superscalar", "factories", new]
    [entry] = me.rpc_call("listdatastore", {"key": key})["datastore"]
    record = json.loads(entry["string"])
    assert record["channel_bound"]  # the honest creation bound it
    older = {k: v for k, v in record.items() if k != "channel_bound"}  # as an older version wrote
    me.rpc_call("datastore", {"key": key, "string": json.dumps(older), "mode": "must-replace"})
    me.restart()
    move = protocol.Move(bytes.fromhex(old), protocol.MoveTarget.FACTORY, bytes.fromhex(new))
    lsp.rpc_call("sendcustommsg", {"node_id": me.node_id, "msg": pig(move)})
    wait(lambda: bool(_mstatus(lsp, old)["clients"][0].get("refusal")), what="a refusal")
    assert "never checked" in str(_mstatus(lsp, old)["clients"][0]["refusal"])
    assert _mstatus(me, old)["moving_to"] is None
