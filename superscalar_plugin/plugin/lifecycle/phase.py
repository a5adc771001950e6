"""A factory's life as the LSP and its clients see it: its phase, and the deadlines of its end.

Owns: nothing (pure functions of a record, the height and the configuration). Used by `status`
(what factory-status shows) and `winddown` (what the LSP does when).
"""

from __future__ import annotations

from typing import Any

from ...engine import store
from ..lightningd.records import LIVE, topology, txid_of

CLTV_DELTA_GUESS = 34  # blocks: a move's HTLC crosses the LSP (lightningd's default delta)
# blocks of the move's final CLTV beyond the EWT: lightningd's cltv-final (18) and our slack
MOVE_FINAL_SLACK = 24


def pending(record: store.LspRecord) -> list[int]:
    """Clients that have not handed over their key yet."""
    return [i for i, c in enumerate(record.clients) if not c.handed_key]


def dying_from(record: store.LspRecord, dying_blocks: int) -> int:
    return record.timeout_height - dying_blocks


def last_move_height(record: store.LspRecord, exit_margin: int) -> int:
    """The last height a move can start: the move's HTLC must expire before the old factory's
    T - EWT (the HTLC rules), after the new factory's EWT, and the client starts its own exit
    at T - EWT - margin."""
    ewt = topology(record).ewt
    return record.timeout_height - 2 * ewt - max(exit_margin, MOVE_FINAL_SLACK) - CLTV_DELTA_GUESS


def phase(record: store.LspRecord, height: int, dying_blocks: int) -> str:
    if record.state is store.LspState.CLOSED:
        return "closed"
    if record.handover_tx:
        return "closing"
    if record.exit is not None:
        return "exiting"
    if record.wind_down is store.WindDown.CLOSE:
        return "closing"
    if record.successors or record.wind_down is store.WindDown.MIGRATE:
        return "migrating"
    return "dying" if height >= dying_from(record, dying_blocks) else "active"


def client_phase(record: store.ClientRecord, height: int, dying_blocks: int) -> str:
    """A client's own phase of a factory, as factory-status and the metrics show it."""
    if record.state is store.ClientState.HANDED_OVER:
        return "handed_over"
    if record.exit is not None:
        return "exiting"
    if record.state not in LIVE:
        return str(record.state.value)
    if record.moving_to is not None:
        return "moving"
    return "dying" if height >= record.timeout_height - dying_blocks else "active"


def factory_view(
    record: store.LspRecord, height: int, dying_blocks: int, margin: int
) -> dict[str, Any]:
    """What factory-status shows of a factory's end."""
    inside = pending(record)
    view: dict[str, Any] = {
        "phase": phase(record, height, dying_blocks),
        "dying_from_height": dying_from(record, dying_blocks),
        "last_move_height": last_move_height(record, margin),
        "clients_inside": len(inside),
        "successors": list(record.successors),
    }
    if record.handover_tx:
        view["handover_txid"] = txid_of(record.handover_tx)
    if inside and height > last_move_height(record, margin):
        view["recovery"] = (
            f"{len(inside)} client(s) never handed over: they exit on their own, and the LSP"
            f" takes the rest through the timeout at {record.timeout_height}"
        )
    return view


def client_view(entry: store.ClientEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"handed_over": entry.handed_key is not None}
    if entry.moved_to:
        out["moved_to"] = entry.moved_to
    if entry.refusal:
        out["refusal"] = entry.refusal
    return out
