"""Red-team attacks, round 11: the buyer's refusal while it holds a paid purchase the LSP withheld
(`solvency.check_no_withheld_purchase`, `onchain.sales.withheld_purchases`), and what else can
still take that purchase's burn away.

Each test asserts the safe outcome. All three attacks succeeded when the round was run; each is
defended since: a client signs no sale while a DW update of its own is in flight, and a buyer
keeps its purchase (and its burn) when its sale signature could not leave.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fuzz_protocol import flows

from superscalar_plugin.engine import protocol, store

from adversarial.plugin_hostile import unpig
from adversarial.test_red_team import _funded, _pay, _world
from adversarial.test_red_team8 import _client_record
from adversarial.test_red_team9 import (
    HostileSeller,
    _burns_at_the_end,
    _own,
    _settled_pays,
)
from harness import lightningd_rpcs
from harness.node import FakeNode

BUY = 20_000
MAX_FEE = 2_000
FEE = 1_200


class _LspRpc:
    """The hostile LSP's own node, called as the plugin calls it (for `funding`)."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        return self.node.rpc_call(method, payload or {})


def _hostile_purchase(
    world: Any,
    lsp: HostileSeller,
    inst: str,
    c0: FakeNode,
    between: Callable[[], None] | None = None,
    stop_after_burn_sig: bool = False,
) -> dict[str, Any]:
    """The hostile LSP (the test) sells `c0` BUY sat of its leaf's stock as the LSP's record
    stood when `lsp` was made: c0 asks (factory-buy), the LSP quotes an invoice of its node's
    that settles at once (c0 has paid), then `between()` runs, then OFFER, the sale's channel
    (fundchannel_start / _complete on the unsigned sale) and the sale ceremony. The sale's last
    signature goes to nobody (or, `stop_after_burn_sig`, nothing after BURN_SIG)."""
    from superscalar_plugin.engine.sale import Sale
    from superscalar_plugin.engine.sale_sign import SaleCoordinator, SaleState
    from superscalar_plugin.plugin.creation import funding
    from superscalar_plugin.plugin.sales.seller import lsp_chain

    buying, out = lsp.buyer_asks(c0, inst)
    invoice = lsp.quote(c0, inst, FEE, f"rt11-{time.monotonic_ns()}")
    assert flows._wait(
        lambda: any(p.get("payment_hash") == invoice["payment_hash"] for p in _settled_pays(c0)),
        20.0,
    ), "c0 did not pay"
    out["payment_hash"] = invoice["payment_hash"]
    if between is not None:
        between()

    session = bytes([0x11] * 32)
    lsp.sessions.add(session)
    lsp.send(c0, protocol.Offer(bytes.fromhex(inst), session, protocol.OfferKind.FACTORY, BUY, FEE))
    lsp.take(protocol.SaleStep)  # ACCEPT
    buyer = lsp.index[c0.node_id]
    keys = lsp.keys
    chain = lsp_chain(lsp.record, keys, keys.topology.leaf_of_client[buyer])
    assert chain.latest is not None
    rpc = _LspRpc(world.lsp)
    entry = store.ClientEntry(c0.node_id, BUY)
    script = funding.start_channel(rpc, entry)  # type: ignore[arg-type]
    sale = Sale(chain.latest, buyer, BUY, bytes.fromhex(script), lsp.record.params.fee_rate_kvb)
    coord = SaleCoordinator(keys, chain, sale, lsp.seckey, bytes.fromhex(inst), session)
    funding.complete_channel(rpc, entry, coord.sold.sale_tx)  # type: ignore[arg-type]
    nodes = {lsp.index[n.node_id]: n for n in world.clients}
    for c in coord.cosigners:
        lsp.send(nodes[c], coord.proposal())
    out["sale_txid"] = coord.sold.sale_tx.txid
    while coord.state is not SaleState.DONE:
        src, step = lsp.take(protocol.SaleStep)
        outbox = coord.receive(lsp.index[src.node_id], step)
        if coord.state is SaleState.DONE:
            break  # the sale's last signature: to nobody
        for c, o in outbox.items():
            lsp.send(nodes[c], o)
        if stop_after_burn_sig and any(
            o.kind is protocol.SaleStepKind.BURN_SIG for o in outbox.values()
        ):
            break
    out["buying"] = buying
    return out


