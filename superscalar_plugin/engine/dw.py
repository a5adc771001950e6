"""The Decker-Wattenhofer odometer.

Each state node (leaves and interior states) holds a digit: its state index, 0 = first state with
the largest relative delay. Advancing a leaf bumps the lowest digit on its path that can still move;
every state node below the bumped one resets to 0, because its parent tx changed and the whole
subtree is re-signed (DESIGN.md section 1, "odometer").
"""

from __future__ import annotations

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
