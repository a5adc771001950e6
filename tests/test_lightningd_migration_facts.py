"""Facts about Core Lightning v26.06.6 that factory MIGRATION relies on, pinned on a real lightningd.

A client C moves its balance from an OLD factory channel to a NEW one with one circular payment,
then OLD is retired by a mutual close. L (the LSP) opened both to C: zero-conf, unannounced, on
outputs of transactions that are never broadcast (DESIGN 3.1-3.3). pyln-testing runs every node
with --developer; only the `dev-allowdustreserve` case depends on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from real_node import (
    channel,
    circular_route,
    direct_route,
    facts_plugin,
    forwarding_fee,
    invoice,
    max_movable,
    open_unbroadcast_channel,
    require_lightningd,
    send_route,
    settle,
    start_payment,
    steer,
)

require_lightningd()

from pyln.client import RpcError  # noqa: E402
from pyln.testing.fixtures import *  # noqa: E402, F403
from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

# A zero-conf opener with dev-allowdustreserve refuses a channel of 546 sat * (483 + 483 + 2) =
# 528,528 sat or less (max-concurrent-htlcs is 483 on regtest, 30 on mainnet).
OLD_SAT = 600_000
NEW_SAT = 1_000_000
PUSH_MSAT = 1_000  # what open_unbroadcast_channel pushes
PAID_MSAT = 50_000_000  # what L pays C over OLD before the move
DUST_MSAT = 546_000  # both nodes' dust limit: the least reserve stock v26.06.6 lets an opener ask
WARNINGS = re.compile(r" (UNUSUAL|\*\*BROKEN\*\*) ")
# Logged by every pyln-testing node that stops or starts, whatever its channels.
ROUTINE = re.compile(r"JSON-RPC shutdown|is not a known notification topic")


def _pair(node_factory: Any, tmp_path: Path, **lsp_options: Any) -> tuple[Any, Any]:
    plugin = facts_plugin(tmp_path)
    lsp = node_factory.get_node(options={"plugin": plugin, **lsp_options}, may_reconnect=True)
    client = node_factory.get_node(options={"plugin": plugin}, may_reconnect=True)
    lsp.rpc.connect(client.info["id"], "localhost", client.port)
    return lsp, client


def _msat(node: Any, channel_id: str, field: str) -> int:
    return int(channel(node, channel_id)[field])


def _pay(payer: Any, payee: Any, channel_id: str, amount_msat: int) -> dict[str, Any]:
    inv = invoice(payee, amount_msat)
    done = send_route(payer, direct_route(payer, payee, channel_id, inv), inv)
    settle(payer, payee)
    return done


def _move(client: Any, lsp: Any, out: str, back: str, amount_msat: int) -> dict[str, Any]:
    inv = invoice(client, amount_msat)
    done = send_route(client, circular_route(client, lsp, out, back, inv), inv)
    settle(client, lsp)
    return done


def _old_and_new(lsp: Any, client: Any) -> tuple[str, str]:
    """OLD (L asks C for a zero reserve) holding PAID_MSAT of C's, and an empty NEW."""
    old = open_unbroadcast_channel(lsp, client, OLD_SAT, reserve=0)
    new = open_unbroadcast_channel(lsp, client, NEW_SAT)
    _pay(lsp, client, old, PAID_MSAT)
    return old, new


def _move_all(lsp: Any, client: Any, old: str, new: str) -> int:
    spendable = _msat(client, old, "spendable_msat")
    amount = max_movable(spendable, channel(client, new)["updates"]["remote"])
    assert _move(client, lsp, old, new, amount)["status"] == "complete"
    return amount


def _last_forward(lsp: Any, in_channel: str) -> dict[str, Any]:
    """L's latest forward of an HTLC that came in over `in_channel` (out_channel: L's alias)."""
    alias = channel(lsp, in_channel)["alias"]["local"]
    forward: dict[str, Any] = lsp.rpc.listforwards(in_channel=alias)["forwards"][-1]
    return forward


def _marks(*nodes: Any) -> list[int]:
    for n in nodes:
        n.daemon.logs_catchup()
    return [len(n.daemon.logs) for n in nodes]


def _warnings(node: Any, mark: int) -> list[str]:
    node.daemon.logs_catchup()
    return [line for line in node.daemon.logs[mark:] if WARNINGS.search(line)]


# --- 1. reserve ---------------------------------------------------------------------------------


