"""What makes a superseded DW state harmless: the client publishes its newest path as soon as the
tree starts to go on chain (chain thread, from `onchain`)."""

from __future__ import annotations

from ...engine import store
from ..lightningd.records import txid_of


def superseded_race(record: store.Record) -> str | None:
    """Why a client must publish its path now: a tx of it confirmed (someone is unrolling the
    tree) while an older version of one of our state nodes exists (we signed a DW update). Only
    our newest state, whose relative lock is shorter, confirming first makes the old one
    harmless; so we publish ours as soon as each is valid (the exit)."""
    if not isinstance(record, store.ClientRecord) or record.exit is not None:
        return None
    if not any(e.state > 0 for e in record.path):
        return None  # never updated: no older state exists to race
    confirmed = {t for t, _ in record.confirmed}
    seen = [e.node for e in record.path if txid_of(e.raw) in confirmed]
    if not seen:
        return None
    return f"tree node {seen[-1]} is on chain after an update: our newest state must confirm first"


def update_txids(record: store.ClientRecord) -> set[str]:
    """The txs of an update we signed but do not hold complete (the moved node, everything below
    it): watched, so that we adopt the new state if the LSP publishes it."""
    out = set()
    for u in (record.update, *record.superseded):
        if u is not None:
            out |= {txid_of(e.raw) for e in (*u.below, *([u.moved] if u.moved else []))}
    return out
