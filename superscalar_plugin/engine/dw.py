"""The Decker-Wattenhofer odometer.

Each state node (leaves and interior states) holds a digit: its state index, 0 = first state with
the largest relative delay. Advancing a leaf bumps the lowest digit on its path that can still move;
every state node below the bumped one resets to 0, because its parent tx changed and the whole
subtree is re-signed (DESIGN.md section 1, "odometer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import FactoryExhausted, InvalidParameter
from .tree import NodeKind, Topology

States = tuple[int, ...]  # per node index; 0 for non-state nodes


def initial_states(topo: Topology) -> States:
    return (0,) * len(topo.nodes)


@dataclass(frozen=True)
class Advance:
    states: States  # the new odometer
    bumped: int  # the state node whose index went up
    resigned: tuple[int, ...]  # every node whose tx changed (bumped node and its subtree)


def advance_leaf(topo: Topology, states: States, leaf: int) -> Advance:
    """Next state for `leaf`: the innermost layer moves first, the layers below reset."""
    if not 0 <= leaf < len(topo.nodes) or topo.nodes[leaf].kind is not NodeKind.LEAF:
        raise InvalidParameter(f"node {leaf} is not a leaf")
    last = topo.params.states_per_layer - 1
    for node in reversed(topo.path(leaf)):
        if not topo.nodes[node].kind.is_state or states[node] >= last:
            continue
        new = list(states)
        new[node] += 1
        subtree = topo.subtree(node)
        for below in subtree[1:]:
            new[below] = 0
        return Advance(tuple(new), node, tuple(subtree))
    raise FactoryExhausted(f"leaf {leaf} has used every state: close or migrate the factory")


def path_delays(topo: Topology, states: States, leaf: int) -> list[int]:
    """Relative delay of each tx on the root-to-leaf path in the given state."""
    return [topo.relative_delay(n, states[n]) for n in topo.path(leaf)]


def covering_state(topo: Topology, states: States, leaves: Sequence[int]) -> int:
    """The lowest state node above (or at) every one of `leaves` that can still move: the node a
    DW update of those leaves bumps. Only the clients below it sign the update."""
    if not leaves:
        raise InvalidParameter("an update needs at least one leaf")
    for leaf in leaves:
        if not 0 <= leaf < len(topo.nodes) or topo.nodes[leaf].kind is not NodeKind.LEAF:
            raise InvalidParameter(f"node {leaf} is not a leaf")
    paths = [topo.path(leaf) for leaf in leaves]
    common = [n for n in paths[0] if all(n in p for p in paths[1:])]
    last = topo.params.states_per_layer - 1
    for node in reversed(common):
        if topo.nodes[node].kind.is_state and states[node] < last:
            return node
    movable = [n for n in common if topo.nodes[n].kind.is_state]
    if not movable:
        raise InvalidParameter(
            f"no DW state node covers leaves {sorted(leaves)}: their stock cannot move between them"
        )
    raise FactoryExhausted(
        f"every state above leaves {sorted(leaves)} is used: close or migrate the factory"
    )


def advance_node(topo: Topology, states: States, node: int) -> Advance:
    """Bump state node `node` by one; every state node below it resets to 0 (its parent changed)."""
    if not topo.nodes[node].kind.is_state:
        raise InvalidParameter(f"node {node} is a {topo.nodes[node].kind.value}, not a state")
    if states[node] >= topo.params.states_per_layer - 1:
        raise FactoryExhausted(f"node {node} has used every state")
    new = list(states)
    new[node] += 1
    subtree = topo.subtree(node)
    for below in subtree[1:]:
        new[below] = 0
    return Advance(tuple(new), node, tuple(subtree))


def updates_left(topo: Topology, states: States, leaf: int) -> int:
    """How many more updates of `leaf` the odometer allows: the state digits on its path read as
    one number counting down (the digit nearest the leaf moves first, a digit above moves when
    the ones below are used up and they reset)."""
    k = topo.params.states_per_layer
    left = 0
    for node in topo.path(leaf):
        if topo.nodes[node].kind.is_state:
            left = left * k + (k - 1 - states[node])
    return left
