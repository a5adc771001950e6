"""Against a real lightningd: liquidity that moves between leaves (a Decker-Wattenhofer state
update, `factory-update`).

A factory of 4 clients in two leaves (A and B, C and D), a DW state over both leaves. A buys until
its leaf's stock is short; its next purchase first updates that state: stock moves from C and D's
leaf to A's, A's first sale is folded into its new channel, every client's channel moves to a new
channel of the new state with its balance; A then buys from the factory again, not on chain.
Payments flow both ways before and after; every node restarts between the steps. Then the LSP
publishes the OLD state: the clients see the tree go on chain and publish the newer one, whose
shorter relative lock confirms first; the old state node can never confirm, and every client
exits with its balance.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from real_node import (
    PLUGIN,
    buy,
    connect_by_ip,
    create_factory,
    mine_until,
    no_htlcs,
    normal,
    require_lightningd,
    wallet_sat,
)

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402

SHAPE = {"states_per_layer": 3, "step_blocks": 4, "stock_sat": 100_000}
CHANNEL_SAT = 60_000
BUY = 60_000


def _status(node: Any, instance: str) -> dict[str, Any]:
    return dict(node.rpc.call("factory-status", {"instance": instance})["factories"][0])


def _nodes(node_factory: Any) -> tuple[Any, list[Any]]:
    opts = {"plugin": PLUGIN, "superscalar-lifetime-blocks": 400}
    lsp = node_factory.get_node(options={**opts, "watchtime-blocks": 6}, may_reconnect=True)
    clients = node_factory.get_nodes(
        4, opts={**opts, "superscalar-accept-from": lsp.info["id"], "may_reconnect": True}
    )
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def _reconnect(lsp: Any, clients: list[Any]) -> None:
    for c in clients:
        connect_by_ip(lsp, c)
    ids = {c.info["id"] for c in clients}
    wait_for(
        lambda: all(p.get("connected") for p in lsp.rpc.listpeers()["peers"] if p["id"] in ids)
    )


def _pay(payer: Any, payee: Any, amount_msat: int) -> None:
    inv = payee.rpc.invoice(amount_msat, f"p-{os.urandom(4).hex()}", "update")["bolt11"]
    assert payer.rpc.pay(inv)["status"] == "complete"
    wait_for(lambda: no_htlcs(payer) and no_htlcs(payee))


def _held(node: Any, peer: Any) -> int:
    """What `node` holds in its open channels with `peer` (msat)."""
    return sum(
        int(c["to_us_msat"])
        for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]
        if c["state"] == "CHANNELD_NORMAL"
    )


def _all_normal(lsp: Any, clients: list[Any]) -> None:
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))


def test_stock_moves_between_leaves_and_the_newer_state_confirms_first(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = _nodes(node_factory)
    a = clients[0]
    created = create_factory(lsp, clients, channel_sat=CHANNEL_SAT, **SHAPE)
    instance = created["instance"]
    _all_normal(lsp, clients)
    bitcoind.generate_block(1)
    for c in clients:  # both ways before the update
        _pay(lsp, c, 30_000_000)
        _pay(c, lsp, 5_000_000)

    first = buy(a, instance, BUY)
    assert first["kind"] == "factory", first
    # 40,000 sat of stock left in A's leaf: the next purchase needs the other leaf's.
    old_path = {c.info["id"]: _status(c, instance)["exit_path"] for c in clients}
    assert [e["dw_state"] for e in old_path[a.info["id"]]] == [0, 0, 0, 0]
    held = {c.info["id"]: _held(c, lsp) for c in clients}

    second = buy(a, instance, BUY)
    assert second["kind"] == "factory", second  # from the factory, not on chain
    view = _status(a, instance)
    assert [e["dw_state"] for e in view["exit_path"]][1] == 1
    assert view["channel_sat"] == CHANNEL_SAT + BUY
    lsp_view = _status(lsp, instance)
    assert [s["stock_left_sat"] for s in lsp_view["stock"]][1] < 100_000  # stock went to A
    for c in clients:
        path = _status(c, instance)["exit_path"]
        assert path[0]["txid"] == old_path[c.info["id"]][0]["txid"]  # the root did not change
        assert path[1]["txid"] != old_path[c.info["id"]][1]["txid"]
        price = second["fee_sat"] * 1000 if c is a else 0
        wait_for(lambda c=c, price=price: _held(c, lsp) >= held[c.info["id"]] - price - 1000)

    # Every node restarts: nothing is lost; payments flow both ways in the new channels.
    for n in (lsp, *clients):
        n.restart()
    _reconnect(lsp, clients)
    _all_normal(lsp, clients)
    for c in clients:
        wait_for(lambda c=c: _status(c, instance)["exit_path"][1]["dw_state"] == 1)
        _pay(lsp, c, 10_000_000)
        _pay(c, lsp, 2_000_000)
    owed = {c.info["id"]: _held(c, lsp) for c in clients}

    # The LSP publishes the old state: the root kickoff, then (when its lock allows) the old
    # state node. The clients' newer state node waits less and confirms first.
    root = old_path[a.info["id"]][0]
    old_state = old_path[a.info["id"]][1]
    bitcoind.rpc.sendrawtransaction(root["raw"])
    bitcoind.generate_block(1)
    for _ in range(old_state["relative_delay"] + 2):
        # refused: non-BIP68-final, then its input is spent by the newer state
        with contextlib.suppress(Exception):
            bitcoind.rpc.sendrawtransaction(old_state["raw"])
        bitcoind.generate_block(1)
        time.sleep(1)
    new_state = _status(a, instance)["exit_path"][1]["txid"]
    assert bitcoind.rpc.getrawtransaction(new_state, True).get("confirmations", 0) > 0
    try:
        got = bitcoind.rpc.getrawtransaction(old_state["txid"], True)
    except Exception:
        got = {}
    assert not got.get("confirmations"), "the superseded state confirmed"

    # Every client exits with its balance.
    before = {c.info["id"]: wallet_sat(c) for c in clients}
    mine_until(bitcoind, lambda: all(_status(c, instance)["exit"]["done"] for c in clients))
    for c in clients:
        expected = owed[c.info["id"]] // 1000
        mine_until(
            bitcoind, lambda c=c, e=expected: wallet_sat(c) - before[c.info["id"]] >= e - 4 * 2_000
        )
    for n in (lsp, *clients):
        assert not n.daemon.is_in_log(r"superscalar.*(Traceback|internal error)")
