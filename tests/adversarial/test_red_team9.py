"""Red-team attacks, round 9: the buyer's recorded payment (gift / pending / paid / failed) and
the solvency guard's `nothing_paid`; the LSP's `burn_sent` and its on-chain fallback.

Each test asserts the safe outcome. A test marked `xfail(strict=True, reason="HOLE: ...")` is an
attack that succeeds against the current code; the others are attacks the code defends.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from fuzz_protocol import flows
from fuzz_protocol.world import World, label

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.sale import stock_sweep_valid_from
from superscalar_plugin.engine.sale_store import Payment
from superscalar_plugin.plugin.onchain.sales import stock_duties

from adversarial.plugin_hostile import pig, unpig
from adversarial.test_red_team import _funded, _pay, _world
from adversarial.test_red_team8 import _client_record
from harness.node import FakeNode

BUY = 20_000
MAX_FEE = 2_000


def _own(rec: store.ClientRecord) -> list[Any]:
    return [e for e in rec.sales if e.buyer == rec.client_index]


def _node_payment(node: FakeNode) -> Any:
    """`payment_of` as the plugin asks it: `Node.payment`, over `node`'s listsendpays."""
    from superscalar_plugin.plugin.lightningd.config import Config
    from superscalar_plugin.plugin.lightningd.node import Node

    class Rpc:
        def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
            return node.rpc_call(method, payload or {})

    return Node(Rpc(), Config()).payment


def _settled_pays(node: FakeNode) -> list[dict[str, Any]]:
    return [p for p in node.rpc_call("listsendpays")["payments"] if p.get("status") == "complete"]


def _burns_at_the_end(rec: store.ClientRecord, sale: Any, node: FakeNode) -> list[str]:
    """What `rec`'s duties publish once the stock is on chain and the LSP's path opens."""
    keys = rec.signed_header().factory_keys()  # type: ignore[union-attr]
    leaf_at = rec.timeout_height - 5
    opens = stock_sweep_valid_from(keys, leaf_at)
    ended = dataclasses.replace(rec, confirmed=((sale.stock_txid, leaf_at),))
    return [w for w, _, _ in stock_duties(ended, opens - 1, _node_payment(node))]


# --- 1. a hostile LSP swaps a gift OFFER in for the purchase being paid ---------------------------