def test_a_zero_reserve_becomes_the_dust_limit_and_the_hook_sets_the_openers_reserve(
    node_factory: Any, tmp_path: Path
) -> None:
    """`fundchannel_start ... reserve=0`: openingd raises a reserve below the dust limit to it
    (546 sat) unless `dev-allowdustreserve`, so C can send all it holds in the channel but 546 sat;
    with the default reserve (1% of the channel) it keeps 6,000 sat. C's `openchannel` hook may
    answer `reserve` (sat): L must then keep it (also raised to 546 sat), and the open works."""
    lsp, client = _pair(node_factory, tmp_path)
    zero = open_unbroadcast_channel(lsp, client, OLD_SAT, reserve=0)
    default = open_unbroadcast_channel(lsp, client, OLD_SAT)
    steer(client, "reserve", "0")
    hook_zero = open_unbroadcast_channel(lsp, client, OLD_SAT)
    steer(client, "reserve", "10000")
    hook_10k = open_unbroadcast_channel(lsp, client, OLD_SAT)
    held = PAID_MSAT + PUSH_MSAT
    for cid, reserve in ((zero, DUST_MSAT), (default, OLD_SAT * 10)):
        _pay(lsp, client, cid, PAID_MSAT)
        assert _msat(client, cid, "our_reserve_msat") == reserve
        assert _msat(lsp, cid, "their_reserve_msat") == reserve
        assert _msat(client, cid, "to_us_msat") == held
        assert _msat(client, cid, "spendable_msat") == held - reserve
    for cid, reserve in ((hook_zero, DUST_MSAT), (hook_10k, 10_000_000)):
        assert _msat(lsp, cid, "our_reserve_msat") == reserve
        assert _msat(client, cid, "their_reserve_msat") == reserve
        assert _msat(client, cid, "our_reserve_msat") == OLD_SAT * 10  # L's default for C
        assert _pay(lsp, client, cid, PAID_MSAT)["status"] == "complete"
        assert _pay(client, lsp, cid, PAID_MSAT // 2)["status"] == "complete"
    inv = invoice(lsp, held - DUST_MSAT + 1)  # one msat more than C may send over `zero`
    with pytest.raises(RpcError, match="WIRE_TEMPORARY_CHANNEL_FAILURE"):
        send_route(client, direct_route(client, lsp, zero, inv), inv)
    assert _pay(client, lsp, zero, held - DUST_MSAT)["status"] == "complete"
    assert _msat(client, zero, "to_us_msat") == DUST_MSAT


# --- 2. the circular move ---------------------------------------------------------------------


@pytest.mark.parametrize("dust_reserve", [False, True], ids=["stock", "dev-allowdustreserve"])
def test_one_circular_payment_moves_all_but_the_reserve_from_old_to_new(
    node_factory: Any, bitcoind: Any, tmp_path: Path, dust_reserve: bool
) -> None:
    """C pays its own invoice over [L via OLD, C via NEW]: the most it can move is its spendable
    on OLD less L's forwarding fee on NEW (1 msat + 10 ppm by default). OLD keeps exactly C's
    reserve: 546 sat on stock v26.06.6, 0 with `dev-allowdustreserve=true` on L (developer only)."""
    options = {"dev-allowdustreserve": "true"} if dust_reserve else {}
    lsp, client = _pair(node_factory, tmp_path, **options)
    old, new = _old_and_new(lsp, client)
    left = 0 if dust_reserve else DUST_MSAT
    spendable = _msat(client, old, "spendable_msat")
    assert spendable == PAID_MSAT + PUSH_MSAT - left
    update = channel(client, new)["updates"]["remote"]
    amount = max_movable(spendable, update)
    assert amount + forwarding_fee(update, amount) == spendable
    inv = invoice(client, amount + 1)  # the fee does not fit any more
    with pytest.raises(RpcError, match="WIRE_TEMPORARY_CHANNEL_FAILURE"):
        send_route(client, circular_route(client, lsp, old, new, inv), inv)
    assert _move_all(lsp, client, old, new) == amount
    assert _msat(client, old, "to_us_msat") == left
    assert _msat(lsp, old, "to_us_msat") == OLD_SAT * 1000 - left  # both agree
    assert _msat(client, old, "spendable_msat") == 0
    assert _msat(client, new, "to_us_msat") == PUSH_MSAT + amount
    assert _msat(lsp, new, "to_us_msat") == NEW_SAT * 1000 - PUSH_MSAT - amount
    closed = client.rpc.close(old)  # what is left closes too (with no output to C when 0)
    outputs = bitcoind.rpc.decoderawtransaction(closed["txs"][0])["vout"]
    assert len(outputs) == (1 if dust_reserve else 2)
    assert {channel(n, old)["state"] for n in (lsp, client)} == {"CLOSINGD_COMPLETE"}


def test_the_lsp_forwards_the_move_over_its_fullest_equal_fee_channel_unless_pinned(
    node_factory: Any, tmp_path: Path
) -> None:
    """Non-strict forwarding (lightningd's `best_channel`; only `--dev-strict-forwarding` turns it
    off): L forwards to C over whichever of its channels to C has the same fee_base/ppm as the one
    the onion names and the most spendable for L. When that is OLD, the circular move comes back
    over OLD: waitsendpay says complete, NEW gains nothing, C has only paid L's fee. The move goes
    over NEW when L's `htlc_accepted` hook answers `forward_to` NEW's channel id, or once OLD's
    fees differ from NEW's (`setchannel` on OLD)."""
    lsp, client = _pair(node_factory, tmp_path)
    old = open_unbroadcast_channel(lsp, client, OLD_SAT, reserve=0)
    new = open_unbroadcast_channel(lsp, client, OLD_SAT // 3)  # less of L's than OLD has
    _pay(lsp, client, old, PAID_MSAT)
    moved = 10_000_000
    fee = forwarding_fee(channel(client, new)["updates"]["remote"], moved)
    start = {cid: _msat(client, cid, "to_us_msat") for cid in (old, new)}
    assert _move(client, lsp, old, new, moved)["status"] == "complete"
    assert _last_forward(lsp, old)["out_channel"] == channel(lsp, old)["alias"]["local"]
    assert _msat(client, old, "to_us_msat") == start[old] - fee
    assert _msat(client, new, "to_us_msat") == start[new]
    steer(lsp, "forward_to", new)
    assert _move(client, lsp, old, new, moved)["status"] == "complete"
    assert _last_forward(lsp, old)["out_channel"] == channel(lsp, new)["alias"]["local"]
    assert _msat(client, new, "to_us_msat") == start[new] + moved
    steer(lsp, "forward_to", None)
    lsp.rpc.setchannel(old, feebase=2)
    assert _move(client, lsp, old, new, moved)["status"] == "complete"
    assert _last_forward(lsp, old)["out_channel"] == channel(lsp, new)["alias"]["local"]
    assert _msat(client, new, "to_us_msat") == start[new] + 2 * moved
    assert _msat(client, old, "to_us_msat") == start[old] - 3 * fee - 2 * moved


# --- 3. retiring OLD ----------------------------------------------------------------------------


def _assert_closing_tx_refused(
    bitcoind: Any, nodes: tuple[Any, ...], old: str, closed: Any
) -> None:
    """The mutual close spends OLD's funding output, pays C its 546 sat, and bitcoind refuses it
    (its input never existed): both nodes broadcast it, logging the refusal at DEBUG only."""
    [tx], [txid] = closed["txs"], closed["txids"]
    decoded = bitcoind.rpc.decoderawtransaction(tx)
    chan = channel(nodes[0], old)
    [spent] = decoded["vin"]
    assert (spent["txid"], spent["vout"]) == (chan["funding_txid"], chan["funding_outnum"])
    assert DUST_MSAT // 1000 in [round(o["value"] * 10**8) for o in decoded["vout"]]
    [verdict] = bitcoind.rpc.testmempoolaccept([tx])
    assert verdict["allowed"] is False and verdict["reject-reason"] == "missing-inputs"
    for node in nodes:
        node.daemon.wait_for_logs([rf"Broadcasting txid {txid}", r"bad-txns-inputs-missingorspent"])
    assert txid not in bitcoind.rpc.getrawmempool()


def _assert_nothing_enters(lsp: Any, client: Any, old: str, new: str) -> None:
    """L cannot pay C over OLD (sendpay: 204, WIRE_UNKNOWN_NEXT_PEER); C paying itself out over
    NEW and back over OLD succeeds, but L forwards it over NEW (non-strict forwarding)."""
    held = _msat(client, old, "to_us_msat")
    inv = invoice(client, 1_000_000)
    with pytest.raises(RpcError, match="WIRE_UNKNOWN_NEXT_PEER") as direct:
        send_route(lsp, direct_route(lsp, client, old, inv), inv)
    assert direct.value.error["code"] == 204
    assert direct.value.error["message"] == "No connection to first peer found"
    inv = invoice(client, 1_000_000)
    assert (
        send_route(client, circular_route(client, lsp, new, old, inv), inv)["status"] == "complete"
    )
    assert _last_forward(lsp, new)["out_channel"] == channel(lsp, new)["alias"]["local"]
    assert _msat(client, old, "to_us_msat") == held


def _pay_both_ways(lsp: Any, client: Any, new: str) -> None:
    assert _pay(lsp, client, new, 2_000_000)["status"] == "complete"
    assert _pay(client, lsp, new, 1_000_000)["status"] == "complete"


@pytest.mark.parametrize("client_closes", [True, False], ids=["client-closes", "lsp-closes"])
def test_old_retires_by_mutual_close_and_new_keeps_working_across_restarts(
    node_factory: Any, bitcoind: Any, tmp_path: Path, client_closes: bool
) -> None:
    """`close <OLD>` (default parameters), by C or by L: both reach CLOSINGD_COMPLETE at once, the
    closing tx is broadcast and refused on every block, nothing is logged at UNUSUAL or worse
    (over 10 blocks and across restarts of both), OLD stays listed as CLOSINGD_COMPLETE after
    the restarts (re-broadcast again), nothing can be paid into OLD, and NEW carries payments."""
    lsp, client = _pair(node_factory, tmp_path)
    old, new = _old_and_new(lsp, client)
    _move_all(lsp, client, old, new)
    closer, other = (client, lsp) if client_closes else (lsp, client)
    marks = _marks(lsp, client)
    closed = closer.rpc.close(old)
    assert closed["type"] == "mutual"
    assert (channel(closer, old)["closer"], channel(other, old)["closer"]) == ("local", "remote")
    _assert_closing_tx_refused(bitcoind, (lsp, client), old, closed)
    for _ in range(10):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, client])
    for node, mark in zip((lsp, client), marks, strict=True):
        assert channel(node, old)["state"] == "CLOSINGD_COMPLETE"
        assert _warnings(node, mark) == []
        assert (
            sum("Expected error broadcasting tx" in line for line in node.daemon.logs[mark:]) >= 10
        )
    _assert_nothing_enters(lsp, client, old, new)
    _pay_both_ways(lsp, client, new)
    marks = _marks(lsp, client)
    for node in (lsp, client):
        node.restart()
    lsp.rpc.connect(client.info["id"], "localhost", client.port)
    wait_for(lambda: all(channel(n, new)["reestablished"] for n in (lsp, client)))
    for node, mark in zip((lsp, client), marks, strict=True):
        assert channel(node, old)["state"] == "CLOSINGD_COMPLETE"
        assert channel(node, old)["status"] == ["Loaded from database"]
        assert channel(node, new)["state"] == "CHANNELD_NORMAL"
        assert node.daemon.is_in_log(rf"Broadcasting txid {closed['txids'][0]}", mark)
        assert [w for w in _warnings(node, mark) if not ROUTINE.search(w)] == []
    _assert_nothing_enters(lsp, client, old, new)
    _pay_both_ways(lsp, client, new)


