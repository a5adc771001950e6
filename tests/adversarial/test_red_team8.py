"""Red-team attacks, round 8: liquidity sales, a client's balance in a migration or close, the
on-chain duties and unilateral exits, and stored records after a restart.

Each test asserts the safe outcome. A test marked `xfail(strict=True, reason="HOLE: ...")` is an
attack that succeeds against the current code; the others are attacks the code defends.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fuzz_protocol import flows
from fuzz_protocol.world import World

from superscalar_plugin.engine import store
from superscalar_plugin.engine.sale import stock_sweep_valid_from
from superscalar_plugin.engine.sale_store import Payment, SaleEntry
from superscalar_plugin.plugin.onchain.sales import stock_duties

from adversarial.test_red_team import _funded, _pay, _status, _world
from adversarial.test_red_team2 import _records


def _client_record(node: object, instance: str) -> store.ClientRecord:
    [raw] = [r for r in _records(node, "client") if r.get("instance_id") == instance]  # type: ignore[arg-type]
    rec = store.from_json(raw)
    assert isinstance(rec, store.ClientRecord)
    return rec


def _at_the_end(rec: store.ClientRecord, sale: SaleEntry) -> tuple[store.ClientRecord, int]:
    """`rec` at the factory's end: the leaf (the stock) confirmed before T through the clients'
    exits; and the block from which the LSP's own path on that stock is valid."""
    keys = rec.signed_header().factory_keys()  # type: ignore[union-attr]
    leaf_at = rec.timeout_height - 5
    ended = dataclasses.replace(rec, confirmed=((sale.stock_txid, leaf_at),))
    return ended, stock_sweep_valid_from(keys, leaf_at)


def _stalled_by_the_co_client(world: World) -> str:
    """c0 buys 20,000 sat and pays; its leaf-mate `co` drops its sale partial signature."""
    inst = _funded(world)
    _pay(world, world.clients[0])  # outbound liquidity to pay the price
    world.arm_filter("co", "SaleStep.SALE_PSIG", hold=False)
    res, err = flows._call(
        world.clients[0], "factory-buy", {"instance": inst, "sat": 20_000, "max_fee_sat": 2_000}
    )
    world.end_step()
    assert err is not None, res  # the purchase failed: the LSP aborted, c0 paid nothing
    return inst


def paid_and_withheld(world: World) -> tuple[str, SaleEntry]:
    """The burn's own case: c0 buys 20,000 sat and pays; the hostile LSP settles the price and
    sends the sale's last signature to nobody. c0's purchase: PAID, incomplete, burn signed."""
    inst = _funded(world)
    c0 = world.clients[0]
    _pay(world, c0)
    world.arm_filter("lsp", "SaleStep.SALE_SIG", hold=False)
    flows._call(c0, "factory-buy", {"instance": inst, "sat": 20_000, "max_fee_sat": 2_000})

    def own() -> list[SaleEntry]:
        rec = _client_record(c0, inst)
        return [e for e in rec.sales if e.buyer == rec.client_index]

    assert flows._wait(lambda: [e.payment for e in own()] == [Payment.PAID], 40.0), own()
    [sale] = own()
    assert sale.burn_sig and not sale.sale_sig, sale
    return inst, sale


# --- 1. a co-client's stall makes the honest buyer burn the LSP's stock ---------------------------


def test_a_co_clients_stall_does_not_make_the_honest_buyer_burn_the_lsps_stock(
    tmp_path: Path,
) -> None:
    """Honest c0 buys 20,000 sat (factory-buy) and pays; hostile co-client `co` (c0's leaf-mate)
    signs the burn, then drops its sale partial signature. c0's went out already (it was due at
    BURN_SIG), so c0 records its own purchase incomplete with the burn signed. The LSP times out,
    aborts and fails the payment: nobody paid, nothing was delivered. But c0 keeps the promise
    and its burn: from then on the stock is unsellable (c0 refuses any other sale of it) and,
    once the leaf is on chain (every client's exit before T puts it there) and the LSP's own
    path opens, c0's plugin burns the stock. The attacker pays nothing."""
    world = _world(tmp_path)
    try:
        c0 = world.clients[0]
        inst = _stalled_by_the_co_client(world)
        rec = _client_record(c0, inst)
        mine = [e for e in rec.sales if e.buyer == rec.client_index]
        assert len(mine) == 1 and mine[0].burn_sig and not mine[0].sale_sig, rec.sales
        ended, opens = _at_the_end(rec, mine[0])
        published = stock_duties(ended, opens - 1)
        assert not [w for w, _, _ in published if w == "burn"], (
            "the honest buyer burns the LSP's stock after a co-client's stall"
        )
    finally:
        world.net.stop()


