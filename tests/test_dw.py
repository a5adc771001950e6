"""The Decker-Wattenhofer odometer."""

from __future__ import annotations

import pytest

from superscalar_plugin.engine import dw
from superscalar_plugin.engine.errors import FactoryExhausted, InvalidParameter
from superscalar_plugin.engine.tree import FactoryParams, NodeKind, Topology


def test_delays_decrease_with_each_state() -> None:
    p = FactoryParams(states_per_layer=4, step_blocks=144)
    assert [p.state_delay(i) for i in range(4)] == [432, 288, 144, 0]


def test_odometer_counts_like_nested_digits_and_resets_below() -> None:
    topo = Topology.build(8, FactoryParams(states_per_layer=3))
    leaf = topo.leaf_of_client[0]
    root_state = next(n for n in topo.path(leaf) if topo.nodes[n].kind is NodeKind.STATE)
    states = dw.initial_states(topo)
    seen = []
    for _ in range(3 * 3 - 1):
        adv = dw.advance_leaf(topo, states, leaf)
        states = adv.states
        seen.append((states[root_state], states[leaf]))
        assert adv.resigned == tuple(topo.subtree(adv.bumped))
    assert seen == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    # Bumping the root state reset the sibling leaf too (its parent tx changed).
    other = topo.leaf_of_client[2]
    assert states[other] == 0
    with pytest.raises(FactoryExhausted):
        dw.advance_leaf(topo, states, leaf)


def test_advancing_a_leaf_touches_only_that_leaf() -> None:
    topo = Topology.build(8, FactoryParams())
    leaf = topo.leaf_of_client[5]
    adv = dw.advance_leaf(topo, dw.initial_states(topo), leaf)
    assert adv.bumped == leaf and adv.resigned == (leaf,)
    assert dw.path_delays(topo, adv.states, leaf)[-1] == FactoryParams().state_delay(1)
    with pytest.raises(InvalidParameter):
        dw.advance_leaf(topo, adv.states, 0)
