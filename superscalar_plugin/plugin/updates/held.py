"""A client's DW updates as its record and its node show them: pure helpers of `updates.client`.

Owns: nothing. May call: nothing (values in, values out).
"""

from __future__ import annotations

from typing import Any

from ...engine import store
from ...engine.ceremony import SignedNodeTx
from ...engine.solvency import HeldChannel
from ...engine.tree import UnsignedNodeTx
from ...engine.tx import Tx
from ...engine.update_store import ClientUpdate
from ..lightningd.guards import msat
from ..lightningd.records import txid_of


def entry_of(s: SignedNodeTx, state: int) -> store.PathEntry:
    return store.PathEntry(
        s.node, state, s.raw().hex(), s.unsigned.spent_amount, s.unsigned.spent_script.hex()
    )


def unsigned_tx(e: store.PathEntry) -> UnsignedNodeTx:
    tx = Tx.deserialize(bytes.fromhex(e.raw))
    return UnsignedNodeTx(e.node, tx, e.spent_amount, bytes.fromhex(e.spent_script))


def unsigned_dropped(record: store.ClientRecord) -> store.ClientRecord:
    """Our record without the update we had not signed: the old channels are ours again, unless
    an earlier update we did sign may still be held by the LSP (it becomes the pending one, and
    they stay frozen)."""
    if record.superseded:
        return record.replace(update=record.superseded[-1], superseded=record.superseded[:-1])
    return record.replace(update=None)


def own_channels(record: store.ClientRecord, channels: dict[str, dict[str, Any]]) -> list[str]:
    """Our channels in this factory, as our node lists them: our leaf's and our complete sales'."""
    fundings = {txid_of(record.path[-1].raw)} if record.path else set()
    fundings |= {e.sale_txid for e in record.sales if e.buyer == record.client_index and e.complete}
    return sorted(
        cid
        for cid, ch in channels.items()
        if ch.get("peer_id") == record.lsp_node_id and ch.get("funding_txid") in fundings
    )


def still_superseded(record: store.ClientRecord, stored: ClientUpdate) -> tuple[ClientUpdate, ...]:
    """Our superseded updates once `stored` is our factory's state: less `stored` itself and
    every one of a node below its moved node, which hangs under that node's old state and can
    never confirm against the new one (no longer held: red-team finding, round 13)."""
    order = [e.node for e in record.path]
    below = set(order[order.index(stored.node) + 1 :]) if stored.node in order else set()
    return tuple(
        u for u in record.superseded if u.session != stored.session and u.node not in below
    )


def held(channels: dict[str, dict[str, Any]], cid: str) -> HeldChannel:
    ch = channels.get(cid) or {}
    return HeldChannel(
        cid, str(ch.get("state", "")), msat(ch.get("to_us_msat", 0)), len(ch.get("htlcs") or ())
    )
