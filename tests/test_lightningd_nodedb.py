"""Against a real lightningd v26.06.6: a zero-conf fundee binds its channel's script from its own
node's database (DESIGN 3.14, issue 16 "the fundee's script").

Facts pinned: where `listconfigs`/`getinfo` say the database is; that the fundee's `channels` row
(funding keys, byte-reversed funding txid, output, amount, channel id) is there as soon as the
opener's `fundchannel_complete` returns; that the 2-of-2 of its two keys, as P2WSH, is exactly the
funding script `fundchannel_start` returned. Then the defence: an LSP whose plugin is patched to
send a tree paying a client's channel amount to another 2-of-2 gets no signature from that client and
the creation aborts; the honest creation and a sale still pass, each bound. Runs whenever
`lightningd` is on PATH.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from real_node import (
    PLUGIN,
    channel,
    facts_plugin,
    lsp_and_clients,
    normal,
    open_factory,
    require_lightningd,
    status,
    write_plugin,
)

from superscalar_plugin.engine import musig2
from superscalar_plugin.engine.solvency import SolvencyRefused, Step, check_channel_bound
from superscalar_plugin.engine.store import ClientEntry
from superscalar_plugin.engine.tree import UnsignedNodeTx
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.plugin.creation import funding
from superscalar_plugin.plugin.lightningd import nodedb
from superscalar_plugin.plugin.lightningd.psbt import leaf_psbt

require_lightningd()

from pyln.client import RpcError  # noqa: E402
from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402

AMOUNT = 200_000


def test_the_fundee_reads_its_channels_funding_keys_from_its_own_database(
    node_factory: Any, tmp_path: Path
) -> None:
    opener = node_factory.get_node()
    fundee = node_factory.get_node(options={"plugin": facts_plugin(tmp_path)})
    opener.rpc.connect(fundee.info["id"], "localhost", fundee.port)
    # Where the database is: `wallet` is absent (the default); listconfigs' lightning-dir is the
    # base directory, getinfo's the network directory.
    configs = fundee.rpc.listconfigs()["configs"]
    assert "wallet" not in configs
    base = Path(fundee.daemon.lightning_dir)
    assert Path(configs["lightning-dir"]["value_str"]) == base
    netdir = base / "regtest"
    assert Path(fundee.rpc.getinfo()["lightning-dir"]) == netdir
    where = nodedb.locate(fundee.rpc)
    assert (where.kind, Path(where.location)) == ("sqlite3", netdir / "lightningd.sqlite3")
    assert Path(where.location).is_file()

    start = opener.rpc.call(
        "fundchannel_start",
        {
            "id": fundee.info["id"],
            "amount": AMOUNT,
            "mindepth": 0,
            "announce": False,
            "channel_type": [12, 46, 50],
            "push_msat": 1000,
        },
    )
    script = bytes.fromhex(start["scriptpubkey"])
    tx = Tx(2, (TxIn(os.urandom(32).hex(), 0, 0xFFFFFFFD),), (TxOut(AMOUNT, script),), 0)
    leaf = UnsignedNodeTx(0, tx, AMOUNT + 1_000, bytes.fromhex("5120") + os.urandom(32))
    done = opener.rpc.call(
        "fundchannel_complete", {"id": fundee.info["id"], "psbt": leaf_psbt(leaf)}
    )
    # Right after fundchannel_complete returns on the opener: the fundee's row is there.
    db = nodedb.NodeDb(where)
    bound = db.bound_channel(Step.TREE_SIGNATURE, opener.info["id"], tx.txid, 0)
    assert bound is not None
    assert bound.channel_id == done["channel_id"]
    assert (bound.funding_txid, bound.funding_vout, bound.funding_sat) == (tx.txid, 0, AMOUNT)
    assert bound.script_pubkey() == script  # P2WSH(2-of-2 of the two keys) = the funding script
    assert bound.state in (2, 3)  # CHANNELD_AWAITING_LOCKIN or CHANNELD_NORMAL: open
    # The txid is stored byte-reversed (internal order); the row names the peer; another peer,
    # another output: no channel there.
    conn = sqlite3.connect(f"{Path(where.location).as_uri()}?mode=ro", uri=True)
    [(raw,)] = conn.execute("SELECT funding_tx_id FROM channels").fetchall()
    conn.close()
    assert bytes(raw)[::-1].hex() == tx.txid
    assert db.bound_channel(Step.TREE_SIGNATURE, fundee.info["id"], tx.txid, 0) is None
    assert db.bound_channel(Step.TREE_SIGNATURE, opener.info["id"], tx.txid, 1) is None
    # The opener's own row holds the same two keys, the other way round.
    mine = nodedb.NodeDb(nodedb.locate(opener.rpc)).bound_channel(
        Step.TREE_SIGNATURE, fundee.info["id"], tx.txid, 0
    )
    assert mine is not None
    assert (mine.local_funding_key, mine.remote_funding_key) == (
        bound.remote_funding_key,
        bound.local_funding_key,
    )
    wait_for(
        lambda: all(
            channel(n, done["channel_id"])["state"] == "CHANNELD_NORMAL" for n in (opener, fundee)
        )
    )
    # A zero-conf channel is CHANNELD_NORMAL at once, which fundchannel_cancel does not take
    # (it cancels a channel AWAITING_LOCKIN only): an aborted creation closes it by id instead.
    with pytest.raises(RpcError, match="No channels being opened or awaiting lock-in"):
        opener.rpc.call("fundchannel_cancel", {"id": fundee.info["id"]})
    again = db.bound_channel(Step.TREE_SIGNATURE, opener.info["id"], tx.txid, 0)
    assert again is not None and again.state == 3  # CHANNELD_NORMAL, in the fundee's database
    # Closed as an aborted sale's channel is (`close_unfunded`): the fundee's row leaves the open
    # states, and nothing is signed into that channel again (round 9: a stalled sale retried).
    funding.close_unfunded(
        opener.rpc, ClientEntry(fundee.info["id"], AMOUNT, channel_id=done["channel_id"])
    )
    wait_for(lambda: channel(fundee, done["channel_id"])["state"] != "CHANNELD_NORMAL")
    closed = db.bound_channel(Step.TREE_SIGNATURE, opener.info["id"], tx.txid, 0)
    assert closed is not None and closed.state not in (2, 3), closed
    with pytest.raises(SolvencyRefused, match="channel_state"):
        check_channel_bound(Step.SALE_SIGNATURE, closed, tx.txid, 0, script, AMOUNT)


# The LSP's plugin, patched to lie: every channel is completed honestly on its leaf, then the tree
# sent for signing pays client 0's channel amount to a 2-of-2 of two other keys. Every ceremony
# message the LSP receives is logged ("LIE-RECV <peer> <type>").
LYING_LSP = """
import hashlib, logging
from superscalar_plugin.engine import dw, wire
from superscalar_plugin.engine.ceremony import Coordinator
from superscalar_plugin.engine import protocol
from superscalar_plugin.plugin.creation import lsp as lspmod
from superscalar_plugin.plugin.main import run