def test_a_co_clients_stall_does_not_lock_the_leafs_sales(tmp_path: Path) -> None:
    """As above; then the honest LSP gives c0 a fresh channel (factory-sell, no price). c0 still
    holds the stalled sale of that stock as a promise (the LSP could complete it with the
    co-client's signature) and signs no other sale of it, so a sale from that stock can never
    succeed again. It was the LSP that failed: every later sale of the leaf failed outright. The
    LSP recorded the burn it sent (before sending it), so it now opens the on-chain fallback
    channel instead, and the stalled sale's buyer does not burn the stock (it paid nothing)."""
    world = _world(tmp_path)
    try:
        c0 = world.clients[0]
        inst = _stalled_by_the_co_client(world)
        [lsp_rec] = [r for r in _records(world.lsp, "lsp") if r.get("instance_id") == inst]
        assert lsp_rec.get("burn_sent"), "the LSP did not record the burn it sent"
        res, err = flows._call(
            world.lsp, "factory-sell", {"instance": inst, "client": c0.node_id, "sat": 20_000}
        )
        assert err is None and res["kind"] == "onchain", (res, err)
        rec = _client_record(c0, inst)
        mine = [e for e in rec.sales if e.buyer == rec.client_index]
        assert [e.payment for e in mine] == [Payment.FAILED], mine
    finally:
        world.net.stop()


def test_an_lsp_that_takes_the_price_and_withholds_the_sale_still_loses_its_stock(
    tmp_path: Path,
) -> None:
    """The burn's own case, after the defence above: the hostile LSP holds every partial
    signature, settles c0's payment (its price taken), and sends the sale's signature to nobody.
    c0 paid (its node shows the payment settled) and holds its purchase incomplete: when the
    LSP's own path on the stock opens, c0 burns the stock."""
    world = _world(tmp_path)
    try:
        inst, sale = paid_and_withheld(world)
        rec = _client_record(world.clients[0], inst)
        ended, opens = _at_the_end(rec, sale)
        assert not stock_duties(ended, opens - 2)  # never before the LSP's path opens
        assert [w for w, _, _ in stock_duties(ended, opens - 1)] == ["burn"]
    finally:
        world.net.stop()


# --- 2. a hostile LSP's MOVE into something that is not the client's alone -----------------------


def test_a_move_into_the_same_factory_or_its_own_sale_channel_is_refused(tmp_path: Path) -> None:
    """Hostile LSP during a close: it asks c0 to MOVE its balance (a) into the factory it leaves
    (FACTORY target naming the same instance), (b) into c0's own sale channel of that factory,
    named as an ordinary channel (a CHANNEL target: the sale channel lives on a sale tx that
    never confirms, so a key handed over after the move would let the LSP spend the tree from
    under it). c0 refuses both: nothing moves, its old channel keeps taking HTLCs."""
    from superscalar_plugin.engine import protocol

    from adversarial.plugin_hostile import pig
    from adversarial.test_red_team import sold_and_paid

    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        sale_txid = sold_and_paid(world, inst)
        [sale_cid] = [
            ch["channel_id"]
            for ch in c0.rpc_call("listpeerchannels", {"id": world.lsp.node_id})["channels"]
            if ch.get("funding_txid") == sale_txid
        ]
        moves = [
            protocol.Move(bytes.fromhex(inst), protocol.MoveTarget.FACTORY, bytes.fromhex(inst)),
            protocol.Move(
                bytes.fromhex(inst), protocol.MoveTarget.CHANNEL, bytes.fromhex(sale_cid)
            ),
        ]
        for move in moves:
            c0.deliver_custommsg(world.lsp, pig(move))
            for _ in range(3):
                world.mine(1)  # a refusal for depth is asked again at each block
            flows._wait(lambda: False, 1.0)
            rec = _client_record(c0, inst)
            assert rec.moving_to is None, f"c0 moves into {rec.moving_to}"
            assert rec.state in (store.ClientState.READY, store.ClientState.FUNDED)
        _pay(world, c0)  # the old channel still takes HTLCs
        assert _status(c0, inst)["phase"] != "moving"
    finally:
        world.net.stop()
