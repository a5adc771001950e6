"""The operator's figures, computed from the records alone: pure (no RPC, no pyln, no clock), so
a scrape never waits on lightningd and a test gives records and reads numbers.

Owns: nothing. Used by `metrics` (the `factory-metrics` RPC and the Prometheus endpoint), which
adds what records do not hold (peers rate-limited, phase timings).

Names follow Core Lightning's Prometheus plugin: `superscalar_<what>[_<unit>][_total]`, labels
for the dimensions (role, phase, instance, kind, reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...engine import store
from ...engine.sale_store import OrderState
from ..lifecycle.phase import client_phase, pending, phase
from ..lightningd.records import is_compromised, txid_of
from .status import stock_view

GAUGE = "gauge"
COUNTER = "counter"


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Figure:
    name: str
    kind: str  # GAUGE or COUNTER (a counter's name carries no `_total`: the library adds it)
    help: str
    label_names: tuple[str, ...] = ()
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, *labels: str) -> None:
        self.samples.append(Sample(tuple(zip(self.label_names, labels, strict=True)), value))

    def bump(self, value: float, *labels: str) -> None:
        """Add to the sample with these labels (created at 0)."""
        key = tuple(zip(self.label_names, labels, strict=True))
        for i, s in enumerate(self.samples):
            if s.labels == key:
                self.samples[i] = Sample(key, s.value + value)
                return
        self.samples.append(Sample(key, value))


_HEX = re.compile(r"\b[0-9a-f]{16,}\b")
_NUMBER = re.compile(r"\b\d+\b")


def reason_label(text: str) -> str:
    """A refusal's text as a label of bounded variety: ids and numbers out, 60 characters."""
    short = _NUMBER.sub("N", _HEX.sub("<id>", text.lower())).split(";")[0].strip()
    return short[:60] or "unknown"


def _phase(record: store.Record, height: int, dying_blocks: int) -> str:
    if is_compromised(record):
        return "compromised"
    if isinstance(record, store.LspRecord):
        if record.state is store.LspState.FUNDED or record.state is store.LspState.CLOSED:
            return phase(record, height, dying_blocks)
        return str(record.state.value)
    return client_phase(record, height, dying_blocks)


def _factory_figures(records: list[store.Record], height: int, dying: int) -> list[Figure]:
    by_phase = Figure(
        "superscalar_factories", GAUGE, "Factories by role and phase", ("role", "phase")
    )
    inside = Figure(
        "superscalar_factory_clients_inside",
        GAUGE,
        "LSP: clients still inside a live factory (not handed over, not exited)",
        ("instance",),
    )
    channel_sat = Figure(
        "superscalar_factory_channel_sat",
        GAUGE,
        "LSP: sats in a live factory's client channels (capacity)",
        ("instance",),
    )
    stock_sat = Figure(
        "superscalar_factory_stock_sat",
        GAUGE,
        "LSP: liquidity stock left in a live factory's leaves (sat)",
        ("instance",),
    )
    for r in records:
        role = "lsp" if isinstance(r, store.LspRecord) else "client"
        by_phase.bump(1, role, _phase(r, height, dying))
        if isinstance(r, store.LspRecord) and r.state is store.LspState.FUNDED:
            exited = set(r.exit.clients) if r.exit is not None else set()
            left = [i for i in pending(r) if i not in exited]
            inside.add(len(left), r.instance_id)
            channel_sat.add(sum(r.clients[i].channel_sat for i in left), r.instance_id)
            stock_sat.add(sum(s["stock_left_sat"] for s in stock_view(r)), r.instance_id)
    return [by_phase, inside, channel_sat, stock_sat]


def _sales_figures(lsps: list[store.LspRecord]) -> list[Figure]:
    sales = Figure("superscalar_sales", COUNTER, "LSP: liquidity sales delivered", ("kind",))
    sold = Figure(
        "superscalar_sales_sold_sat", COUNTER, "LSP: inbound liquidity sold (sat)", ("kind",)
    )
    fees = Figure(
        "superscalar_sales_fees_sat",
        COUNTER,
        "LSP: fees earned on liquidity sales (sat)",
        ("kind",),
    )
    fallbacks = Figure(
        "superscalar_onchain_fallbacks",
        COUNTER,
        "LSP: on-chain channels opened instead of a sale from the stock, by reason",
        ("reason",),
    )
    for kind in ("factory", "onchain"):
        for f in (sales, sold, fees):
            f.bump(0, kind)
    for r in lsps:
        for e in r.sales:
            if e.complete:
                sales.bump(1, "factory")
                sold.bump(e.sold_sat, "factory")
                fees.bump(e.price_sat, "factory")
        for j in r.jit:
            sales.bump(1, "onchain")
            sold.bump(j.sat, "onchain")
            fallbacks.bump(1, reason_label(j.reason))
        for o in r.orders:  # the price of an on-chain fallback is its paid order's fee
            if o.state is OrderState.DELIVERED and (o.result or "").startswith("onchain"):
                fees.bump(o.fee_sat, "onchain")
    return [sales, sold, fees, fallbacks]


def _chain_figures(records: list[store.Record]) -> list[Figure]:
    exits = Figure(
        "superscalar_exits_in_flight",
        GAUGE,
        "Unilateral exits started and not done, by role",
        ("role",),
    )
    exit_fees = Figure(
        "superscalar_exit_fees_sat",
        COUNTER,
        "Fees our wallet spent in CPFP children to get exits confirmed (sat)",
        ("role",),
    )
    sweeps = Figure(
        "superscalar_sweeps",
        COUNTER,
        "LSP: timeout sweeps of tree outputs, by status",
        ("status",),
    )
    for role in ("lsp", "client"):
        exits.bump(0, role)
        exit_fees.bump(0, role)
    for status in ("sent", "confirmed"):
        sweeps.bump(0, status)
    for r in records:
        role = "lsp" if isinstance(r, store.LspRecord) else "client"
        if r.exit is not None:
            exits.bump(0 if r.exit.done else 1, role)
            exit_fees.bump(sum(fee for _, fee in r.exit.bump_fees), role)
        if isinstance(r, store.LspRecord):
            confirmed = {t for t, _ in r.confirmed}
            for _, raw in r.sweeps:
                sweeps.bump(1, "confirmed" if txid_of(raw) in confirmed else "sent")
    return [exits, exit_fees, sweeps]


def _refusal_figures(records: list[store.Record]) -> list[Figure]:
    refusals = Figure(
        "superscalar_refusals",
        COUNTER,
        "Refusals on record: creations aborted, moves a client refused, orders failed",
        ("kind", "reason"),
    )
    for r in records:
        if isinstance(r, store.LspRecord):
            if r.state is store.LspState.ABORTED and r.error:
                refusals.bump(1, "creation", reason_label(r.error))
            for c in r.clients:
                if c.refusal:
                    refusals.bump(1, "move", reason_label(c.refusal))
            for o in r.orders:
                if o.state is OrderState.FAILED:
                    refusals.bump(1, "order", reason_label(o.error or "failed"))
        elif r.state is store.ClientState.ABORTED and r.error:
            refusals.bump(1, "join", reason_label(r.error))
    return [refusals]


def figures(records: list[store.Record], height: int, dying_blocks: int) -> list[Figure]:
    """Every figure the records give, at this height."""
    lsps = [r for r in records if isinstance(r, store.LspRecord)]
    return [
        *_factory_figures(records, height, dying_blocks),
        *_sales_figures(lsps),
        *_chain_figures(records),
        *_refusal_figures(records),
    ]
