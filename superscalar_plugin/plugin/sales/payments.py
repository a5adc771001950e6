"""The LSP's paid sales: a quote and its invoice, and the buyer's HTLC held until the liquidity is
delivered.

1. BUY from a client of a funded factory (worker): the price (`sale-fee-base` + `sale-fee-ppm` of
   the amount), an invoice of it made with our own preimage, persisted as a QUOTED order before
   the QUOTE leaves.
2. The buyer pays. Its HTLC reaches the `htlc_accepted` hook (dispatch thread) after the HTLC rules
   (guards): an HTLC of a QUOTED order is held (its request kept unanswered) and the worker told;
   every other HTLC is answered at once, so nothing queues behind a held one. Held only if checked
   as lightningd would check an invoice's (we resolve it ourselves, so lightningd does not): we are
   its final hop, it leaves the invoice's min_final_cltv_expiry (`cltv_expiry >= height +
   min_final_cltv`), its onion's `payment_secret` is the invoice's and its `total_msat` is the
   price; anything else is failed as an unknown payment.
3. Worker: once the held parts reach the price, the order is PAID (persisted) and the liquidity is
   made (`SalesRole.start`: a sale of the leaf's stock, or the on-chain fallback).
4. Delivered: DELIVERED is persisted, then every held part is resolved with our preimage (settled
   by us: no invoice check of lightningd's can refuse it after the delivery). Not delivered: FAILED
   persisted, every part failed: the buyer pays nothing.
So the buyer pays only for delivered liquidity and the LSP delivers only against a locked payment;
what either side can lose to the other is at most the quoted fee (an LSP that settles and then
withholds the sale's last signature). After a restart a PAID order is FAILED (the sale's nonces
are gone) and lightningd's replay of its HTLCs is failed; a DELIVERED order's are resolved.

Owns: the map payment hash -> order (rebuilt from the records and swapped whole; read by the hook)
and the held HTLCs (one lock: the hook adds, the worker takes). Worker, except `claim`.
May call: lightningd's `invoice`, the sales (`start_sale`), `peers`, `records`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from ...engine import policy, protocol, store
from ...engine.errors import InvalidParameter
from ...engine.sale_store import Order, OrderState
from ..lightningd.config import MIN_CHANNEL_SAT
from ..lightningd.guards import msat
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.records import Records
from ..lightningd.runtime import Reply, why

log = logging.getLogger("superscalar")

INVOICE_EXPIRY = 600  # seconds a quote's invoice is valid
EXPIRY_MARGIN = 60  # an HTLC arriving this close to the invoice's expiry is failed, not held
MAX_OPEN_QUOTES = 4  # unpaid quotes of one client at once
QUOTE_FINAL_CLTV = 18  # the quote invoice's min_final_cltv_expiry (Core Lightning's cltv-final)

StartSale = Callable[
    [str, int, int, int, Callable[[dict[str, Any]], None], Callable[[Exception], None]], None
]


def delivered(result: dict[str, Any]) -> str:
    """What an order's record says it bought: "factory <sale txid>" or "onchain <channel id>"."""
    return f"{result['kind']} {result.get('sale_txid') or result.get('channel_id')}"


@dataclass
class _Held:
    request: Reply
    amount_msat: int
    since: float


def resolve(preimage: str) -> dict[str, Any]:
    return {"result": "resolve", "payment_key": preimage}


def refuse(amount_msat: int, height: int) -> dict[str, Any]:
    failure = policy.unknown_payment_details(amount_msat, height)
    return {"result": "fail", "failure_message": failure.hex()}


def held_htlc_refusal(
    order: Order, htlc: dict[str, Any], onion: dict[str, Any], height: int
) -> str | None:
    """Why an HTLC for `order` must not be held (lightningd's own checks of an invoice payment,
    which it does not make for an HTLC we resolve ourselves), or None."""
    if onion.get("short_channel_id") is not None or onion.get("next_node_id") is not None:
        return "not for us: it asks to be forwarded"
    expiry = htlc.get("cltv_expiry")
    if not isinstance(expiry, int) or expiry < height + order.min_final_cltv:
        return (
            f"cltv_expiry {expiry} leaves fewer than the invoice's {order.min_final_cltv} blocks"
            f" above height {height}"
        )
    if order.payment_secret is None or onion.get("payment_secret") != order.payment_secret:
        return "its payment_secret is not the invoice's"
    total = onion.get("total_msat")
    try:
        total_msat = None if total is None else msat(total)
    except ValueError:
        total_msat = None
    if total_msat != order.fee_sat * 1000:
        return f"total_msat {total} is not the price {order.fee_sat * 1000}msat"
    return None


