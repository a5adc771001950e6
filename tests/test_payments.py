"""The LSP's paid orders without lightningd: a quote's HTLC is held until the sale is over, then
resolved with our preimage (delivered) or failed (not); partial payments sell nothing; lightningd's
replays after a restart get the same answer; every other HTLC is none of our business."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.sale_store import OrderState
from superscalar_plugin.plugin.config import Config
from superscalar_plugin.plugin.node import Node
from superscalar_plugin.plugin.payments import Payments
from superscalar_plugin.plugin.peers import Peers
from superscalar_plugin.plugin.records import Records

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
            return {"payment_hash": digest, "bolt11": f"lnbcrt-{digest[:8]}"}
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

    def htlc(self, payment_hash: str, amount_msat: int, final: bool = True) -> Answer:
        answer = Answer()
        onion: dict[str, Any] = {} if final else {"short_channel_id": "1x1x1"}
        htlc = {"payment_hash": payment_hash, "amount_msat": amount_msat}
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
