"""What the LSP's update works from: the odometer its tree and its spent states give, the leaves
an update involves, the sales it folds, a stored update's plan, and the refill's reply."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ...engine import store
from ...engine.errors import InvalidParameter
from ...engine.update import UpdatePlan
from ..lightningd.records import topology

log = logging.getLogger("superscalar")


def states_of(record: store.LspRecord) -> tuple[int, ...]:
    """The odometer of the record's signed tree (a node's state as its tx was signed)."""
    out = [0] * len(topology(record).nodes)
    for e in record.tree:
        out[e.node] = e.state
    return tuple(out)


def planning_states(record: store.LspRecord) -> tuple[int, ...]:
    """The odometer an update is planned from: the tree's, with every state a moved node's
    ceremony started in and never completed counted as used (clients may hold it signed)."""
    spent = dict(record.spent)
    return tuple(max(s, spent.get(n, -1)) for n, s in enumerate(states_of(record)))


def with_tree_above(record: store.LspRecord, plan: UpdatePlan) -> UpdatePlan:
    """The plan's odometer with every node outside the moved subtree as the tree signed it."""
    moved = set(topology(record).subtree(plan.node))
    tree = states_of(record)
    states = tuple(plan.states[n] if n in moved else tree[n] for n in range(len(tree)))
    return dataclasses.replace(plan, states=states)


def leaves_for(record: store.LspRecord, client: int | None) -> list[int]:
    """The leaves an update involves: `client`'s leaf with every other leaf below the lowest state
    node above it that covers more than one leaf (and can still move); without a client, every
    leaf (a rebalance of the whole factory)."""
    topo = topology(record)
    if client is None:
        return list(topo.leaves)
    states = planning_states(record)
    last = record.params.states_per_layer - 1
    for node in reversed(topo.path(topo.leaf_of_client[client])[:-1]):
        below = [n for n in topo.subtree(node) if n in set(topo.leaves)]
        if topo.nodes[node].kind.is_state and len(below) > 1 and states[node] < last:
            return below
    return [topo.leaf_of_client[client]]


def folded_sales(record: store.LspRecord, clients: range) -> dict[int, int]:
    """Per client, the capacity of the sales it bought (folded into its new channel); refuses
    while a sale of these clients' leaves is not complete (its channel may still change)."""
    out: dict[int, int] = {}
    for e in record.sales:
        if e.buyer in clients:
            if not e.complete or not e.channel_id:
                raise InvalidParameter(
                    f"a sale to client {e.buyer} is not complete: update after it settles"
                )
            out[e.buyer] = out.get(e.buyer, 0) + e.sold_sat
    return out


class Then:
    """A `Reply` that runs `then` once the update is over, whatever its outcome (logged)."""

    def __init__(self, instance: str, then: Callable[[], None]) -> None:
        self._instance, self._then = instance, then

    def set_result(self, result: Any) -> None:
        log.info("factory %s: stock moved by a DW update", self._instance[:16])
        self._then()

    def set_exception(self, exc: Exception) -> None:
        log.info("factory %s: no DW update: %s", self._instance[:16], exc)
        self._then()


def plan_stub(record: store.LspRecord) -> UpdatePlan:
    """The plan of a stored update, enough to abandon it after a restart."""
    assert record.update is not None
    u = record.update
    topo = topology(record)
    return UpdatePlan(
        u.node,
        u.states,
        tuple(c.client for c in u.clients),
        tuple(n for n in topo.subtree(u.node) if n in set(topo.leaves)),
        {c.client: c.channel_sat for c in u.clients},
        u.stocks,
    )
