"""Events other plugins and an operator's tools can follow without polling: one function per
event, called by the role where it happens, sent as a Core Lightning custom notification.

Each topic is declared in the manifest (`TOPICS`); we send `{"<topic>": {...fields}}` (keyed by
its topic, like lightningd's own notifications) and a subscriber of lightningd v26 receives that
with `origin: "superscalar"` (pyln-client: keyword arguments `<topic>` and `origin`; checked on a
real node by tests/test_lightningd_operator.py). In-process listeners (the metrics) see every event
too. Owns: the sink (set once by main.py to pyln's `notify`) and the listeners. No pyln here.
An event never raises into the role that emitted it: a failing sink or listener is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ...engine import store

log = logging.getLogger("superscalar")

FACTORY_CREATED = "superscalar_factory_created"
FACTORY_FUNDED = "superscalar_factory_funded"
CLIENT_EXITED = "superscalar_client_exited"
SALE = "superscalar_sale"
MIGRATION_STEP = "superscalar_migration_step"
HANDOVER = "superscalar_handover"
SWEEP = "superscalar_sweep"
COMPROMISE = "superscalar_compromise"
STATE_UPDATE = "superscalar_state_update"
TOPICS = (
    FACTORY_CREATED,
    FACTORY_FUNDED,
    CLIENT_EXITED,
    SALE,
    MIGRATION_STEP,
    HANDOVER,
    SWEEP,
    COMPROMISE,
    STATE_UPDATE,
)

Sink = Callable[[str, dict[str, Any]], None]

_lock = threading.Lock()
_sink: Sink | None = None
_listeners: list[Sink] = []


def set_sink(sink: Sink | None) -> None:
    """Where notifications go (main.py: pyln's `notify`); None: nowhere."""
    global _sink
    with _lock:
        _sink = sink


def listen(listener: Sink) -> None:
    with _lock:
        _listeners.append(listener)


def unlisten(listener: Sink) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def emit(topic: str, fields: dict[str, Any]) -> None:
    if topic not in TOPICS:
        raise ValueError(f"undeclared event topic {topic}")
    with _lock:
        targets = ([_sink] if _sink is not None else []) + list(_listeners)
    for target in targets:
        try:
            target(topic, fields)
        except Exception as e:  # an event must never break the duty that emitted it
            log.info("event %s not delivered: %r", topic, e)


# --- one function per event --------------------------------------------------------------------


def factory_created(
    instance: str, clients: list[str], funding_txid: str | None, timings: dict[str, float]
) -> None:
    """LSP: the funding of a new factory was broadcast (factory-create returns)."""
    emit(
        FACTORY_CREATED,
        {
            "instance": instance,
            "clients": clients,
            "funding_txid": funding_txid,
            "timings": timings,
        },
    )


def factory_funded(instance: str, role: str, funding_txid: str | None, height: int) -> None:
    """A factory's funding confirmed (LSP or client)."""
    emit(
        FACTORY_FUNDED,
        {"instance": instance, "role": role, "funding_txid": funding_txid, "height": height},
    )


def client_exited(instance: str, role: str, clients: list[int], reason: str, height: int) -> None:
    """A unilateral exit started (or widened) for these clients' paths."""
    emit(
        CLIENT_EXITED,
        {
            "instance": instance,
            "role": role,
            "clients": clients,
            "reason": reason,
            "height": height,
        },
    )


def sale(instance: str, client: int, sold_sat: int, fee_sat: int, kind: str, ref: str) -> None:
    """LSP: inbound liquidity delivered (`kind` "factory": a sale tx; "onchain": a channel)."""
    emit(
        SALE,
        {
            "instance": instance,
            "client": client,
            "sold_sat": sold_sat,
            "fee_sat": fee_sat,
            "kind": kind,
            "ref": ref,
        },
    )


def migration_step(instance: str, step: str, height: int, **detail: Any) -> None:
    """LSP: a wind-down step (`started`, `successor`, `client_moved`, `refused`...)."""
    emit(MIGRATION_STEP, {"instance": instance, "step": step, "height": height, **detail})


def handover(instance: str, txid: str, height: int) -> None:
    """LSP: every key held; the funding output spent by key path to our wallet."""
    emit(HANDOVER, {"instance": instance, "txid": txid, "height": height})


def sweep(instance: str, outpoint: str, txid: str, height: int) -> None:
    """LSP: an output of the tree swept to our wallet through its timeout."""
    emit(SWEEP, {"instance": instance, "outpoint": outpoint, "txid": txid, "height": height})


def compromise(instance: str, role: str, why: str) -> None:
    """The funding on chain is not what the tree was signed against."""
    emit(COMPROMISE, {"instance": instance, "role": role, "reason": why})


def factory_update(instance: str, step: str, node: int, clients: list[int]) -> None:
    """LSP: a DW state update of `node` (`asked`, `signed`, `stored`, `abandoned`)."""
    emit(STATE_UPDATE, {"instance": instance, "step": step, "node": node, "clients": clients})


def role_of(record: store.Record) -> str:
    return "lsp" if isinstance(record, store.LspRecord) else "client"
