"""The LSP's paid orders without lightningd: a quote's HTLC is held until the sale is over, then
resolved with our preimage (delivered) or failed (not); partial payments sell nothing; lightningd's
replays after a restart get the same answer; every other HTLC is none of our business."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.sale_store import OrderState
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.node import Node
from superscalar_plugin.plugin.lightningd.peers import Peers
from superscalar_plugin.plugin.lightningd.records import Records
from superscalar_plugin.plugin.sales.payments import QUOTE_FINAL_CLTV, Payments

from adversarial.records import lsp_record

HEIGHT = 500


class FakeRpc:
    def __init__(self) -> None:
        self.datastore: dict[str, str] = {}
        self.sent: list[dict[str, Any]] = []

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        p = payload or {}
        if method == "invoice":
            digest = hashlib.sha256(bytes.fromhex(p["preimage"])).hexdigest()
            assert p["cltv"] == QUOTE_FINAL_CLTV
            secret = hashlib.sha256(b"secret" + bytes.fromhex(digest)).hexdigest()
            return {
                "payment_hash": digest,
                "bolt11": f"lnbcrt-{digest[:8]}",
                "payment_secret": secret,
            }
        if method == "datastore":
            self.datastore["/".join(p["key"])] = p["string"]
            return {}
        if method == "listdatastore":
            return {"datastore": []}
        if method == "sendcustommsg":
            self.sent.append(p)
            return {}
        raise AssertionError(f"unexpected {method}")


class Answer:
    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None

    def set_result(self, result: Any) -> None:
        assert self.result is None, "answered twice"
        self.result = result

    def set_exception(self, exc: Exception) -> None:
        raise AssertionError(exc)


class Harness:
    def __init__(self) -> None:
        self.rpc = FakeRpc()
        self.node = Node(self.rpc, Config(ceremony_timeout=10))
        self.node.raise_height(HEIGHT)
        self.records = Records(self.rpc)
        self.jobs: list[Callable[[], None]] = []
        self.payments = Payments(self.node, self.records, Peers(self.rpc), self.jobs.append)
        self.sales: list[tuple[Callable[[dict[str, Any]], None], Callable[[Exception], None]]] = []
        self.payments.start_sale = lambda i, c, s, p, done, failed: self.sales.append(
            (done, failed)
        )
        record = lsp_record()
        self.instance = record.instance_id
        self.records.persist(record)

    def run_jobs(self) -> None:
        while self.jobs:
            self.jobs.pop(0)()

    def quote(self, sat: int = 50_000) -> str:
        record = self.records.get(self.instance)
        assert isinstance(record, store.LspRecord)
        self.payments.quote(record, 0, protocol.Buy(bytes.fromhex(self.instance), sat))
        return self.orders()[-1].payment_hash

    def orders(self) -> tuple[Any, ...]:
        record = self.records.get(self.instance)
        assert isinstance(record, store.LspRecord)
        return record.orders

    def htlc(
        self,
        payment_hash: str,
        amount_msat: int,
        final: bool = True,
        *,
        total_msat: int | None = 1_500_000,
        secret: str | None = None,
        cltv: int = HEIGHT + QUOTE_FINAL_CLTV,
    ) -> Answer:
        """An HTLC as the hook gets it: by default one part of a 1,500,000-msat payment with
        the order's payment_secret, leaving exactly the invoice's final CLTV."""
        answer = Answer()
        order = next((o for o in self.orders() if o.payment_hash == payment_hash), None)
        onion: dict[str, Any] = {} if final else {"short_channel_id": "1x1x1"}
        onion["payment_secret"] = secret or (order.payment_secret if order else "00" * 32)
        if total_msat is not None:
            onion["total_msat"] = total_msat
        htlc = {"payment_hash": payment_hash, "amount_msat": amount_msat, "cltv_expiry": cltv}
        if not self.payments.claim(htlc, onion, answer):
            answer.set_result({"result": "continue"})
        return answer


def test_a_paid_quote_is_held_until_delivered_then_settled_with_our_preimage() -> None:
    h = Harness()
    ph = h.quote()
    [order] = h.orders()
    assert order.state is OrderState.QUOTED and order.fee_sat == 1500
    assert h.rpc.sent  # the QUOTE went out after the order was persisted
    assert json.loads(h.rpc.datastore[f"superscalar/factories/{h.instance}"])["orders"]
    part = h.htlc(ph, 1_500_000)
    h.run_jobs()
    assert part.result is None and len(h.sales) == 1  # held; the sale runs
    assert h.orders()[0].state is OrderState.PAID
    h.sales[0][0]({"kind": "factory", "sale_txid": "ab" * 32})
    assert part.result == {"result": "resolve", "payment_key": order.preimage}
    assert h.orders()[0].state is OrderState.DELIVERED
    # A replay (lightningd restarted) gets the same answer; a stranger's HTLC is not ours.
    assert h.htlc(ph, 1_500_000).result == part.result
    assert h.htlc("cd" * 32, 1_500_000).result == {"result": "continue"}


def test_a_failed_sale_fails_the_payment_and_a_partial_one_sells_nothing() -> None:
    h = Harness()
    ph = h.quote()
    first = h.htlc(ph, 700_000)  # one part of a multi-part payment: not the price yet
    h.run_jobs()
    assert first.result is None and h.sales == []
    second = h.htlc(ph, 800_000)
    h.run_jobs()
    assert len(h.sales) == 1
    h.sales[0][1](RuntimeError("a co-signer refused"))
    assert first.result is not None and first.result["result"] == "fail"
    assert second.result is not None and second.result["result"] == "fail"
    assert h.orders()[0].state is OrderState.FAILED
    assert h.htlc(ph, 1_500_000).result["result"] == "fail"  # type: ignore[index]


def test_parts_that_never_reach_the_price_are_failed_back() -> None:
    h = Harness()
    ph = h.quote()
    part = h.htlc(ph, 1_000)
    h.run_jobs()
    h.payments.check_deadlines(10**12)  # long after the ceremony timeout
    assert part.result is not None and part.result["result"] == "fail" and h.sales == []


def test_a_restart_during_the_sale_fails_the_replayed_payment() -> None:
    h = Harness()
    ph = h.quote()
    h.htlc(ph, 1_500_000)
    h.run_jobs()
    assert h.orders()[0].state is OrderState.PAID
    # The LSP restarts: the sale's nonces are gone.
    again = Payments(h.node, h.records, Peers(h.rpc), h.jobs.append)
    record = h.records.get(h.instance)
    assert isinstance(record, store.LspRecord)
    again.resume(record)
    again.refresh()
    h.payments = again
    assert h.orders()[0].state is OrderState.FAILED
    assert h.htlc(ph, 1_500_000).result["result"] == "fail"  # type: ignore[index]


def test_a_forward_with_a_quotes_hash_is_refused() -> None:
    h = Harness()
    ph = h.quote()
    assert h.htlc(ph, 1_500_000, final=False).result["result"] == "fail"  # type: ignore[index]
    assert h.sales == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"cltv": HEIGHT + QUOTE_FINAL_CLTV - 1}, "cltv_expiry"),  # too close to expiry
        ({"secret": "ee" * 32}, "payment_secret"),  # not the invoice's: a probe or a stranger
        ({"total_msat": None}, "total_msat"),  # a legacy payload without a total
        ({"total_msat": 1_000}, "total_msat"),  # a total below the price: a cheap "payment"
        ({"total_msat": 3_000_000}, "total_msat"),  # not what the invoice asked
    ],
)
def test_a_quote_htlc_is_checked_like_an_invoice_payment(change: dict[str, Any], why: str) -> None:
    """lightningd checks these for an invoice it settles; we settle the held HTLC ourselves, so
    we check them: a bad one is failed at once, never held, and sells nothing."""
    h = Harness()
    ph = h.quote()
    bad = h.htlc(ph, 1_500_000, **change)
    h.run_jobs()
    assert bad.result is not None and bad.result["result"] == "fail"
    assert h.sales == [] and h.orders()[0].state is OrderState.QUOTED
    good = h.htlc(ph, 1_500_000)  # the honest payment still goes through
    h.run_jobs()
    assert good.result is None and len(h.sales) == 1


def test_an_order_written_before_the_checks_has_no_secret_and_holds_nothing() -> None:
    h = Harness()
    ph = h.quote()
    record = h.records.get(h.instance)
    assert isinstance(record, store.LspRecord)
    old = tuple(dataclasses.replace(o, payment_secret=None) for o in record.orders)
    h.records.persist(record.replace(orders=old))
    h.payments.refresh()
    answer = h.htlc(ph, 1_500_000, secret="aa" * 32)
    h.run_jobs()
    assert answer.result is not None and answer.result["result"] == "fail" and h.sales == []
