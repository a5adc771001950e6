"""Tree shape, amounts, fees and sizes."""

from __future__ import annotations

import itertools

import pytest

from superscalar_plugin.engine import dw
from superscalar_plugin.engine.ceremony import sign_in_process
from superscalar_plugin.engine.errors import InvalidAmount, InvalidParameter, InvalidShape
from superscalar_plugin.engine.taproot import P2A_SCRIPT
from superscalar_plugin.engine.tree import (
    ClientSlot,
    Factory,
    FactoryParams,
    NodeKind,
    OutputKind,
    Topology,
    fee_for,
    shape_cost,
)

from helpers import OUTPOINT, participants

SHAPES = [
    FactoryParams(),
    FactoryParams(arity=(2, 4, 8), kickoff_only_top=2),
    FactoryParams(clients_per_leaf=3, arity=(3,)),
    FactoryParams(clients_per_leaf=1, arity=(4,), kickoff_only_top=1),
]


def test_canonical_8_client_example() -> None:
    """DESIGN.md section 1: kickoff -> state -> 2 kickoffs -> 4 leaf states of 2 clients."""
    topo = Topology.build(8, FactoryParams())
    kinds = [topo.nodes[n].kind for n in topo.client_path(0)]
    assert kinds == [NodeKind.KICKOFF, NodeKind.STATE, NodeKind.KICKOFF, NodeKind.LEAF]
    assert len(topo.leaves) == 4 and len(topo.nodes) == 8
    assert [len(topo.nodes[n].children) for n in topo.client_path(0)] == [1, 2, 2, 0]
    assert topo.max_state_layers == 2
    assert topo.ewt == 2 * 3 * 36 + 36


@pytest.mark.parametrize(
    "params", SHAPES, ids=lambda p: f"{p.clients_per_leaf}/{p.arity}/{p.kickoff_only_top}"
)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 33, 127])
def test_topology_invariants(params: FactoryParams, n: int) -> None:
    topo = Topology.build(n, params)
    assert topo.nodes[0].parent is None and (topo.nodes[0].lo, topo.nodes[0].hi) == (0, n)
    assert not topo.nodes[0].kind.is_state  # a state never spends the on-chain funding directly
    depths = {len(topo.path(leaf)) for leaf in topo.leaves}
    assert depths == {topo.depth}  # every leaf at the same depth
    for c in range(n):
        leaf = topo.nodes[topo.leaf_of_client[c]]
        assert leaf.kind is NodeKind.LEAF and leaf.lo <= c < leaf.hi
    for node in topo.nodes:
        if node.children:
            kids = [topo.nodes[k] for k in node.children]
            assert kids[0].lo == node.lo and kids[-1].hi == node.hi
            assert all(a.hi == b.lo for a, b in itertools.pairwise(kids))
            assert all(k.parent == node.index and k.index > node.index for k in kids)
        if node.kind is NodeKind.STATE:  # DW: a state's parent is a kickoff or a split
            assert node.parent is not None and not topo.nodes[node.parent].kind.is_state


@pytest.mark.parametrize("params", SHAPES[:2])
def test_amounts_flow_and_fees_are_exact(params: FactoryParams) -> None:
    f = participants(13, params).factory
    for node in f.topology.nodes:
        outs = f.outputs[node.index]
        assert outs[-1].kind is OutputKind.ANCHOR and outs[-1].script_pubkey == P2A_SCRIPT
        assert outs[-1].amount == 240
        fee = f.input_amount(node.index) - sum(o.amount for o in outs)
        assert fee == fee_for(f.vsize(node.index), params.fee_rate_kvb) > 0
        for v, child in enumerate(node.children):
            assert outs[v].amount == f.input_amount(child)
            assert outs[v].script_pubkey == f.branch_output_for(child).script_pubkey
        if node.kind is NodeKind.LEAF:
            for c in range(node.lo, node.hi):
                assert outs[c - node.lo].script_pubkey == f.channels[c][0]
            assert outs[-2].kind is OutputKind.STOCK and outs[-2].amount == params.stock_sat
    # Timeout leaves: on every state/split output, never on kickoff outputs.
    for node in f.topology.nodes:
        for o in f.outputs[node.index]:
            if o.kind is OutputKind.BRANCH:
                assert o.taproot is not None
                has_timeout = f.timeout_leaf in o.taproot.leaves
                assert has_timeout == (node.kind is not NodeKind.KICKOFF)
    assert f.timeout_leaf in f.funding_output.leaves


def test_estimated_vsize_matches_signed_transactions() -> None:
    p = participants(8)
    f = p.factory
    signed = sign_in_process(
        f, OUTPOINT, dw.initial_states(f.topology), p.lsp_seckey, p.client_seckeys
    )
    for node, s in signed.items():
        assert s.unsigned.tx.with_witnesses([[s.signature]]).vsize == f.vsize(node)


@pytest.mark.parametrize(
    ("n", "params", "c_reference_vb"),
    [(8, FactoryParams(), 916), (64, FactoryParams(arity=(2, 4, 8), kickoff_only_top=2), 999)],
)
def test_exit_paths_no_larger_than_the_c_reference(
    n: int, params: FactoryParams, c_reference_vb: int
) -> None:
    f = participants(n, params).factory
    worst = max(sum(f.vsize(x) for x in f.topology.client_path(c)) for c in range(n))
    assert worst <= c_reference_vb


def test_bad_shapes_and_amounts_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidShape, match=r"1\.\.1024 clients"):
        Topology.build(0, FactoryParams())
    with pytest.raises(InvalidShape, match="arity"):
        Topology.build(8, FactoryParams(arity=(0,)))
    with pytest.raises(InvalidShape, match="no arity-1 levels"):
        Topology.build(8, FactoryParams(arity=(2, 1)))
    with pytest.raises(InvalidShape, match="states_per_layer must be 2"):
        Topology.build(8, FactoryParams(states_per_layer=1))
    with pytest.raises(InvalidShape, match="early warning time"):
        participants(1024, FactoryParams(step_blocks=144))
    with pytest.raises(InvalidAmount, match="stock"):
        FactoryParams(stock_sat=100).validate()
    with pytest.raises(InvalidAmount, match="fee rate"):
        FactoryParams(fee_rate_kvb=10).validate()
    p = participants(2)
    slots = [ClientSlot(pk, b"\x00\x20" + bytes(32), 100) for pk in p.factory.client_pubkeys]
    with pytest.raises(InvalidAmount, match="client 0: channel amount 100 sat is below dust"):
        Factory.create(FactoryParams(), p.factory.lsp_pubkey, slots, 100)
    dup = [ClientSlot(p.factory.client_pubkeys[0], b"\x00\x20" + bytes(32), 1000)] * 2
    with pytest.raises(InvalidParameter, match="distinct"):
        Factory.create(FactoryParams(), p.factory.lsp_pubkey, dup, 100)


@pytest.mark.parametrize(
    "params", SHAPES, ids=lambda p: f"{p.clients_per_leaf}/{p.arity}/{p.kickoff_only_top}"
)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 33, 127, 1024])
def test_the_cost_estimate_bounds_the_real_tree(params: FactoryParams, n: int) -> None:
    """`shape_cost` never underestimates: the refusal before building is sound."""
    cost = shape_cost(n, params)
    topo = Topology.build(n, params)
    assert len(topo.nodes) <= cost.nodes <= len(topo.nodes) + 1
    assert topo.depth <= cost.depth
    assert sum(nd.hi - nd.lo + 1 for nd in topo.nodes) <= cost.keyagg_keys
