"""How a client's balance crosses from its old channels into its new one during a DW update: one
payment to itself (old channels -> the LSP -> the new channel) whose HTLCs stay pending, held by
our own `htlc_accepted` hook, while the new state is signed, and settle only once we hold it.

Why not `push_msat`: lightningd v26.06.6 aborts (`channel_record_open`: "Unable to sub our_msat -
push") when a zero-conf channel's funding confirms while the fundee holds less than it was pushed
at the opening, and a factory leaf confirms only on an exit, long after the client spent. Seen on
a real node; README, "Core Lightning facts".

Why it is safe either way: until the client settles, its money is in the old state (its HTLCs
in the old channels time out back to it) AND in the new state (the HTLCs in the new channel pay
it with a preimage only it knows). It settles (reveals the preimage) only once it holds the new
state fully signed; whichever state reaches the chain, it gets its balance.

Owns: the HTLCs held (payment hash -> the hook's requests; memory only: lightningd replays a
pending HTLC at start-up and `hold` answers it from the record). Hook thread and worker; a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ...engine import store
from ...engine.errors import CeremonyError
from ..lifecycle.move import forward_fee_msat, movable_msat
from ..lightningd.guards import msat
from ..lightningd.node import Node
from ..lightningd.runtime import Reply

log = logging.getLogger("superscalar")

# BOLT 4 incorrect_or_unknown_payment_details (PERM|15): a swap we will not take.
FAIL = {"result": "fail", "failure_message": "400f"}


@dataclass(frozen=True)
class Part:
    """One part of the swap: out through one old channel."""

    old_scid: str  # our alias (or scid) of the old channel: the first hop
    amount_msat: int  # what reaches the new channel
    fee_msat: int  # the LSP's forwarding fee on it


def swap_parts(
    old: list[dict[str, Any]], receivable_msat: int, base_msat: int, ppm: int
) -> list[Part]:
    """A part per old channel with something spendable, within what the new channel can take."""
    parts = []
    room = receivable_msat
    for ch in old:
        amount = movable_msat(msat(ch.get("spendable_msat", 0)), room, base_msat, ppm)
        if amount <= 0:
            continue
        scid = ch.get("short_channel_id") or (ch.get("alias") or {}).get("local")
        parts.append(Part(str(scid), amount, forward_fee_msat(amount, base_msat, ppm)))
        room -= amount
    return parts


class SwapHolder:
    """The swap HTLCs our hook holds until the update is stored (or dropped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, list[tuple[Reply, int]]] = {}
        self._pending: set[str] = set()
        self._settled: set[str] = set()

    def track(self, records: list[store.Record]) -> None:
        """Which payment hashes are ours, from the records (off the hot path, after each change):
        pending (an update, or a superseded one we signed, still unresolved) or settled."""
        pending: set[str] = set()
        settled: set[str] = set()
        for r in records:
            if isinstance(r, store.ClientRecord):
                for u in (r.update, *r.superseded):
                    if u is not None:
                        pending.update(u.swap_hashes)
                settled.update(r.swaps_settled)
        with self._lock:
            self._pending, self._settled = pending, settled

    def hold(self, htlc: dict[str, Any], request: Reply) -> bool:
        """The hook (set lookups only): an HTLC of one of our swaps is held (pending update), or
        answered at once (settled: a replay after our restart). False: not a swap of ours."""
        payment_hash = str(htlc.get("payment_hash", ""))
        with self._lock:
            if payment_hash in self._pending:
                self._held.setdefault(payment_hash, []).append(
                    (request, msat(htlc.get("amount_msat", 0)))
                )
                return True
            settled = payment_hash in self._settled
        if settled:
            request.set_result({"result": "continue"})
        return settled

    def held_msat(self, hashes: tuple[str, ...]) -> int:
        with self._lock:
            return sum(amount for h in hashes for _, amount in self._held.get(h, []))

    def settle(self, hashes: tuple[str, ...]) -> None:
        """The new state is ours: lightningd settles them with our invoices' preimages."""
        for h in hashes:
            self._answer(h, {"result": "continue"})

    def fail(self, hashes: tuple[str, ...]) -> None:
        """No new state can exist: our HTLCs in the old channels come back to us."""
        for h in hashes:
            self._answer(h, FAIL)

    def _answer(self, payment_hash: str, result: dict[str, Any]) -> None:
        with self._lock:
            held = self._held.pop(payment_hash, [])
        for request, _ in held:
            request.set_result(result)
        if held:
            log.info("swap %s: %d HTLCs %s", payment_hash[:16], len(held), result["result"])


def wait_fees(node: Node, channel_id: str, patience: float) -> dict[str, Any]:
    """Our new channel once it is normal and the LSP's fees on it are known."""
    deadline = time.monotonic() + patience
    while True:
        ch = node.channels().get(channel_id) or {}
        if ch.get("state") == "CHANNELD_NORMAL" and (ch.get("updates") or {}).get("remote"):
            return ch
        if time.monotonic() > deadline:
            raise CeremonyError("the new channel is not open with the LSP's fees known")
        time.sleep(0.3)


def wait_settled(node: Node, channel_id: str, patience: float) -> None:
    """Until our new channel carries no HTLC (our payments to ourselves settled), or patience."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if not (node.channels().get(channel_id) or {}).get("htlcs"):
                return
        except Exception:  # listed again shortly
            pass
        time.sleep(0.2)
