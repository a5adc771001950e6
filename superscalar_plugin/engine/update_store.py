"""What a DW state update keeps in a record while it runs: the LSP's `LspUpdate` (per client its
old channels, what it pushes, its new channel) and the client's `ClientUpdate` (what it agreed
to), each read back from JSON field by field and checked.

Never a secret nonce: the ceremony's nonces live in memory only, so an update interrupted by a
restart before every signature is aborted and started again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import InvalidRecord, StoreError
from .jsonfields import get, hexfield
from .taproot import DUST_P2TR
from .tree import Topology


@dataclass(frozen=True)
class PathEntry:
    """A signed tree tx as a record keeps it (a client's path, the LSP's tree, an update's)."""

    node: int
    state: int
    raw: str  # signed tx hex (unsigned only for an update's moved node awaiting its signature)
    spent_amount: int
    spent_script: str


def path_from(d: dict[str, Any], key: str) -> tuple[PathEntry, ...]:
    out = []
    for e in get(d, key, list):
        if not isinstance(e, dict):
            raise StoreError(f"{key} entry must be an object")
        out.append(
            PathEntry(
                node=get(e, "node", int),
                state=get(e, "state", int),
                raw=hexfield(e, "raw"),
                spent_amount=get(e, "spent_amount", int),
                spent_script=hexfield(e, "spent_script"),
            )
        )
    return tuple(out)


class UpdateStage(StrEnum):
    FREEZING = "freezing"  # UPDATE sent; waiting for every client's READY
    SIGNING = "signing"  # new channels opened and completed; the nodes below the moved one
    BELOW = "below"  # those signed, every client storing them; then the moved node itself
    SIGNED = "signed"  # every signature aggregated (the new state exists): waiting for STORED


@dataclass(frozen=True)
class UpdateClient:
    """The LSP's view of one client of an update."""

    client: int
    old_channels: tuple[str, ...]  # the channels it replaces: the leaf's and the client's sales
    move_msat: int  # the client's balance in them, frozen: pushed to it in the new channel
    channel_sat: int  # the new channel's capacity
    ready: bool = False
    below_stored: bool = False
    channel_script: str | None = None
    channel_id: str | None = None
    stored: bool = False


@dataclass(frozen=True)
class LspUpdate:
    session: str
    node: int  # the state node it moves
    states: tuple[int, ...]  # the odometer after it
    stocks: tuple[int, ...]  # per leaf, the stock after it
    clients: tuple[UpdateClient, ...]
    stage: UpdateStage
    started_height: int


@dataclass(frozen=True)
class ClientUpdate:
    """What a client agreed to in an UPDATE (persisted before READY: its old channels are frozen
    from then on)."""

    session: str
    node: int
    state: int
    channel_sat: int
    move_msat: int
    leaf_stock: int
    old_channels: tuple[str, ...]
    # Our partial signature of the moved node left (persisted before it does): from then on the
    # LSP may hold the new state, so the old channels stay frozen whatever it says next.
    signed: bool = False
    # Signed first (bottom-up): every tx of our new path below the moved node, fully signed, and
    # the moved node's tx unsigned: if the LSP ever publishes the moved node, we publish these.
    below: tuple[PathEntry, ...] = ()
    moved: PathEntry | None = None
    # The balance crossing over (`plugin/updates/swap.py`): what we held in the old channels
    # when they froze, our new channel, and our payment to ourselves (held until stored).
    held_msat: int = 0
    new_channel: str | None = None
    swap_hashes: tuple[str, ...] = ()  # one payment to ourselves per old channel


def _channel_ids(d: dict[str, Any], key: str) -> tuple[str, ...]:
    values = get(d, key, list)
    return tuple(hexfield({key: v}, key, 32) for v in values)


def _ints(d: dict[str, Any], key: str) -> tuple[int, ...]:
    values = get(d, key, list)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise StoreError(f"{key} must be a list of non-negative integers")
    return tuple(values)


def int_pairs(d: dict[str, Any], key: str) -> tuple[tuple[int, int], ...]:
    """A list of [int, int] pairs (absent: empty, as in records written before)."""
    values = d.get(key) or []
    ok = isinstance(values, list) and all(
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        for v in values
    )
    if not ok:
        raise StoreError(f"{key} must be a list of [integer, integer] pairs")
    return tuple((v[0], v[1]) for v in values)


def lsp_update_from(data: dict[str, Any]) -> LspUpdate | None:
    u = data.get("update")
    if u is None:
        return None
    if not isinstance(u, dict):
        raise StoreError("update must be an object")
    clients = []
    for c in get(u, "clients", list):
        if not isinstance(c, dict):
            raise StoreError("update.clients entries must be objects")
        clients.append(
            UpdateClient(
                client=get(c, "client", int),
                old_channels=_channel_ids(c, "old_channels"),
                move_msat=get(c, "move_msat", int),
                channel_sat=get(c, "channel_sat", int),
                ready=bool(get(c, "ready", bool)),
                below_stored=bool(c.get("below_stored", False)),
                channel_script=hexfield(c, "channel_script", optional=True),
                channel_id=hexfield(c, "channel_id", 32, optional=True),
                stored=bool(get(c, "stored", bool)),
            )
        )
    return LspUpdate(
        session=hexfield(u, "session", 32),
        node=get(u, "node", int),
        states=_ints(u, "states"),
        stocks=_ints(u, "stocks"),
        clients=tuple(clients),
        stage=UpdateStage(get(u, "stage", str)),
        started_height=get(u, "started_height", int),
    )


def client_update_from(data: dict[str, Any]) -> ClientUpdate | None:
    u = data.get("update")
    if u is None:
        return None
    if not isinstance(u, dict):
        raise StoreError("update must be an object")
    return ClientUpdate(
        session=hexfield(u, "session", 32),
        node=get(u, "node", int),
        state=get(u, "state", int),
        channel_sat=get(u, "channel_sat", int),
        move_msat=get(u, "move_msat", int),
        leaf_stock=get(u, "leaf_stock", int),
        old_channels=_channel_ids(u, "old_channels"),
        signed=bool(get(u, "signed", bool)) if "signed" in u else False,
        below=path_from(u, "below") if "below" in u else (),
        moved=path_from({"moved": [u["moved"]]}, "moved")[0] if u.get("moved") else None,
        held_msat=get(u, "held_msat", int) if "held_msat" in u else 0,
        new_channel=hexfield(u, "new_channel", 32, optional=True),
        swap_hashes=tuple(hexfield({"h": h}, "h", 32) for h in u.get("swap_hashes") or []),
    )


def _expect(ok: bool, field_name: str, detail: str) -> None:
    if not ok:
        raise InvalidRecord(field_name, detail)


def validate_stocks(stocks: tuple[int, ...], topo: Topology) -> None:
    if stocks:
        _expect(len(stocks) == len(topo.leaves), "stocks", "not one per leaf")
        _expect(all(s >= DUST_P2TR for s in stocks), "stocks", "a stock below dust")


def validate_lsp_update(u: LspUpdate | None, topo: Topology) -> None:
    if u is None:
        return
    n = len(topo.nodes)
    _expect(0 <= u.node < n and topo.nodes[u.node].kind.is_state, "update.node", "not a state")
    _expect(len(u.states) == n, "update.states", "not one per node")
    k = topo.params.states_per_layer
    _expect(all(s < k for s in u.states), "update.states", f"a state beyond {k - 1}")
    validate_stocks(u.stocks, topo)
    below = topo.nodes[u.node]
    clients = [c.client for c in u.clients]
    _expect(clients == list(range(below.lo, below.hi)), "update.clients", "not the clients below")
    for c in u.clients:
        _expect(1 <= len(c.old_channels) <= 64, "update.clients", "1..64 old channels each")
        _expect(0 <= c.move_msat <= c.channel_sat * 1000, "update.clients", "push above capacity")


def validate_client_update(u: ClientUpdate | None, topo: Topology) -> None:
    if u is None:
        return
    n = len(topo.nodes)
    _expect(0 <= u.node < n and topo.nodes[u.node].kind.is_state, "update.node", "not a state")
    _expect(0 < u.state < topo.params.states_per_layer, "update.state", "not a later state")
    _expect(0 <= u.move_msat <= u.channel_sat * 1000, "update.move_msat", "above the capacity")
    _expect(u.leaf_stock >= DUST_P2TR, "update.leaf_stock", "below dust")
    _expect(1 <= len(u.old_channels) <= 64, "update.old_channels", "1..64 channels")
