"""A Decker-Wattenhofer state update inside a factory: which state node moves, who signs, where
the stock goes, and what every affected channel becomes.

An update re-signs one state node X (the lowest state node over the leaves involved,
`dw.covering_state`) in its next state, whose relative lock is shorter than the old one's, and
every node below X in state 0. Nothing above X changes, so only the clients below X sign and
only their channels move. What moves with it:

- **Stock between leaves.** Every leaf below X gets a new stock amount; the total is conserved.
- **Cut-through.** A leaf's chain of sales hangs off the old leaf's stock output, which the new
  state no longer pays. Each sale's channel is folded into its buyer's channel in the new leaf:
  one channel per client per leaf, of the old capacity plus what it bought there. The sales'
  fees and anchors come back to the stock (the sale txs are never needed again).
- **Channels.** A channel's funding outpoint cannot change on stock Core Lightning, so every
  client below X gets a new zero-conf channel on its new leaf output. Its balance moves by the
  channel's opening itself (`push_msat`: what the client held in the old channels it replaces),
  not by a payment: from the moment the new state is fully signed either state may be the one
  that confirms, so the client's money must be in both (`solvency.check_update_signature`).

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import dw
from .errors import InvalidAmount, InvalidParameter
from .taproot import DUST_P2TR
from .tree import Factory, NodeKind, Topology


@dataclass(frozen=True)
class UpdatePlan:
    """What an update of state node `node` changes, before the new channels exist."""

    node: int  # the state node that moves to its next state
    states: dw.States  # the odometer after the update
    clients: tuple[int, ...]  # the clients below `node`: they sign, their channels move
    leaves: tuple[int, ...]  # the leaves below `node`
    channel_sat: Mapping[int, int]  # per client below `node`: its new channel's capacity
    stocks: tuple[int, ...]  # per leaf of the factory (`topology.leaves` order), the new stock

    def stock_of(self, factory: Factory, leaf: int) -> int:
        return self.stocks[factory.topology.leaves.index(leaf)]


def plan_update(
    factory: Factory,
    states: dw.States,
    leaves: Sequence[int],
    folded: Mapping[int, int],
    wanted: Mapping[int, int] | None = None,
) -> UpdatePlan:
    """Plan the update that lets stock move between `leaves`.

    `folded`: per client, the capacity of the sales it bought in its leaf (folded into its new
    channel). `wanted`: per leaf below the bumped node, the stock it should hold afterwards; the
    leaves not named share the rest evenly. Raises `InvalidParameter` / `InvalidAmount` naming
    what cannot be done (no state node over the leaves, every state used, a stock below dust).
    """
    topo = factory.topology
    node = dw.covering_state(topo, states, leaves)
    advance = dw.advance_node(topo, states, node)
    below = topo.nodes[node]
    clients = tuple(range(below.lo, below.hi))
    under = tuple(n for n in topo.subtree(node) if n in set(topo.leaves))
    for c, sat in folded.items():
        if c not in clients or sat < 0:
            raise InvalidParameter(f"client {c} has no sales to fold under node {node}")
    available = {
        leaf: factory.stock_sat_of(leaf)
        - sum(folded.get(c, 0) for c in range(topo.nodes[leaf].lo, topo.nodes[leaf].hi))
        for leaf in under
    }
    stocks = {leaf: factory.stock_sat_of(leaf) for leaf in topo.leaves}
    stocks.update(_share(available, dict(wanted or {})))
    channel_sat = {c: factory.channels[c][1] + folded.get(c, 0) for c in clients}
    return UpdatePlan(
        node,
        advance.states,
        clients,
        under,
        channel_sat,
        tuple(stocks[leaf] for leaf in topo.leaves),
    )


def _share(available: dict[int, int], wanted: dict[int, int]) -> dict[int, int]:
    """New stock per leaf: `wanted` where named, the rest of the total split evenly."""
    for leaf in wanted:
        if leaf not in available:
            raise InvalidParameter(f"leaf {leaf} is not below the node being updated")
    total = sum(available.values())
    rest = total - sum(wanted.values())
    others = [leaf for leaf in sorted(available) if leaf not in wanted]
    out = dict(wanted)
    if others:
        each, extra = divmod(rest, len(others))
        for i, leaf in enumerate(others):
            out[leaf] = each + (1 if i < extra else 0)
    elif rest != 0:
        raise InvalidAmount(f"the stocks asked for leave {rest} sat unassigned")
    for leaf, sat in sorted(out.items()):
        if sat < DUST_P2TR:
            raise InvalidAmount(
                f"leaf {leaf} would hold {sat} sat of stock, below dust ({DUST_P2TR}): there is"
                f" {total} sat of stock below this node in all"
            )
    return out


def updated_factory(factory: Factory, plan: UpdatePlan, scripts: Mapping[int, bytes]) -> Factory:
    """The factory in the new layout, once every client below the node has its new channel's
    script (lightningd's `fundchannel_start`). The bumped node spends exactly what it spent
    before: nothing above it changes."""
    if set(scripts) != set(plan.clients):
        raise InvalidParameter(
            f"new channel scripts for clients {sorted(scripts)}, the update moves {list(plan.clients)}"
        )
    channels = list(factory.channels)
    for c in plan.clients:
        channels[c] = (scripts[c], plan.channel_sat[c])
    new = dataclasses.replace(factory, channels=tuple(channels), stocks=plan.stocks)
    before, after = factory.input_amount(plan.node), new.input_amount(plan.node)
    if before != after:
        raise InvalidAmount(
            f"node {plan.node} would need {after} sat instead of the {before} sat it spends"
        )
    return new


# Messages of one update per client below the node: UPDATE, READY, SIGN_REQUEST, NONCES,
# AGG_NONCES, PARTIAL_SIGS, SIGNATURES, STORED.
MESSAGES_PER_CLIENT = 8


@dataclass(frozen=True)
class UpdateCost:
    """What an update of a state node costs: who is woken, what is exchanged and signed."""

    node: int
    clients: int  # clients below it: they sign, their channels move
    leaves: int
    transactions: int  # txs re-signed (the node and everything below it)
    partial_signatures: int  # one per signer per re-signed tx (the LSP's included)
    messages: int
    channel_moves: int  # new channels opened (one per client below)
    updates_before_reset: int  # its own states left from state 0


def update_costs(topo: Topology) -> list[UpdateCost]:
    """Per state level, from the leaves up, the cost of updating one of its nodes (the first)."""
    out = []
    seen_levels: set[int] = set()
    for node in topo.state_nodes[::-1]:  # leaves first (they have the highest indices)
        level = len(topo.path(node))
        if level in seen_levels:
            continue
        seen_levels.add(level)
        below = topo.subtree(node)
        n = topo.nodes[node]
        out.append(
            UpdateCost(
                node,
                n.hi - n.lo,
                sum(1 for x in below if topo.nodes[x].kind is NodeKind.LEAF),
                len(below),
                sum(topo.nodes[x].hi - topo.nodes[x].lo + 1 for x in below),
                MESSAGES_PER_CLIENT * (n.hi - n.lo),
                n.hi - n.lo,
                topo.params.states_per_layer - 1,
            )
        )
    return out


def signing_phases(factory: Factory, node: int) -> list[list[int]]:
    """The nodes of an update's ceremonies, in order: every tx below the moved state node first
    (their final signatures reach every client), then the moved node alone. Signed the other way,
    an LSP that completes the moved node and withholds the rest would hold the only new state,
    whose shorter lock beats every client's old path, and strand them until it sweeps at T."""
    below = factory.topology.subtree(node)[1:]
    return [below, [node]] if below else [[node]]
