"""Against a real lightningd: liquidity sales inside a factory, and their on-chain fallback.

A factory of 4 clients (leaves: A and B, C and D). A buys inbound liquidity twice while its
leaf-mate B is online: two chained sales of the leaf's stock, each a new zero-conf channel opened
the way creation opens them, paid for over Lightning (the LSP holds A's payment until the sale is
signed and the channel complete). A then receives one payment larger than any of its channels
could take (multi-part across them). With B offline a third purchase falls back to an ordinary
on-chain channel. A exits unilaterally: the tree's path, then both sales, then its channels'
commitments; every balance reaches its wallet. After the timeout the LSP sweeps what is left of the
stock. Nodes restart between the steps and lose nothing.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from real_node import (
    PLUGIN,
    buy,
    connect_by_ip,
    create_factory,
    hop,
    mine_until,
    no_htlcs,
    normal,
    require_lightningd,
    wallet_sat,
)

require_lightningd()

from pyln.client import RpcError  # noqa: E402
from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402

SHAPE = {"states_per_layer": 2, "step_blocks": 3, "stock_sat": 200_000}
CHANNEL_SAT = 60_000
FIRST, SECOND = 50_000, 60_000


def _status(node: Any, instance: str) -> dict[str, Any]:
    return dict(node.rpc.call("factory-status", {"instance": instance})["factories"][0])


def _nodes(
    node_factory: Any, n: int, lsp_options: dict[str, Any] | None = None
) -> tuple[Any, list[Any]]:
    lsp = node_factory.get_node(
        options={"plugin": PLUGIN, "watchtime-blocks": 6, **(lsp_options or {})},
        may_reconnect=True,
    )
    clients = node_factory.get_nodes(
        n,
        opts={"plugin": PLUGIN, "superscalar-accept-from": lsp.info["id"], "may_reconnect": True},
    )
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def _reconnect(lsp: Any, clients: list[Any]) -> None:
    for c in clients:
        connect_by_ip(lsp, c)

    def greeted() -> bool:  # the bLIP-56 handshake: a sale needs every co-signer's
        peers = lsp.rpc.listpeers()["peers"]
        return all(p.get("connected") for p in peers if p["id"] in {c.info["id"] for c in clients})

    wait_for(greeted)


def _pay(payer: Any, payee: Any, amount_msat: int) -> None:
    inv = payee.rpc.invoice(amount_msat, f"p-{os.urandom(4).hex()}", "sales")["bolt11"]
    assert payer.rpc.pay(inv)["status"] == "complete"
    wait_for(lambda: no_htlcs(payer) and no_htlcs(payee))


def test_factory_sell_gives_a_client_a_new_channel_from_its_leafs_stock(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = _nodes(node_factory, 2)
    created = create_factory(lsp, clients, channel_sat=CHANNEL_SAT, **SHAPE)
    instance = created["instance"]
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    bitcoind.generate_block(1)
    a = clients[0]
    sold = lsp.rpc.call(
        "factory-sell", {"instance": instance, "client": a.info["id"], "sat": FIRST}
    )
    assert sold["kind"] == "factory", sold
    wait_for(
        lambda: _channel_normal(lsp, sold["channel_id"]) and _channel_normal(a, sold["channel_id"])
    )
    # The new channel pays like any other.
    _pay(lsp, a, 30_000_000)
    view = _status(a, instance)
    assert [s["sale_txid"] for s in view["sales"]] == [sold["sale_txid"]]
    assert view["sales"][0]["complete"]


def _channel_normal(node: Any, channel_id: str) -> bool:
    return any(
        c["channel_id"] == channel_id and c["state"] == "CHANNELD_NORMAL"
        for c in node.rpc.listpeerchannels()["channels"]
    )


def _to_us(node: Any, peer: Any) -> dict[str, int]:
    return {
        c["channel_id"]: int(c["to_us_msat"])
        for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]
    }


def test_a_client_buys_twice_receives_across_its_channels_falls_back_on_chain_and_exits(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = _nodes(node_factory, 4, {"superscalar-lifetime-blocks": 200})
    a, b = clients[0], clients[1]
    created = create_factory(lsp, clients, channel_sat=CHANNEL_SAT, **SHAPE)
    instance = created["instance"]
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    bitcoind.generate_block(1)
    _pay(lsp, a, 25_000_000)  # A can pay for liquidity from its factory channel
    spent_before = sum(_to_us(a, lsp).values())

    # First purchase: a sale of the leaf's stock, paid only once delivered.
    first = buy(a, instance, FIRST)
    assert first["kind"] == "factory", first
    assert first["fee_sat"] == 1000 + FIRST // 100
    wait_for(lambda: no_htlcs(a) and no_htlcs(lsp))
    # A paid the price; the new channel holds the 1 sat every factory channel is opened with.
    assert spent_before - sum(_to_us(a, lsp).values()) == first["fee_sat"] * 1000 - 1000
    wait_for(lambda: sorted(_status(lsp, instance)["clients"][0]["sales"][0]["acked_by"]) == [0, 1])
    [order_sale] = _status(lsp, instance)["clients"][0]["sales"]
    assert order_sale["sale_txid"] == first["sale_txid"] and order_sale["complete"]
    assert order_sale["price_sat"] == first["fee_sat"]
    assert order_sale["channel_state"] == "CHANNELD_NORMAL"

    # Every node restarts between the two sales: nothing is lost.
    for n in (lsp, b, a):
        n.restart()
    _reconnect(lsp, clients)
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    wait_for(lambda: _channel_normal(a, first["channel_id"]))

    # Second purchase: chained on the first sale's change.
    second = buy(a, instance, SECOND)
    assert second["kind"] == "factory", second
    mine = _status(a, instance)["sales"]
    assert [s["sale_txid"] for s in mine] == [first["sale_txid"], second["sale_txid"]]
    assert mine[1]["spends"] == f"{first['sale_txid']}:1"
    assert all(s["complete"] and s["channel_state"] == "CHANNELD_NORMAL" for s in mine)
    assert [s["exit_sales"] for s in mine] == [1, 2]
    # what A's own node shows it paid for each (kept across the restarts): burnable if stalled
    assert [s["payment"] for s in mine] == ["paid", "paid"]
    assert _status(b, instance)["sales_cosigned"] == 2
    stock = _status(lsp, instance)["stock"][0]
    assert stock["sales"] == 2 and stock["stock_left_sat"] < 200_000 - FIRST - SECOND

    # One payment larger than any single channel of A's can take: it arrives in parts.
    receivable = [
        int(c["receivable_msat"])
        for c in a.rpc.listpeerchannels(lsp.info["id"])["channels"]
        if c["state"] == "CHANNELD_NORMAL"
    ]
    big = max(receivable) + 15_000_000
    assert big < sum(receivable) - 5_000_000
    _pay(lsp, a, big)
    held = _to_us(a, lsp)
    assert held[second["channel_id"]] > 0 and held[first["channel_id"]] > 0

    # The leaf-mate is offline: the third purchase is an ordinary on-chain channel.
    b.stop()
    wait_for(
        lambda: (
            not any(
                p["id"] == b.info["id"] and p["connected"] for p in lsp.rpc.listpeers()["peers"]
            )
        )
    )
    third = buy(a, instance, 30_000)
    assert third["kind"] == "onchain", third
    [jit] = _status(lsp, instance)["clients"][0]["onchain_channels"]
    assert jit["channel_id"] == third["channel_id"] and "offline" in jit["reason"]
    assert _status(a, instance)["onchain_channels"] == [third["channel_id"]]
    bitcoind.generate_block(6)
    wait_for(lambda: _channel_normal(a, third["channel_id"]))
    b.start()

    # A exits alone: the tree's path, both sales, then every channel's commitment.
    inside = {
        cid: v
        for cid, v in _to_us(a, lsp).items()
        if cid in (first["channel_id"], second["channel_id"])
    }
    factory_channel = next(
        c["channel_id"]
        for c in a.rpc.listpeerchannels(lsp.info["id"])["channels"]
        if c["channel_id"] not in (first["channel_id"], second["channel_id"], third["channel_id"])
    )
    inside[factory_channel] = _to_us(a, lsp)[factory_channel]
    before = wallet_sat(a)
    a.rpc.call("factory-exit", {"instance": instance})
    mine_until(bitcoind, lambda: _status(a, instance)["exit"]["done"])
    for txid in (first["sale_txid"], second["sale_txid"]):
        assert bitcoind.rpc.getrawtransaction(txid, True)["confirmations"] > 0
    expected = sum(inside.values()) // 1000
    mine_until(bitcoind, lambda: wallet_sat(a) - before >= expected - 3 * 2_000)

    # After the timeout the LSP takes what is left of the stock (the second sale's change).
    timeout = created["timeout_height"]
    change = f"{second['sale_txid']}:1"

    def swept() -> bool:
        view = _status(lsp, instance)
        return any(s["outpoint"] == change and s["confirmed"] for s in view.get("sweeps", []))

    bitcoind.generate_block(max(0, timeout - bitcoind.rpc.getblockcount()))
    mine_until(bitcoind, swept)
    for n in (lsp, a):
        assert not n.daemon.is_in_log(r"superscalar.*(Traceback|internal error)")


CLOSING = (
    "CHANNELD_SHUTTING_DOWN",
    "CLOSINGD_SIGEXCHANGE",
    "CLOSINGD_COMPLETE",
    "AWAITING_UNILATERAL",
)


def _channels(node: Any) -> set[str]:
    """The channels still open: a sale that fails after its channel was completed (the LSP
    completes it before anyone signs) leaves that channel closed on both sides."""
    return {
        c["channel_id"]
        for c in node.rpc.listpeerchannels()["channels"]
        if c["state"] not in CLOSING
    }


def test_neither_side_gets_the_others_money_when_a_purchase_fails(
    node_factory: Any, bitcoind: Any
) -> None:
    """The LSP sells only against a payment it holds; the buyer pays only for a delivered sale.
    Both failure orders: no (or not enough) payment, then no sale; a payment, then a failed
    sale, then no payment."""
    lsp, clients = _nodes(node_factory, 2, {"superscalar-ceremony-timeout": 10})
    a, b = clients
    created = create_factory(lsp, clients, channel_sat=CHANNEL_SAT, **SHAPE)
    instance = created["instance"]
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    bitcoind.generate_block(1)
    _pay(lsp, a, 25_000_000)
    balance, channels, lsp_channels = sum(_to_us(a, lsp).values()), _channels(a), _channels(lsp)

    def nothing_happened() -> None:
        # A paid nothing (a failed sale's closed channel keeps its 1-sat push, never on chain)
        assert sum(v for k, v in _to_us(a, lsp).items() if k in _channels(a)) == balance
        assert _channels(a) == channels and _channels(lsp) == lsp_channels  # nothing opened
        assert _status(lsp, instance)["clients"][0]["sales"] == []
        assert _status(b, instance)["sales_cosigned"] == 0

    # 1. A will not pay the price: nothing is sold.
    with pytest.raises(RpcError, match="above our limit"):
        a.rpc.call("factory-buy", {"instance": instance, "sat": FIRST, "max_fee_sat": 100})
    [quoted] = _status(lsp, instance)["orders"]
    assert quoted["state"] == "quoted"
    nothing_happened()

    # 1b. A pays only part of the price (one part of a multi-part payment): the LSP holds it,
    # sells nothing, and gives it back when the rest never comes.
    [inv] = [
        i for i in lsp.rpc.listinvoices()["invoices"] if i["label"].startswith("superscalar-sale")
    ]
    decoded = a.rpc.decode(inv["bolt11"])
    part = int(decoded["amount_msat"]) // 2
    alias = next(c["alias"]["local"] for c in a.rpc.listpeerchannels(lsp.info["id"])["channels"])
    route = [hop(alias, lsp, part, int(decoded["min_final_cltv_expiry"]) + 3)]
    a.rpc.sendpay(
        route,
        decoded["payment_hash"],
        payment_secret=decoded["payment_secret"],
        amount_msat=int(decoded["amount_msat"]),
        partid=1,
        groupid=1,
    )
    with pytest.raises(RpcError):
        a.rpc.waitsendpay(decoded["payment_hash"], timeout=60, partid=1, groupid=1)
    wait_for(lambda: no_htlcs(a) and no_htlcs(lsp))
    assert _status(lsp, instance)["orders"][0]["state"] == "failed"
    nothing_happened()

    # 2. A pays, but the sale fails (its leaf-mate now refuses the factory's fee rate): the LSP
    # fails the held payment; A gets it back and no channel is left behind.
    b.daemon.opts["superscalar-max-feerate"] = 1
    b.daemon.opts["superscalar-min-feerate"] = 1  # a floor above the cap is refused at start
    b.restart()
    _reconnect(lsp, clients)
    wait_for(lambda: normal(lsp, b) and normal(b, lsp))
    with pytest.raises(RpcError, match="nothing delivered, nothing paid"):
        buy(a, instance, FIRST)
    wait_for(lambda: no_htlcs(a) and no_htlcs(lsp))
    failed = _status(lsp, instance)["orders"][-1]
    assert failed["state"] == "failed" and "fee_rate" in failed["error"]
    wait_for(lambda: _channels(a) == channels and _channels(lsp) == lsp_channels)
    nothing_happened()
    assert lsp.daemon.is_in_log(r"sale to client 0 aborted: .*refused: sale fee_rate")
