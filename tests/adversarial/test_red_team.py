"""Red-team attacks (branch `red`): a hostile LSP, or a hostile co-client, against the real plugin
processes (tests/harness, the fuzz_protocol `World` for message filters).

Each test asserts that the victim keeps its money; a test marked xfail(strict) is an attack that
currently succeeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fuzz_protocol import flows
from fuzz_protocol.world import World, label

from adversarial.plugin_hostile import unpig
from harness.chain import TxRecord
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

LIFETIME = 130
SHAPE = {
    "superscalar-ceremony-timeout": 4,
    "superscalar-states-per-layer": 2,
    "superscalar-step-blocks": 3,
    "superscalar-dying-blocks": 10,
}


def _world(base: Path, lifetime: int = LIFETIME) -> World:
    net = Network(base, plugin=SUPERSCALAR_PLUGIN, timeout=30)
    lsp = net.add_node("lsp", options={**SHAPE, "superscalar-lifetime-blocks": lifetime})
    clients = net.add_nodes(["c0", "c1"], options={**SHAPE, "superscalar-accept-from": lsp.node_id})
    for c in clients:
        net.connect(lsp, c)
    net.connect(clients[0], clients[1])
    return World(net, lsp, clients, clients[1])


def _status(node: FakeNode, instance: str) -> dict[str, Any]:
    view = flows.status(node, instance)
    assert view is not None
    return view


def _funded(world: World) -> str:
    out = flows.create(world)
    assert out.startswith("created"), out
    for _ in range(3):
        flows.confirm(world)
    assert world.instance is not None
    return world.instance


def _pay(world: World, c: FakeNode) -> None:
    alias = flows._channel_of(world, c)
    assert alias is not None
    assert flows._pay(world.lsp, c, alias) is None


def _burns(world: World) -> list[TxRecord]:
    """Confirmed txs whose every output is an OP_RETURN: a sale's burn."""
    chain = world.net.chain
    with chain.cond:
        return [
            r
            for r in chain.txs.values()
            if r.height is not None
            and r.tx.vout
            and all(bytes(o.scriptPubKey)[:1] == b"\x6a" for o in r.tx.vout)
        ]


def _mine_to(world: World, height: int) -> None:
    while world.net.chain.height < height:
        world.net.mine(1)
        time.sleep(0.25)


def test_a_buyer_withholding_its_sale_psig_cannot_burn_the_lsps_stock(tmp_path: Path) -> None:
    """Hostile co-client c1 buys liquidity (factory-buy), lets the burn be signed, then never
    sends its sale partial signature. The LSP aborts the sale and fails the payment back: c1 paid
    nothing. Honest c0 gave its own partial signature, so it keeps the incomplete sale (not its
    purchase) with its signed burn. At the end of the factory the clients exit (the leaf, and its
    stock, go on chain before T) and from T+1 c0's plugin publishes the burn: the LSP's whole stock
    goes to miners, a loss the attacker chose at no cost."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0, co = world.clients
        _pay(world, co)  # outbound liquidity to pay the price
        stock_before = _status(world.lsp, inst)["stock"]
        world.arm_filter("co", "SaleStep.SALE_PSIG", hold=False)
        res, err = flows._call(
            co, "factory-buy", {"instance": inst, "sat": 20_000, "max_fee_sat": 2_000}
        )
        world.end_step()
        assert err is not None, res  # the sale did not complete
        # c0's partial signature left: it keeps the sale, incomplete, not its own purchase.
        assert _status(c0, inst)["sales_cosigned"] == 1
        assert stock_before[0]["stock_left_sat"] == 100_000
        timeout = int(_status(world.lsp, inst)["timeout_height"])
        _mine_to(world, timeout + 4)
        time.sleep(2.0)
        world.net.mine(1)
        time.sleep(1.0)
        burns = _burns(world)
        assert not burns, f"the LSP's stock was burnt: {[b.txid for b in burns]}"
    finally:
        world.net.stop()


def _lsp_alias_on(world: World, c: FakeNode, funding_txid: str) -> str:
    chans = world.lsp.rpc_call("listpeerchannels", {"id": c.node_id})["channels"]
    found = [ch for ch in chans if ch.get("funding_txid") == funding_txid and "alias" in ch]
    assert found, chans
    return str(found[0]["alias"]["local"])


def sold_and_paid(world: World, inst: str) -> str:
    """The LSP sells c0 a 40,000-sat sale channel (factory-sell), c0 holds it complete, and the
    LSP pays 30,000 sat into it (c0's money now): the sale's txid."""
    c0 = world.clients[0]
    res, err = flows._call(
        world.lsp, "factory-sell", {"instance": inst, "client": c0.node_id, "sat": 40_000}
    )
    assert err is None and res["kind"] == "factory", (res, err)
    sale_txid = str(res["sale_txid"])
    flows._wait(lambda: [s["complete"] for s in _status(c0, inst)["sales"]] == [True], 10)
    assert [s["complete"] for s in _status(c0, inst)["sales"]] == [True]
    alias = _lsp_alias_on(world, c0, sale_txid)
    assert flows._pay(world.lsp, c0, alias) is None
    return sale_txid


def test_a_complete_sale_is_not_burnt_while_its_buyer_is_away(tmp_path: Path) -> None:
    """Hostile LSP: it gives c0 a sale channel (factory-sell), sends the sale's last signature to
    the buyer c0 only (never to the co-signer c1, however often it would resend), pays c0 into the
    sale channel, then goes silent. c0 is away from before its exit until after T. c1's own exit
    puts the leaf and the stock on chain before T; c1 holds the sale incomplete, not its own, so
    from T+1 it publishes the burn: c0's complete sale channel, with c0's money in it, goes to
    miners. The LSP's stock path would not open before `stock_delay` (144) blocks after the stock
    confirmed, so nothing forced the burn at T+1: c0 had no chance to publish its sale."""
    world = _world(tmp_path)
    c0, c1 = world.clients
    inner = world._intercept

    def withhold_sale_sig(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
        if src is world.lsp and dst is c1 and label(unpig(msg)) == "SaleStep.SALE_SIG":
            return None
        return inner(src, dst, msg)

    world.net.intercept = withhold_sale_sig
    try:
        inst = _funded(world)
        sale_txid = sold_and_paid(world, inst)
        timeout = int(_status(c1, inst)["timeout_height"])
        world.lsp.stop()
        c0.stop()
        _mine_to(world, timeout + 4)
        time.sleep(2.0)
        world.net.mine(1)
        time.sleep(1.0)
        chain = world.net.chain
        burns = _burns(world)
        assert not burns, f"c0's complete sale was burnt: {[b.txid for b in burns]}"
        assert sale_txid not in chain.txs or chain.txs[sale_txid].height is not None
    finally:
        world.net.stop()
