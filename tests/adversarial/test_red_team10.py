"""Red-team attacks, round 10: the buyer's recorded payment and its burn; the channel binding's
`channels.state`; the LSP's `burn_sent` and its on-chain fallback.

Each test asserts the safe outcome. All four attacks succeeded when the round was run (a hostile
LSP kept both a buyer's price and its stock); each is defended since: a buyer signs a purchase
once, and holds no DW update of its leaf and no key handover while a purchase it paid for is
withheld (`solvency.check_no_withheld_purchase`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fuzz_protocol import flows

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.sale_store import Payment

from adversarial.test_red_team import _world
from adversarial.test_red_team8 import _client_record, paid_and_withheld
from adversarial.test_red_team9 import _burns_at_the_end, _own

BUY = 20_000
MAX_FEE = 2_000
LONG = 1_000  # lifetime: room for a move before the factory's last move height


def _paid_and_withheld(world: Any) -> tuple[str, Any]:
    """Round 8's burn case (`paid_and_withheld`), its burn checked."""
    inst, sale = paid_and_withheld(world)
    assert _burns_at_the_end(_client_record(world.clients[0], inst), sale, world.clients[0]) == [
        "burn"
    ]
    return inst, sale


# --- 1. the factory's end: the key handed over with a paid purchase withheld ----------------------


def test_a_paid_withheld_purchase_keeps_its_burn_through_a_close(tmp_path: Path) -> None:
    """Hostile LSP: it settles c0's price and withholds the sale's last signature (round 8's burn
    case: c0 would burn the stock at the factory's end). Then it closes the factory
    (factory-close): c0 moves its leaf channel's balance into the LSP's new ordinary channel.
    The stalled sale's channel holds nothing of c0's (the LSP's whole), so the handover check
    passes and c0 hands over its key and stops its duties for the old factory (HANDED_OVER is
    not LIVE): it never burns. With every key the LSP spends the old funding by key path: it
    kept the price and the stock, the deterrent is gone."""
    world = _world(tmp_path, LONG)
    try:
        c0 = world.clients[0]
        inst, _sale = _paid_and_withheld(world)
        world.instance = inst
        out = flows.close(world)
        rec = _client_record(c0, inst)
        assert rec.state is not store.ClientState.HANDED_OVER, (
            f"{out}: c0 handed over its key holding a paid purchase it never got"
        )
        assert c0.is_in_log("key_handover refused .purchase_withheld.")
    finally:
        world.net.stop()


# --- 2. a DW update over the leaf of a paid, withheld purchase ------------------------------------


def _lsp_forgets_its_sales(world: Any, inst: str) -> None:
    """The hostile LSP runs its node with a record of `inst` that holds no sale (its own software:
    it settled a price and never stored the sale it withheld). Edited while it is down."""
    import json

    from adversarial.test_red_team2 import RECORDS

    lsp = world.lsp
    peers = [
        world.net.node_by_id(p.node_id) for p in lsp.peers.values() if p.state != "disconnected"
    ]
    lsp.stop()
    ds = lsp.datastore
    with ds.lock:
        for key, (raw, gen) in list(ds.entries.items()):
            if key[:2] != RECORDS:
                continue
            rec = json.loads(raw)
            if rec.get("kind") == "lsp" and rec.get("instance_id") == inst:
                rec["sales"], rec["burn_sent"] = [], []
                ds.entries[key] = (json.dumps(rec).encode(), gen + 1)
        ds._save()
    lsp.start()
    for other in peers:
        if other is not None and other.up:
            world.net.connect(lsp, other)


def test_a_dw_update_does_not_supersede_a_paid_withheld_purchase(tmp_path: Path) -> None:
    """Hostile LSP: it settles c0's price and withholds the sale's last signature (c0: PAID,
    incomplete, burn signed). It then runs a DW update of node 1 (over c0's leaf) from a record
    that holds no sale: UPDATE names c0's leaf channel only, which is all c0 counts as its own
    (`updates/client.py` counts complete sales only). c0 signs the new state and stores its new
    path with `sales=()`: the purchase it paid for and its burn are gone, and the new state, whose
    delay is shorter, supersedes the leaf whose stock the burn spends. The LSP kept the price and
    the stock."""
    from adversarial.test_red_team_update import _world as four_world
    from adversarial.test_red_team_update2 import _dw, _update

    world = four_world(tmp_path)
    try:
        c0 = world.clients[0]
        inst, _sale = _paid_and_withheld(world)
        world.filters.clear()
        before = _dw(c0, inst)
        _lsp_forgets_its_sales(world, inst)
        res, err = _update(world, inst)
        if err is None:  # c0 stores the new state once the moved node's signature comes
            flows._wait(lambda: _dw(c0, inst) != before, 15.0)
        after = _dw(c0, inst)
        own = _own(_client_record(c0, inst))
        assert after == before and [e.payment for e in own] == [Payment.PAID], (
            f"update {res or err}: c0 moved from DW {before} to {after} and now holds {own}"
        )
        assert c0.is_in_log("update_signature refused .purchase_withheld.")
    finally:
        world.net.stop()


