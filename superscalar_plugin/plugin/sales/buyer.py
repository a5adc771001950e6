"""`factory-buy`: a client asks its LSP for inbound liquidity, pays the quoted price, and gets a
new channel: a sale inside the factory, or the LSP's on-chain fallback.

1. `buy` (worker): BUY to the factory's LSP.
2. QUOTE: the price must be within `max_fee_sat` (default: `max-buy-fee-ppm` of the amount, at
   least 2,000 sat), the invoice the LSP's own, of exactly that price, unexpired. Then pay it on a
   thread of its own: the LSP holds the payment until the liquidity is delivered, and the sale's
   messages must reach the worker meanwhile.
3. The LSP's OFFER names this purchase (amount and price): `cosign` accepts it and tells us its kind.
4. The payment settles once the LSP delivered; we answer with the new channel (the sale we hold
   fully signed, or the on-chain channel, remembered in our record). A failed payment means nothing
   was delivered and nothing paid.

Owns: the purchases in flight (one per factory). Worker, except the payment's own thread.
May call: `peers`, `records`, lightningd's `decode`, `pay`, `listpeerchannels`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine import protocol, store
from ...engine.errors import CeremonyError, InvalidParameter
from ...engine.sale_store import Payment
from ..lightningd.config import BUY_MIN_FEE_CAP_SAT, MIN_CHANNEL_SAT
from ..lightningd.guards import msat
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.records import LIVE, Records, is_compromised
from ..lightningd.runtime import Reply, fail, why

log = logging.getLogger("superscalar")

PAY_RETRY_FOR = 120  # seconds `pay` keeps trying (the LSP holds our HTLC while it sells)
DELIVERY_WAIT = 30.0  # seconds we wait, once paid, for the sale's last signature to be stored


@dataclass
class Purchase:
    instance: str
    sold_sat: int
    max_fee_sat: int
    reply: Reply
    deadline: float
    fee_sat: int | None = None
    payment_hash: str | None = None
    offer: protocol.Offer | None = None
    channels_before: frozenset[str] = frozenset()


class Buyer:
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
        self._buys: dict[str, Purchase] = {}

    def waiting(self, instance: str) -> bool:
        return instance in self._buys

    def default_max_fee(self, sold_sat: int) -> int:
        return max(BUY_MIN_FEE_CAP_SAT, sold_sat * self._node.config.max_buy_fee_ppm // 1_000_000)

    def buy(self, reply: Reply, instance: str, sold_sat: int, max_fee_sat: int | None) -> None:
        try:
            record = self._records.get(instance)
            if not isinstance(record, store.ClientRecord) or record.state not in LIVE:
                raise InvalidParameter(f"instance: no live factory {instance} of ours as a client")
            if is_compromised(record) or record.exit or record.moving_to:
                raise InvalidParameter("instance: the factory is ending")
            if instance in self._buys:
                raise InvalidParameter("instance: a purchase in this factory is in progress")
            if sold_sat < MIN_CHANNEL_SAT:
                raise InvalidParameter(f"sat: {sold_sat} is below the minimum of {MIN_CHANNEL_SAT}")
            self._peers.send(record.lsp_node_id, protocol.Buy(bytes.fromhex(instance), sold_sat))
        except Exception as e:
            fail(reply, e, "factory-buy failed")
            return
        cap = self.default_max_fee(sold_sat) if max_fee_sat is None else max_fee_sat
        deadline = time.monotonic() + self._node.config.ceremony_timeout
        self._buys[instance] = Purchase(instance, sold_sat, cap, reply, deadline)

    # --- the LSP's answers (worker, through cosign) --------------------------------------------

    def on_quote(self, record: store.ClientRecord, q: protocol.Quote) -> None:
        buy = self._buys.get(record.instance_id)
        if buy is None or buy.fee_sat is not None:
            log.info("factory %s: a quote we did not ask for", record.instance_id[:16])
            return
        try:
            if q.sold_sat != buy.sold_sat:
                raise CeremonyError(f"the quote is for {q.sold_sat} sat, we asked {buy.sold_sat}")
            if q.fee_sat > buy.max_fee_sat:
                raise CeremonyError(
                    f"the LSP asks {q.fee_sat} sat, above our limit of {buy.max_fee_sat}"
                )
            decoded = self._node.rpc.call("decode", {"string": q.invoice})
            self._check_invoice(record, q, decoded)
        except Exception as e:
            self._end(record.instance_id, e)
            return
        buy.fee_sat, buy.payment_hash = q.fee_sat, str(decoded["payment_hash"])
        threading.Thread(
            target=self._pay,
            args=(record.instance_id, q.invoice),
            name="superscalar-buy",
            daemon=True,
        ).start()

    def _check_invoice(
        self, record: store.ClientRecord, q: protocol.Quote, decoded: dict[str, Any]
    ) -> None:
        if not decoded.get("valid") or decoded.get("type") != "bolt11 invoice":
            raise CeremonyError("the quote's invoice is not a valid bolt11 invoice")
        if decoded.get("payee") != record.lsp_node_id:
            raise CeremonyError("the quote's invoice is not the LSP's")
        if msat(decoded.get("amount_msat", 0)) != q.fee_sat * 1000:
            raise CeremonyError("the quote's invoice is not for the quoted price")
        expiry = int(decoded.get("created_at", 0)) + int(decoded.get("expiry", 0))
        if expiry < time.time() + 60:
            raise CeremonyError("the quote's invoice expires too soon")

    def paying(self, instance: str, sold_sat: int, fee_sat: int) -> bool:
        """An OFFER of `sold_sat` at `fee_sat` is the purchase we are paying for."""
        buy = self._buys.get(instance)
        return (
            buy is not None
            and buy.payment_hash is not None
            and buy.offer is None
            and buy.sold_sat == sold_sat
            and buy.fee_sat == fee_sat
        )

    def offered(self, instance: str, offer: protocol.Offer) -> None:
        buy = self._buys.get(instance)
        if buy is not None and self.paying(instance, offer.sold_sat, offer.fee_sat):
            buy.offer = offer
            buy.channels_before = frozenset(self._node.channels())

    def on_refusal(self, instance: str, reason: str) -> None:
        """The LSP said no (no quote) before we paid anything."""
        buy = self._buys.get(instance)
        if buy is not None and buy.payment_hash is None:
            self._end(instance, CeremonyError(f"the LSP refused: {reason}"))

    def check_deadlines(self, now: float) -> None:
        for buy in list(self._buys.values()):
            if buy.payment_hash is None and now > buy.deadline:
                self._end(buy.instance, CeremonyError("the LSP did not quote in time"))

    def _end(self, instance: str, result: Exception | dict[str, Any]) -> None:
        buy = self._buys.pop(instance, None)
        if buy is None:
            return
        if isinstance(result, Exception):
            fail(buy.reply, result, "factory-buy failed")
        else:
            buy.reply.set_result(result)

    # --- paying (its own thread), then the answer (worker) -------------------------------------

    def payment_hash(self, instance: str) -> str | None:
        buy = self._buys.get(instance)
        return None if buy is None else buy.payment_hash

    def _pay(self, instance: str, bolt11: str) -> None:
        buy = self._buys.get(instance)
        payment_hash = None if buy is None else buy.payment_hash
        try:
            res = self._node.rpc.call("pay", {"bolt11": bolt11, "retry_for": PAY_RETRY_FOR})
            if res.get("status") != "complete":
                raise CeremonyError(f"payment {res.get('status')}")
        except Exception as e:
            reason = f"payment failed, nothing delivered, nothing paid: {why(e)}"
            # Only what our node shows: FAILED if every part failed back, else still in flight.
            seen = self._node.payment(payment_hash) if payment_hash else None

            def failed() -> None:
                if payment_hash and seen is Payment.FAILED:
                    self._record_payment(instance, payment_hash, Payment.FAILED)
                self._end(instance, CeremonyError(reason))

            self._submit(failed)
            return
        if payment_hash:
            self._submit(lambda: self._record_payment(instance, payment_hash, Payment.PAID))
        deadline = time.monotonic() + DELIVERY_WAIT
        while time.monotonic() < deadline and self._delivery(instance) is None:
            time.sleep(0.2)
        self._submit(lambda: self._delivered(instance))

    def _record_payment(self, instance: str, payment_hash: str, payment: Payment) -> None:
        """The end of our payment, on the purchase it paid for (recorded at its burn's
        signature): a purchase that cost us nothing is never burnt (`check_burn_publish`)."""
        record = self._records.get(instance)
        if not isinstance(record, store.ClientRecord):
            return
        sales = tuple(
            dataclasses.replace(e, payment=payment)
            if e.payment_hash == payment_hash and e.buyer == record.client_index
            else e
            for e in record.sales
        )
        if sales != record.sales:
            self._records.persist(record.replace(sales=sales))
            log.info("factory %s: our payment %s: %s", instance[:16], payment_hash, payment)

    def _delivery(self, instance: str) -> dict[str, Any] | None:
        """What we hold of the liquidity we paid for: the sale fully signed, or the new on-chain
        channel; None while it is not there."""
        buy, record = self._buys.get(instance), self._records.get(instance)
        if buy is None or buy.offer is None or not isinstance(record, store.ClientRecord):
            return None
        base = {"sold_sat": buy.sold_sat, "fee_sat": buy.fee_sat, "payment_hash": buy.payment_hash}
        if buy.offer.kind is protocol.OfferKind.FACTORY:
            entry = next((e for e in record.sales if e.session == buy.offer.session.hex()), None)
            if entry is None or not entry.complete:
                return None
            channel = next(
                (
                    cid
                    for cid, ch in self._node.channels().items()
                    if ch.get("funding_txid") == entry.sale_txid
                ),
                None,
            )
            return {**base, "kind": "factory", "sale_txid": entry.sale_txid, "channel_id": channel}
        for cid, ch in self._node.channels().items():
            if (
                cid not in buy.channels_before
                and ch.get("peer_id") == record.lsp_node_id
                and msat(ch.get("total_msat", 0)) == buy.sold_sat * 1000
            ):
                return {**base, "kind": "onchain", "channel_id": cid}
        return None

    def _delivered(self, instance: str) -> None:
        result = self._delivery(instance)
        if result is None:
            self._end(
                instance,
                CeremonyError("paid, but the delivered channel is not (yet) in our hands"),
            )
            return
        record = self._records.get(instance)
        if result["kind"] == "onchain" and isinstance(record, store.ClientRecord):
            channels = (*record.jit_channels, str(result["channel_id"]))
            self._records.persist(record.replace(jit_channels=channels))
        log.info("factory %s: bought %s", instance[:16], result)
        self._end(instance, result)
