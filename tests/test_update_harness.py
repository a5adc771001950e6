"""`factory-update` through the real plugin processes (harness): four clients in two leaves; c0
buys until its leaf's stock is short; an update moves stock from the other leaf to c0's, folds
c0's sale into its new channel, moves every channel below the state node with its balance, and
c0 buys from the factory again. Restarts between steps lose nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fuzz_protocol import flows
from fuzz_protocol.world import World

from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

SHAPE = {
    "superscalar-ceremony-timeout": 6,
    "superscalar-states-per-layer": 3,
    "superscalar-step-blocks": 3,
    "superscalar-dying-blocks": 10,
    "superscalar-lifetime-blocks": 300,
}


def _world(base: Path) -> World:
    net = Network(base, plugin=SUPERSCALAR_PLUGIN, timeout=30)
    lsp = net.add_node("lsp", options=SHAPE)
    clients = net.add_nodes(
        ["c0", "c1", "c2", "c3"], options={**SHAPE, "superscalar-accept-from": lsp.node_id}
    )
    for c in clients:
        net.connect(lsp, c)
    return World(net, lsp, clients, None)


def _status(node: FakeNode, instance: str) -> dict[str, Any]:
    view = flows.status(node, instance)
    assert view is not None
    return view


def _to_us(node: FakeNode, peer: str) -> dict[str, int]:
    chans = node.rpc_call("listpeerchannels", {"id": peer})["channels"]
    return {
        str(ch["channel_id"]): int(str(ch.get("to_us_msat", 0)).removesuffix("msat"))
        for ch in chans
        if ch.get("state") == "CHANNELD_NORMAL"
    }


def _funded(world: World) -> str:
    out = flows.create(world)
    assert out.startswith("created"), out
    for _ in range(3):
        flows.confirm(world)
    assert world.instance is not None
    return world.instance


def _sell(world: World, inst: str, c: FakeNode, sat: int) -> dict[str, Any]:
    res, err = flows._call(
        world.lsp, "factory-sell", {"instance": inst, "client": c.node_id, "sat": sat}
    )
    assert err is None, err
    return dict(res)


def test_stock_moves_to_a_depleted_leaf_and_every_balance_survives(tmp_path: Path) -> None:
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0, c1, c2 = world.clients[0], world.clients[1], world.clients[2]
        for c in (c0, c1, c2):
            flows.Pay(world.clients.index(c))(world)
        sale = _sell(world, inst, c0, 60_000)
        assert sale["kind"] == "factory"
        flows._wait(lambda: [s["complete"] for s in _status(c0, inst)["sales"]] == [True], 10)
        # c0's leaf has ~40,000 sat of stock left: a second 60,000 cannot come from it.
        before = {c.name: sum(_to_us(c, world.lsp.node_id).values()) for c in world.clients}
        out = world.lsp.rpc_call(
            "factory-update",
            {"instance": inst, "client": c0.node_id, "stock_sat": 100_000},
            timeout=60,
        )
        assert out["states"][1] == 1, out
        stocks = {s["leaf"]: s["stock_sat"] for s in out["stocks"]}
        assert stocks[3] == 100_000 and stocks[4] == 200_000 - 60_000 - 100_000
        c0_new = next(c for c in out["channels"] if c["client"] == c0.node_id)
        assert c0_new["channel_sat"] == flows.CHANNEL_SAT + 60_000
        # Every client's balance is in its new channel; its old ones are closing.
        # (factory-update returns once the new state exists; each client stores it just after)
        for c in world.clients:
            flows._wait(lambda c=c: _status(c, inst)["exit_path"][1]["dw_state"] == 1, 10)
            assert [e["dw_state"] for e in _status(c, inst)["exit_path"]][1] == 1
            # less at most the LSP's forwarding fee on the swap (max-move-fee-sat)
            floor = before[c.name] - 100_000
            flows._wait(lambda c=c, f=floor: sum(_to_us(c, world.lsp.node_id).values()) >= f, 10)
            now = _to_us(c, world.lsp.node_id)
            assert sum(now.values()) >= floor, (c.name, now, before[c.name])
        assert _status(c0, inst)["sales"] == []
        # The LSP's record agrees and the new channels carry payments.
        for i in range(3):
            assert flows.Pay(i)(world) == "paid"
        again = _sell(world, inst, c0, 60_000)
        assert again["kind"] == "factory", again
    finally:
        world.net.stop()


def test_an_update_a_client_refuses_is_abandoned_cleanly(tmp_path: Path) -> None:
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c3 = world.clients[3]
        world.arm_filter("lsp", "Update", hold=True)  # the UPDATE never reaches anyone
        res, err = flows._call(world.lsp, "factory-update", {"instance": inst})
        assert res is None and err is not None and "did not answer" in err, (res, err)
        for c in world.clients:
            assert [e["dw_state"] for e in _status(c, inst)["exit_path"]] == [0, 0, 0, 0]
        # nothing frozen any more: payments flow through the old channels
        world.filters.clear()
        time.sleep(0.5)
        assert flows.Pay(3)(world) == "paid", c3.name
    finally:
        world.net.stop()


def test_a_sale_short_of_stock_moves_stock_first_and_sells_from_the_factory(
    tmp_path: Path,
) -> None:
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        assert _sell(world, inst, c0, 60_000)["kind"] == "factory"
        flows._wait(lambda: [s["complete"] for s in _status(c0, inst)["sales"]] == [True], 10)
        # 40,000 sat left in c0's leaf: not enough for 60,000; the other leaf has 100,000.
        second = _sell(world, inst, c0, 60_000)
        assert second["kind"] == "factory", second
        assert [e["dw_state"] for e in _status(c0, inst)["exit_path"]][1] == 1
        view = _status(c0, inst)
        assert view["channel_sat"] == flows.CHANNEL_SAT + 60_000  # the first sale folded in
        assert [s["sale_txid"] for s in view["sales"]] == [second["sale_txid"]]
    finally:
        world.net.stop()