log = logging.getLogger("superscalar")
honest_complete = lspmod.LspRole._complete_channels
honest_payload = lspmod.LspRole.on_payload

def other_2of2():
    a, b = sorted(bytes.fromhex(k) for k in KEYS)
    witness = b"\\x52\\x21" + a + b"\\x21" + b + b"\\x52\\xae"
    return b"\\x00\\x20" + hashlib.sha256(witness).digest()

def lying_complete(self, s, factory, coordinator):
    # The channels complete on the honest leaves; the SIGN_REQUESTs (sent as each completes)
    # describe a tree whose leaf pays client 0 into another 2-of-2.
    scripts = [c.channel_script for c in s.record.clients]
    scripts[0] = other_2of2().hex()
    lie = self._factory_on(s.record, scripts)
    key = self._node.lsp_key(s.record.instance_id)
    outpoint = (s.record.funding_txid, s.record.funding_vout)
    states = dw.initial_states(lie.topology)
    liar = Coordinator(lie, key, outpoint, states, client_nonces=s.nonces)
    coordinator.start = liar.start
    s.factory, s.coordinator = lie, liar
    log.info("LIE: client 0's leaf pays another 2-of-2")
    return honest_complete(self, s, factory, coordinator)

def spying_payload(self, instance, peer, p):
    if isinstance(p, protocol.Ceremony):
        log.info("LIE-RECV %s %s", peer, wire.decode(p.message).type.name)
    return honest_payload(self, instance, peer, p)

lspmod.LspRole._complete_channels = lying_complete
lspmod.LspRole.on_payload = spying_payload
run()
"""


def test_a_leaf_paying_another_2of2_gets_no_nonce_and_the_creation_aborts(
    node_factory: Any, tmp_path: Path
) -> None:
    keys = [musig2.pubkey_from_secret(hashlib.sha256(b"lie%d" % i).digest()).hex() for i in (1, 2)]
    source = f"KEYS = {keys!r}\n" + LYING_LSP
    lying = write_plugin(tmp_path, "lying_lsp.py", source)
    lsp, clients = lsp_and_clients(node_factory, 2, lsp_options={"plugin": lying})
    victim = clients[0]
    try:
        open_factory(lsp, clients)
        raise AssertionError("the factory was created on a lying leaf")
    except Exception as e:
        message = str(e)
    assert victim.info["id"] in message and "tree_signature refused" in message, message
    assert lsp.daemon.is_in_log("LIE: client 0's leaf pays another 2-of-2")
    # The victim signed nothing (its nonces went with its ACCEPT and commit to nothing); its
    # factory is aborted, naming the check.
    assert not lsp.daemon.is_in_log(f"LIE-RECV {victim.info['id']} PARTIAL_SIGS")
    assert not lsp.daemon.is_in_log(f"LIE-RECV {victim.info['id']} NONCES")
    [view] = victim.rpc.call("factory-status")["factories"]
    assert view["state"] == "aborted" and "channel_unbound" in view["error"], view
    # The channel the LSP completed before the tree is closed on both sides: it can never hold
    # money (its funding, the leaf, needs a tree nobody signed).
    for node, peer in ((lsp, victim), (victim, lsp)):
        wait_for(lambda node=node, peer=peer: not normal(node, peer))


def test_an_honest_creation_and_a_sale_are_bound_and_pass(node_factory: Any, bitcoind: Any) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2, lsp_options={"plugin": PLUGIN})
    created = open_factory(lsp, clients, stock_sat=200_000)
    instance = str(created["instance"])
    bitcoind.generate_block(1)
    for c in clients:
        [entry] = c.rpc.listdatastore(["superscalar", "factories", instance])["datastore"]
        [chan] = c.rpc.listpeerchannels(lsp.info["id"])["channels"]
        assert f'"channel_bound": "{chan["channel_id"]}"' in entry["string"]
    a = clients[0]
    sold = lsp.rpc.call(
        "factory-sell", {"instance": instance, "client": a.info["id"], "sat": 50_000}
    )
    assert sold["kind"] == "factory", sold
    wait_for(lambda: channel(a, sold["channel_id"])["state"] == "CHANNELD_NORMAL")
    view = status(a, instance)
    assert [(s["sale_txid"], s["complete"]) for s in view["sales"]] == [(sold["sale_txid"], True)]