def test_a_gift_offer_swapped_in_for_a_paid_purchase_is_refused(tmp_path: Path) -> None:
    """Hostile LSP: c0 asks to buy 20,000 sat; the LSP quotes its price and c0 pays (the HTLC is
    held). The LSP's OFFER for it says fee 0 (a gift, as factory-sell sends) instead of the
    quoted price: c0 takes any gift, so it accepts and co-signs its own purchase as a GIFT, with
    no payment hash. The LSP collects every signature, settles c0's payment (its price taken) and
    withholds the sale's last signature from c0. c0 paid, holds its purchase incomplete, and its
    node shows the payment settled; yet the guard sees a gift (`nothing_paid`) and c0 never burns
    the stock: the LSP keeps the price and the stock, the deterrent is gone. Defended (round 9's
    fix): c0 refuses a gift while a purchase of its own is in flight."""
    world = _world(tmp_path)
    c0, _co = world.clients
    inner = world._intercept

    def hostile(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
        if src is world.lsp and dst is c0:
            p = unpig(msg)
            if isinstance(p, protocol.Offer) and p.fee_sat:
                msg = pig(dataclasses.replace(p, fee_sat=0))
            elif label(p) == "SaleStep.SALE_SIG":
                return None
        return inner(src, dst, msg)

    world.net.intercept = hostile
    try:
        inst = _funded(world)
        _pay(world, c0)  # outbound liquidity to pay the price
        before = len(_settled_pays(c0))
        _, err = flows._call(
            c0, "factory-buy", {"instance": inst, "sat": BUY, "max_fee_sat": MAX_FEE}
        )
        # The defence: c0 takes no gift while its own purchase is being paid (REJECT); it signs
        # nothing, and the (here honest) LSP fails its held payment back.
        assert err is not None
        assert _own(_client_record(c0, inst)) == [], "c0 signed a sale as a gift while paying"
        assert c0.is_in_log("a gift while a purchase of ours is in flight")
        time.sleep(1.0)
        assert len(_settled_pays(c0)) == before, "c0 paid for a purchase it did not get"
    finally:
        world.net.stop()


# --- 2. a hostile LSP retries a stalled sale for a new, paid purchase -----------------------------


class HostileSeller:
    """The LSP's side of one sale run from the test process (its own key from its node's
    `makesecret`), the clients' answers taken off the wire before the LSP's plugin sees them."""

    def __init__(self, world: World, inst: str) -> None:
        import queue
        import threading

        from superscalar_plugin.plugin.lightningd.node import node_seckey
        from superscalar_plugin.plugin.lightningd.records import factory_of

        from adversarial.test_red_team2 import _records

        self.world, self.inst = world, inst
        [raw] = [r for r in _records(world.lsp, "lsp") if r.get("instance_id") == inst]
        rec = store.from_json(raw)
        assert isinstance(rec, store.LspRecord)
        self.record = rec
        self.keys = factory_of(rec)
        label_ = b"superscalar/lsp/" + bytes.fromhex(inst)
        secret = world.lsp.rpc_call("makesecret", {"hex": label_.hex()})["secret"]
        self.seckey = node_seckey(bytes.fromhex(secret))
        self.index = {c.node_id: i for i, c in enumerate(rec.clients)}
        self.inbox: queue.Queue[tuple[FakeNode, protocol.Payload]] = queue.Queue()
        self.driver = threading.current_thread()
        self.sessions: set[bytes] = set()
        inner = world._intercept

        def intercept(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
            if threading.current_thread() is self.driver:
                return msg  # our own messages, as the LSP
            p = unpig(msg)
            if dst is world.lsp and (
                isinstance(p, protocol.Buy)
                or (isinstance(p, protocol.SaleStep) and p.session in self.sessions)
                or (isinstance(p, protocol.Text) and p.type is protocol.PayloadType.REJECT)
            ):
                self.inbox.put((src, p))
                return None  # the LSP's plugin never sees it: we answer
            return inner(src, dst, msg)

        world.net.intercept = intercept

    def send(self, dst: FakeNode, p: protocol.Payload) -> None:
        dst.deliver_custommsg(self.world.lsp, pig(p))

    def buyer_asks(self, c0: FakeNode, inst: str) -> tuple[Any, dict[str, Any]]:
        """c0's factory-buy of BUY sat on a thread of its own (its answer in `out["r"]`), until
        its BUY reaches us."""
        import threading

        out: dict[str, Any] = {}
        buying = threading.Thread(
            target=lambda: out.update(
                r=flows._call(
                    c0, "factory-buy", {"instance": inst, "sat": BUY, "max_fee_sat": MAX_FEE}
                )
            ),
            daemon=True,
        )
        buying.start()
        self.take(protocol.Buy)
        return buying, out

    def quote(
        self, c0: FakeNode, inst: str, fee: int, label: str, delete: bool = False
    ) -> dict[str, Any]:
        """An invoice of the LSP's node for `fee` sat as c0's QUOTE (`delete`: deleted first, so
        c0's payment fails back at once)."""
        invoice = self.world.lsp.rpc_call(
            "invoice", {"amount_msat": fee * 1000, "label": label, "description": "buy"}
        )
        if delete:
            self.world.lsp.rpc_call("delinvoice", {"label": label, "status": "unpaid"})
        self.send(c0, protocol.Quote(bytes.fromhex(inst), BUY, fee, invoice["bolt11"]))
        return dict(invoice)

    def take(self, kind: type, timeout: float = 20.0) -> tuple[FakeNode, Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                src, p = self.inbox.get(timeout=0.2)
            except Exception:
                continue
            if isinstance(p, protocol.Text):
                raise AssertionError(f"{src.name} refused: {p.reason}")
            if isinstance(p, kind):
                return src, p
        raise AssertionError(f"no {kind.__name__} in time")


def _stalled_by_co(world: World, inst: str) -> protocol.SaleProposal:
    """Round 8's stall: c0 buys, co withholds its sale partial signature, the LSP aborts and fails
    c0's payment back (c0 records its purchase FAILED). The sale's proposal, as c0 got it."""
    c0 = world.clients[0]
    world.arm_filter("co", "SaleStep.SALE_PSIG", hold=False)
    _, err = flows._call(c0, "factory-buy", {"instance": inst, "sat": BUY, "max_fee_sat": MAX_FEE})
    world.end_step()
    assert err is not None
    [entry] = _own(_client_record(c0, inst))
    assert entry.payment is Payment.FAILED and not entry.complete, entry
    [proposal] = [
        p
        for src, dst, m in world.history["lsp"]
        if dst is c0 and isinstance(p := unpig(m), protocol.SaleProposal)
    ]
    return proposal


@dataclasses.dataclass
class Retried:
    fee: int
    payment_hash: str
    sale_txid: str
    first_session: str


def _retry_stalled_for_a_paid_purchase(world: World, inst: str) -> Retried:
    """After `_stalled_by_co`: c0 asks again for the same amount; the hostile LSP (the test)
    quotes a fresh invoice of its node's, c0 pays it, and the LSP runs the stalled sale again,
    the very same tx, with fresh nonces; its last signature goes to nobody."""

    from superscalar_plugin.engine.sale import Sale
    from superscalar_plugin.engine.sale_sign import SaleCoordinator, SaleState
    from superscalar_plugin.plugin.sales.seller import lsp_chain

    c0 = world.clients[0]
    stalled = _stalled_by_co(world, inst)
    [first] = _own(_client_record(c0, inst))
    lsp = HostileSeller(world, inst)
    session = bytes(range(32))
    lsp.sessions.add(session)
    buyer = lsp.index[c0.node_id]
    leaf = lsp.keys.topology.leaf_of_client[buyer]
    chain = lsp_chain(lsp.record, lsp.keys, leaf)
    assert chain.latest is not None and chain.latest.txid == stalled.stock_txid
    sale = Sale(chain.latest, buyer, BUY, stalled.channel_script, stalled.fee_rate_kvb)
    coord = SaleCoordinator(lsp.keys, chain, sale, lsp.seckey, bytes.fromhex(inst), session)
    assert coord.proposal().sale_tx == stalled.sale_tx  # the very sale that stalled

    buying, _ = lsp.buyer_asks(c0, inst)
    fee = 1_200
    invoice = lsp.quote(c0, inst, fee, "rt9-retry")
    lsp.send(c0, protocol.Offer(bytes.fromhex(inst), session, protocol.OfferKind.FACTORY, BUY, fee))
    lsp.take(protocol.SaleStep)  # ACCEPT
    nodes = {lsp.index[n.node_id]: n for n in world.clients}
    for c in coord.cosigners:
        lsp.send(nodes[c], coord.proposal())

    def signed() -> bool:
        return coord.state is SaleState.DONE

    while not signed():
        src, step = lsp.take(protocol.SaleStep)
        outbox = coord.receive(lsp.index[src.node_id], step)
        if not signed():  # the last signature (SALE_SIG) goes out below, or to nobody
            for c, out in outbox.items():
                lsp.send(nodes[c], out)
    assert flows._wait(
        lambda: any(p.get("payment_hash") == invoice["payment_hash"] for p in _settled_pays(c0)),
        30.0,
    ), "c0 did not pay the retry"
    buying.join(60)
    return Retried(fee, invoice["payment_hash"], coord.sold.sale_tx.txid, first.session)


def test_a_stalled_sale_retried_for_a_paid_purchase_is_refused(tmp_path: Path) -> None:
    """Hostile LSP. (1) c0 buys 20,000 sat; co (or the LSP itself, as co's stand-in) withholds
    its sale partial signature, the sale stalls with c0's partial signature given, c0's payment
    is failed back: c0 records that purchase FAILED (it paid nothing, rightly no burn). (2) c0
    asks again for 20,000 sat. The LSP quotes a fresh invoice, c0 pays it, and the LSP runs the
    stalled sale again, exactly the same tx (c0 and co sign only that sale of the stock: "a
    retried ceremony, fresh nonces"). It collects every partial signature, keeps the price and
    withholds the sale's last signature. c0 paid, holds its purchase incomplete, but the entry
    still said FAILED (and the first payment's hash): no burn, the LSP kept price and stock. Or
    it delivered: into the channel it closed at the stall, liquidity c0 can never use."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        _pay(world, c0)
        # Defended: c0 signs a purchase once (round 10), and the stalled sale's channel, closed
        # when it aborted, is refused by the binding too (`channel_state`, round 9).
        with pytest.raises(AssertionError, match=r"c0 refused: .*signed once"):
            _retry_stalled_for_a_paid_purchase(world, inst)
        [entry] = _own(_client_record(c0, inst))
        assert entry.payment is Payment.FAILED and not entry.complete, entry
    finally:
        world.net.stop()


# --- 3. the stored `pending` after a restart -----------------------------------------------------


def test_a_buyer_restarted_mid_purchase_never_burns_a_payment_failed_back(tmp_path: Path) -> None:
    """Round 8's stall (co withholds its sale partial signature) while c0's node restarts right
    after c0 stored its purchase with the signed burn: c0's paying thread is gone, so nothing
    records the payment's end and the stored purchase stays `pending`. The LSP aborts and fails
    the payment back. At the factory's end the guard asks c0's node (listsendpays): every part
    failed, c0 paid nothing, no burn of the LSP's stock."""
    import threading

    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0, _co = world.clients
        _pay(world, c0)
        world.arm_filter("co", "SaleStep.SALE_PSIG", hold=False)
        buying = threading.Thread(
            target=lambda: flows._call(
                c0, "factory-buy", {"instance": inst, "sat": BUY, "max_fee_sat": MAX_FEE}
            ),
            daemon=True,
        )
        buying.start()
        assert flows._wait(lambda: bool(_own(_client_record(c0, inst))), 20.0)
        time.sleep(0.5)  # its sale partial signature leaves just after (else it drops the sale)
        c0.restart(reconnect=True)
        buying.join(30)
        world.end_step()
        [entry] = _own(_client_record(c0, inst))
        assert entry.payment is Payment.PENDING and entry.payment_hash, entry

        def failed_back() -> bool:
            pays = c0.rpc_call("listsendpays", {"payment_hash": entry.payment_hash})["payments"]
            return bool(pays) and all(p.get("status") == "failed" for p in pays)

        assert flows._wait(failed_back, 30.0), "the LSP never failed c0's payment back"
        rec = _client_record(c0, inst)
        [entry] = _own(rec)
        assert not entry.complete
        assert _burns_at_the_end(rec, entry, c0) == [], "c0 burns a purchase it never paid for"
    finally:
        world.net.stop()