# --- 3. a paid, withheld purchase re-signed for a purchase that fails: its payment overwritten ----


def _resign_for_a_failing_purchase(
    world: Any, inst: str, entry: Any, gift: bool = False
) -> tuple[str, Any]:
    """The hostile LSP (the test, `HostileSeller`) runs c0's withheld sale again, exactly the
    same tx ("a retried ceremony, fresh nonces"), as c0's new purchase of the same amount, whose
    invoice it deleted before quoting it: c0's payment fails back at once. c0 signs the sale
    again (its channel is still open: the LSP never closed it). `gift`: offered unasked, as a
    gift (price 0), c0 buying nothing. The failed payment's hash and factory-buy's answer."""

    from superscalar_plugin.engine.sale import Sale
    from superscalar_plugin.engine.sale_sign import SaleCoordinator
    from superscalar_plugin.plugin.sales.seller import lsp_chain

    from adversarial.test_red_team9 import HostileSeller

    c0 = world.clients[0]
    world.filters.clear()
    lsp = HostileSeller(world, inst)
    lsp.record = dataclasses.replace(lsp.record, sales=())  # the stock before the withheld sale
    session = bytes(range(1, 33))
    lsp.sessions.add(session)
    buyer = lsp.index[c0.node_id]
    leaf = lsp.keys.topology.leaf_of_client[buyer]
    chain = lsp_chain(lsp.record, lsp.keys, leaf)
    assert chain.latest is not None and chain.latest.txid == entry.stock_txid
    sale = Sale(chain.latest, buyer, BUY, bytes.fromhex(entry.channel_script), entry.fee_rate_kvb)
    coord = SaleCoordinator(lsp.keys, chain, sale, lsp.seckey, bytes.fromhex(inst), session)
    assert coord.proposal().sale_tx.hex() == entry.sale_tx  # the very sale c0 paid for

    nodes = {lsp.index[n.node_id]: n for n in world.clients}
    if gift:
        lsp.send(
            c0, protocol.Offer(bytes.fromhex(inst), session, protocol.OfferKind.FACTORY, BUY, 0)
        )
        lsp.take(protocol.SaleStep)  # ACCEPT
        _run_sale(lsp, coord, nodes)
        return "", None
    buying, out = lsp.buyer_asks(c0, inst)
    fee = 1_200
    invoice = lsp.quote(c0, inst, fee, "rt10-retry", delete=True)
    lsp.send(c0, protocol.Offer(bytes.fromhex(inst), session, protocol.OfferKind.FACTORY, BUY, fee))
    lsp.take(protocol.SaleStep)  # ACCEPT
    _run_sale(lsp, coord, nodes)
    buying.join(60)
    return str(invoice["payment_hash"]), out.get("r")


def _run_sale(lsp: Any, coord: Any, nodes: dict[int, Any]) -> None:
    """Every partial signature collected; the sale's last signature goes to nobody."""
    from superscalar_plugin.engine.sale_sign import SaleState

    for c in coord.cosigners:
        lsp.send(nodes[c], coord.proposal())
    while coord.state is not SaleState.DONE:
        src, step = lsp.take(protocol.SaleStep)
        outbox = coord.receive(lsp.index[src.node_id], step)
        if coord.state is not SaleState.DONE:
            for c, o in outbox.items():
                lsp.send(nodes[c], o)


@pytest.mark.parametrize("gift", [False, True])
def test_a_paid_withheld_sale_signed_again_still_burns(tmp_path: Path, gift: bool) -> None:
    """Hostile LSP. (1) It settles c0's price for 20,000 sat and withholds the sale's last
    signature: c0's purchase PAID, incomplete, burnt at the factory's end. The LSP keeps the
    sale's channel open. (2) It runs the withheld sale again, the same tx: as c0's new purchase,
    quoted with an invoice it deleted (the payment fails back), or, `gift`, offered unasked as a
    gift (price 0). c0 bound it (its channel is open, `channel_state` passed) and signed; round
    9's re-terms gave the entry it paid for the new purchase's FAILED, or GIFT: no burn, the LSP
    kept the price and its stock. Defended: a purchase is signed once (round 10's fix)."""
    world = _world(tmp_path)
    try:
        c0 = world.clients[0]
        inst, entry = _paid_and_withheld(world)
        flows._wait(lambda: False, 12.0)  # c0's first factory-buy ends (its DELIVERY_WAIT)
        with pytest.raises(AssertionError, match=r"c0 refused: .*signed once"):
            _resign_for_a_failing_purchase(world, inst, entry, gift=gift)
        rec = _client_record(c0, inst)
        [now] = _own(rec)
        assert now.sale_txid == entry.sale_txid and not now.complete
        assert (now.payment, now.payment_hash) == (Payment.PAID, entry.payment_hash), now
        assert _burns_at_the_end(rec, now, c0) == ["burn"], (
            f"c0 paid {entry.payment_hash} for this sale and holds it incomplete, but it now"
            f" records {now.payment} ({now.payment_hash}): no burn"
        )
    finally:
        world.net.stop()