class _Held:
    """The LSP's final signature of the moved node (a `wire` SIGNATURES message naming it, or
    its resend, UpdateSig), held back from every client until `release`."""

    def __init__(self, world: Any, moved: int | None) -> None:
        """`moved` None: every ceremony message of the LSP's is held (the update agreed, not
        signed yet)."""
        from superscalar_plugin.engine import wire

        self.world, self.msgs, self.on = world, [], True
        inner = world.net.intercept

        def intercept(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
            if self.on and src is world.lsp and threading.current_thread() is not world.driver:
                p = unpig(msg)
                final = isinstance(p, protocol.UpdateSig)
                if isinstance(p, protocol.Ceremony):
                    try:
                        m = wire.decode(p.message)
                    except Exception:
                        m = None
                    final = moved is None or (
                        isinstance(m, wire.NodeValues)
                        and m.type is wire.MsgType.SIGNATURES
                        and any(n == moved for n, _ in m.values)
                    )
                if final:
                    self.msgs.append((src, dst, msg))
                    return None
            return inner(src, dst, msg)

        world.net.intercept = intercept

    def release(self) -> None:
        self.on = False
        for src, dst, msg in self.msgs:
            self.world._deliver(src, dst, msg)


def _hold_moved_node_signatures(world: Any, moved: int | None) -> _Held:
    return _Held(world, moved)


# --- 1. a DW update signed before the purchase, completed after it --------------------------------


def test_a_purchase_on_a_leaf_a_signed_update_supersedes_keeps_its_burn(tmp_path: Path) -> None:
    """Hostile LSP, 4 clients (c0, c1 on leaf 3). c0 asks to buy 20,000 sat and pays the quoted
    price (the LSP's invoice settles at once). The LSP then runs a DW update of node 1 (over
    c0's leaf): no purchase of c0's is withheld yet, so c0 agrees, signs everything, including
    the moved node, and waits for the moved node's final signature, which the LSP holds back
    (c0: `update.signed`, its path still the old one). Now the LSP sells c0 the purchase from
    the OLD leaf's stock: neither the buyer (`Buyer.buy`) nor the co-signer
    (`Cosigner._check_live`) looks at a pending update, so c0 (and its leaf-mate) sign it; the
    LSP withholds the sale's last signature. c0: PAID, incomplete, burn signed. Then the LSP
    sends the moved node's signature: `UpdateClient.on_update_sig` -> `_store` writes the new
    path with `sales=()`. The purchase and its burn are gone, and the new state supersedes the
    leaf whose stock the burn spends (the LSP can also publish it at any time: c0 adopts it
    from the block). The LSP keeps price and stock; `check_no_withheld_purchase` ran only at
    UPDATE, before the purchase existed."""
    from adversarial.test_red_team_update import _world as four_world
    from adversarial.test_red_team_update2 import _dw, _update

    world = four_world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        _pay(world, c0)
        lsp = HostileSeller(world, inst)  # the LSP's record before the update: the old leaf
        held = _hold_moved_node_signatures(world, moved=1)
        before = _dw(c0, inst)
        upd: dict[str, Any] = {}

        def update_signed_not_stored() -> None:
            threading.Thread(target=lambda: upd.update(r=_update(world, inst)), daemon=True).start()

            def signed() -> bool:
                rec = _client_record(c0, inst)
                return rec.update is not None and rec.update.signed

            assert flows._wait(signed, 25.0), (upd, _client_record(c0, inst).update)
            time.sleep(1.0)  # every client's partial signature of the moved node arrives

        # Defended (round 11's fix): no sale while a DW update of ours is in flight; c0 signs
        # nothing of it, so no purchase of its can lose its burn to that update.
        with pytest.raises(AssertionError, match=r"c0 refused: .*DW update of ours is in flight"):
            _hostile_purchase(world, lsp, inst, c0, between=update_signed_not_stored)
        assert _own(_client_record(c0, inst)) == []
        held.release()
        assert flows._wait(lambda: _dw(c0, inst) != before, 15.0)  # the update completes
    finally:
        world.net.stop()


# --- 2. the buyer's sale signature cannot leave: the paid purchase dropped ------------------------


def test_a_paid_purchase_whose_signature_could_not_leave_keeps_its_burn(tmp_path: Path) -> None:
    """Hostile LSP. c0 buys 20,000 sat and pays (the LSP settles at once). The sale runs to
    BURN_SIG; the LSP hangs up right after it, so c0's sale partial signature cannot be sent
    (`sendcustommsg` fails: PeerUnreachable). c0 then forgets its nonce and DROPS the sale from
    its record (`_drop_unsent`), burn and all. Its payment was settled: c0 paid the price and
    holds neither the sale nor its burn; the LSP keeps the price and the stock. (The README
    drops such a sale so that the stock can be sold again: right for a co-signer, but not for
    the buyer of a purchase whose payment may have settled; a restart at the same moment keeps
    it, with its burn.) Bounded by the quoted fee, like an LSP that settles and never offers."""
    world = _world(tmp_path)
    original = lightningd_rpcs.HANDLERS["sendcustommsg"]
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        _pay(world, c0)
        lsp = HostileSeller(world, inst)

        def hang_up_first(me: FakeNode, p: dict[str, Any]) -> Any:
            if me is c0 and p.get("node_id") == world.lsp.node_id:
                msg = unpig(str(p["msg"]))
                if (
                    isinstance(msg, protocol.SaleStep)
                    and msg.kind is protocol.SaleStepKind.SALE_PSIG
                ):
                    world.net.disconnect(world.lsp, c0)
            return original(me, p)

        lightningd_rpcs.HANDLERS["sendcustommsg"] = hang_up_first
        out = _hostile_purchase(world, lsp, inst, c0, stop_after_burn_sig=True)
        flows._wait(lambda: c0.connected_peer(world.lsp.node_id) is None, 10.0)
        time.sleep(1.0)
        lightningd_rpcs.HANDLERS["sendcustommsg"] = original
        world.net.connect(world.lsp, c0)
        assert any(p.get("payment_hash") == out["payment_hash"] for p in _settled_pays(c0))
        rec = _client_record(c0, inst)
        own = _own(rec)
        assert own and _burns_at_the_end(rec, own[0], c0) == ["burn"], (
            f"c0 paid {out['payment_hash']} for {out['sale_txid']} and holds {own}: no burn"
        )
    finally:
        lightningd_rpcs.HANDLERS["sendcustommsg"] = original
        world.net.stop()


def test_an_update_agreed_before_the_purchase_is_not_signed_after_it(tmp_path: Path) -> None:
    """As above, one step earlier: c0 pays the quoted price, the LSP sends UPDATE of node 1 and
    c0 agrees (READY: nothing withheld yet); the LSP holds its ceremony messages, sells c0 the
    purchase from the old leaf's stock and withholds the sale's last signature; then it runs the
    update's ceremony. `check_no_withheld_purchase` is asked in `UpdateClient._check` (UPDATE)
    only; `_solvent`, asked before each ceremony's first nonce, does not ask it again, so c0
    signs the new state and stores it with `sales=()`."""
    from adversarial.test_red_team_update import _world as four_world
    from adversarial.test_red_team_update2 import _dw, _update

    world = four_world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        _pay(world, c0)
        lsp = HostileSeller(world, inst)
        held = _hold_moved_node_signatures(world, moved=None)  # every ceremony message
        before = _dw(c0, inst)
        upd: dict[str, Any] = {}

        def update_agreed() -> None:
            threading.Thread(target=lambda: upd.update(r=_update(world, inst)), daemon=True).start()
            assert flows._wait(lambda: bool(held.msgs), 25.0), upd
            rec = _client_record(c0, inst)
            assert rec.update is not None and not rec.update.signed, rec.update

        # Defended (round 11's fix): an UPDATE agreed (READY) is an update in flight: no sale.
        with pytest.raises(AssertionError, match=r"c0 refused: .*DW update of ours is in flight"):
            _hostile_purchase(world, lsp, inst, c0, between=update_agreed)
        assert _own(_client_record(c0, inst)) == []
        held.release()
        assert flows._wait(lambda: _dw(c0, inst) != before, 20.0), upd  # the update completes
    finally:
        world.net.stop()