# --- 4. nothing enters OLD once its close started -----------------------------------------------


def test_no_payment_enters_old_once_its_close_started_but_one_in_flight_lands_there(
    node_factory: Any, executor: Any, tmp_path: Path
) -> None:
    """C starts the close while an HTLC from L into OLD is still pending (C's plugin holds it):
    both sides sit in CHANNELD_SHUTTING_DOWN, no new payment can enter OLD, and the close
    completes only once the pending HTLC is settled, which leaves its amount in OLD."""
    lsp, client = _pair(node_factory, tmp_path)
    old, new = _old_and_new(lsp, client)
    _move_all(lsp, client, old, new)
    steer(client, "hold", channel(client, old)["alias"]["local"])
    inv = invoice(client, 1_000_000)
    start_payment(lsp, direct_route(lsp, client, old, inv), inv)
    wait_for(lambda: len(channel(client, old)["htlcs"]) == 1)
    closing = executor.submit(client.rpc.close, old)
    wait_for(
        lambda: all(channel(n, old)["state"] == "CHANNELD_SHUTTING_DOWN" for n in (lsp, client))
    )
    _assert_nothing_enters(lsp, client, old, new)
    assert not closing.done()
    steer(client, "hold", None)
    assert lsp.rpc.waitsendpay(inv["payment_hash"], timeout=60)["status"] == "complete"
    assert closing.result(timeout=60)["type"] == "mutual"
    settle(lsp, client)
    assert {channel(n, old)["state"] for n in (lsp, client)} == {"CLOSINGD_COMPLETE"}
    assert _msat(client, old, "to_us_msat") == DUST_MSAT + 1_000_000