class Payments:
    def __init__(
        self,
        node: Node,
        records: Records,
        peers: Peers,
        submit: Callable[[Callable[[], None]], None],
    ) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._submit = submit
        self._lock = threading.Lock()
        self._orders: dict[str, tuple[str, Order]] = {}  # payment hash -> instance, order
        self._held: dict[str, list[_Held]] = {}
        self.start_sale: StartSale | None = None  # SalesRole.start, wired by the service
        # SalesRole.refill_first (a DW update when the leaf's stock is short), wired likewise
        self.refill_first: Callable[[str, int, int, Callable[[], None]], None] | None = None

    # --- the map the hook reads -----------------------------------------------------------------

    def refresh(self) -> None:
        orders = {
            o.payment_hash: (r.instance_id, o)
            for r in self._records.all()
            if isinstance(r, store.LspRecord)
            for o in r.orders
        }
        with self._lock:
            self._orders = orders

    def resume(self, record: store.LspRecord) -> None:
        """Start-up: a sale that was being made for a PAID order is gone with its nonces."""
        if any(o.state is OrderState.PAID for o in record.orders):
            orders = tuple(
                dataclasses.replace(o, state=OrderState.FAILED, error="the LSP restarted")
                if o.state is OrderState.PAID
                else o
                for o in record.orders
            )
            self._records.persist(record.replace(orders=orders))

    # --- 1. the quote (worker) ------------------------------------------------------------------

    def price(self, sold_sat: int) -> int:
        cfg = self._node.config
        return cfg.sale_fee_base_sat + sold_sat * cfg.sale_fee_ppm // 1_000_000

    def quote(self, record: store.LspRecord, index: int, buy: protocol.Buy) -> None:
        """A client's BUY: if its leaf's stock is short, a DW update first (before the buyer
        pays: an update needs its channels free of HTLCs); then the quote."""
        quotable = (
            record.state is store.LspState.FUNDED
            and not record.exit
            and not record.wind_down
            and buy.sold_sat >= MIN_CHANNEL_SAT
            and not any(o.client == index and o.state is OrderState.QUOTED for o in record.orders)
        )
        if self.refill_first is None or not quotable:  # `_quote` says why not, if not
            self._quote(record.instance_id, index, buy)
            return
        self.refill_first(
            record.instance_id,
            index,
            buy.sold_sat,
            lambda: self._quote(record.instance_id, index, buy),
        )

    def _quote(self, instance: str, index: int, buy: protocol.Buy) -> None:
        """Persist the order, then send the QUOTE (or a REJECT saying why)."""
        record = self._records.get(instance)
        assert isinstance(record, store.LspRecord)
        peer = record.clients[index].node_id
        try:
            if record.state is not store.LspState.FUNDED or record.exit or record.wind_down:
                raise InvalidParameter("the factory is not selling: it is ending")
            if buy.sold_sat < MIN_CHANNEL_SAT:
                raise InvalidParameter(f"{buy.sold_sat} sat is below {MIN_CHANNEL_SAT}")
            open_quotes = [
                o
                for o in record.orders
                if o.client == index and o.state is OrderState.QUOTED and o.expires_at > time.time()
            ]
            if len(open_quotes) >= MAX_OPEN_QUOTES:
                raise InvalidParameter("too many unpaid quotes")
            order, bolt11 = self._new_order(record, index, buy.sold_sat)
        except Exception as e:
            self._tell(peer, record.instance_id, f"no quote: {why(e)}")
            return
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.LspRecord)
        kept = tuple(o for o in latest.orders if not self._stale(o))
        self._records.persist(latest.replace(orders=(*kept, order)))
        self.refresh()  # the hook knows the order before the buyer can pay it
        quote = protocol.Quote(
            bytes.fromhex(record.instance_id), buy.sold_sat, order.fee_sat, bolt11
        )
        self._peers.send(peer, quote)
        log.info(
            "factory %s: quoted %d sat of inbound liquidity to %s for %d sat",
            record.instance_id[:16],
            buy.sold_sat,
            peer,
            order.fee_sat,
        )

    def _new_order(self, record: store.LspRecord, index: int, sold: int) -> tuple[Order, str]:
        fee = self.price(sold)
        preimage = os.urandom(32)
        label = f"superscalar-sale-{record.instance_id[:16]}-{os.urandom(4).hex()}"
        inv = self._node.rpc.call(
            "invoice",
            {
                "amount_msat": fee * 1000,
                "label": label,
                "description": f"superscalar: {sold} sat of inbound liquidity",
                "expiry": INVOICE_EXPIRY,
                "preimage": preimage.hex(),
                "cltv": QUOTE_FINAL_CLTV,
            },
        )
        order = Order(
            payment_hash=sha256(preimage).hexdigest(),
            label=label,
            client=index,
            sold_sat=sold,
            fee_sat=fee,
            state=OrderState.QUOTED,
            created_height=self._node.height,
            preimage=preimage.hex(),
            expires_at=int(time.time()) + INVOICE_EXPIRY,
            payment_secret=str(inv["payment_secret"]),
            min_final_cltv=QUOTE_FINAL_CLTV,
        )
        assert inv["payment_hash"] == order.payment_hash
        return order, str(inv["bolt11"])

    def _stale(self, o: Order) -> bool:
        """An order not worth keeping: a quote expired an hour ago (a late HTLC for it finds no
        order and lightningd refuses it: its invoice expired), or a failed order a day old."""
        if o.state is OrderState.QUOTED:
            return o.expires_at < time.time() - 3600
        return o.state is OrderState.FAILED and o.created_height < self._node.height - 144

    def _tell(self, peer: str, instance: str, reason: str) -> None:
        try:
            text = protocol.Text(protocol.PayloadType.REJECT, bytes.fromhex(instance), reason)
            self._peers.send(peer, text)
        except Exception as e:
            log.info("could not tell %s: %s", peer, why(e))

    # --- 2. the hook (dispatch thread) ---------------------------------------------------------

    def claim(self, htlc: dict[str, Any], onion: dict[str, Any], request: Reply) -> bool:
        """The HTLC pays one of our orders: answered (a settled or failed order's replay) or
        held for the worker. False: not ours, the caller answers it."""
        payment_hash = str(htlc.get("payment_hash", ""))
        amount = msat(htlc.get("amount_msat", 0))
        height = self._node.height
        with self._lock:
            entry = self._orders.get(payment_hash)
            if entry is None:
                return False
            order = entry[1]
            state = order.state
            hold = state in (OrderState.QUOTED, OrderState.PAID)
            bad = hold and held_htlc_refusal(order, htlc, onion, height)
            if bad:
                log.info("order %s: HTLC failed: %s", payment_hash[:16], bad)
            hold = hold and not bad
            if hold:
                self._held.setdefault(payment_hash, []).append(
                    _Held(request, amount, time.monotonic())
                )
        if hold:
            self._submit(lambda: self._on_htlc(payment_hash))
        elif state is OrderState.DELIVERED:
            request.set_result(resolve(order.preimage))
        else:
            request.set_result(refuse(amount, height))
        return True

    # --- 3. paid: make the liquidity (worker) --------------------------------------------------

    def _find(self, payment_hash: str) -> tuple[store.LspRecord, Order] | None:
        with self._lock:
            entry = self._orders.get(payment_hash)
        record = self._records.get(entry[0]) if entry else None
        if not isinstance(record, store.LspRecord):
            return None
        order = next((o for o in record.orders if o.payment_hash == payment_hash), None)
        return None if order is None else (record, order)

    def _on_htlc(self, payment_hash: str) -> None:
        found = self._find(payment_hash)
        if found is None:
            return
        record, order = found
        if order.state is not OrderState.QUOTED:
            return  # a part arriving during the sale: answered with the others at its end
        if time.time() > order.expires_at - EXPIRY_MARGIN:
            self._finish(payment_hash, False, "the quote expired")
            return
        with self._lock:
            total = sum(h.amount_msat for h in self._held.get(payment_hash, []))
        if total < order.fee_sat * 1000:
            return  # more parts to come (or `check_deadlines` fails these)
        self._set(record, payment_hash, state=OrderState.PAID)
        log.info("factory %s: paid %d sat; selling", record.instance_id[:16], order.fee_sat)
        assert self.start_sale is not None
        self.start_sale(
            record.instance_id,
            order.client,
            order.sold_sat,
            order.fee_sat,
            lambda result: self._finish(payment_hash, True, delivered(result)),
            lambda e: self._finish(payment_hash, False, why(e)),
        )

    def _set(self, record: store.LspRecord, payment_hash: str, **changes: Any) -> None:
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.LspRecord)
        orders = tuple(
            dataclasses.replace(o, **changes) if o.payment_hash == payment_hash else o
            for o in latest.orders
        )
        self._records.persist(latest.replace(orders=orders))
        self.refresh()

    # --- 4. settle or fail (worker) ------------------------------------------------------------

    def _finish(self, payment_hash: str, delivered: bool, detail: str) -> None:
        found = self._find(payment_hash)
        if found is None:
            return
        record, order = found
        if delivered:
            self._set(record, payment_hash, state=OrderState.DELIVERED, result=detail)
        else:
            self._set(record, payment_hash, state=OrderState.FAILED, error=detail)
        with self._lock:
            held = self._held.pop(payment_hash, [])
        for h in held:  # persisted first: a restart replays these HTLCs to the same answer
            if delivered:
                h.request.set_result(resolve(order.preimage))
            else:
                h.request.set_result(refuse(h.amount_msat, self._node.height))
        log.info(
            "factory %s: order %s %s (%s)",
            record.instance_id[:16],
            payment_hash[:16],
            "delivered, payment settled" if delivered else "failed, payment refused",
            detail,
        )

    def check_deadlines(self, now: float) -> None:
        """Parts that never reached the price within the ceremony timeout are failed (the payer
        gets them back)."""
        wait = self._node.config.ceremony_timeout
        with self._lock:
            stale = [h for h, parts in self._held.items() if parts and now - parts[0].since > wait]
        for payment_hash in stale:
            found = self._find(payment_hash)
            if found is not None and found[1].state is OrderState.QUOTED:
                self._finish(payment_hash, False, "the payment never reached the price")
