"""Handing over an old factory (engine/handover.py): key checks, key-path spends, unroll plans.

The plans are checked against expectations worked out by hand from each tree's shape, and, for
many random sets of handed-over clients, against a brute-force oracle written independently of
the module's walk. Consensus checks are in test_handover_consensus.py.
"""

from __future__ import annotations

import random
from functools import cache

import pytest

from superscalar_plugin.engine import dw, musig2
from superscalar_plugin.engine.errors import (
    HandoverError,
    InvalidAmount,
    InvalidParameter,
    MissingHandedKeys,
)
from superscalar_plugin.engine.handover import (
    HandedOutput,
    UnrollPlan,
    check_handed_key,
    check_handed_keys,
    keypath_spend,
    keypath_sweep,
    partial_unroll,
)
from superscalar_plugin.engine.taproot import taproot_sighash
from superscalar_plugin.engine.tree import (
    Factory,
    FactoryParams,
    NodeKind,
    OutputKind,
    fee_for,
    keypath_tx_vsize,
)
from superscalar_plugin.engine.tx import Tx
from superscalar_plugin.simulate import Participants, make_factory

OUTPOINT = ("ab" * 32, 3)
DEST = b"\x51\x20" + bytes(range(32))  # a P2TR destination
N_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

BINARY = FactoryParams()  # clients_per_leaf=2, arity 2
ONE_PER_LEAF = FactoryParams(clients_per_leaf=1)
SPLIT_TOP = FactoryParams(kickoff_only_top=2)
WIDE = FactoryParams(clients_per_leaf=2, arity=(4,))
# Two leaves under one kickoff and no state over them: a tree signed before `state_over_leaves`.
FLAT = FactoryParams(state_over_leaves=False)


@cache
def people(n: int, params: FactoryParams = BINARY) -> Participants:
    return make_factory(n, params, timeout_height=5000, seed="handover")


def all_keys(p: Participants) -> dict[int, bytes]:
    return dict(enumerate(p.client_seckeys))


def verify_keypath(raw: bytes, amount: int, spent_script: bytes) -> Tx:
    """The tx's one witness item is a valid BIP340 signature for the spent P2TR output key."""
    tx = Tx.deserialize(raw)
    assert len(tx.witnesses) == 1 and len(tx.witnesses[0]) == 1
    digest = taproot_sighash(tx, 0, [(amount, spent_script)])
    assert spent_script[:2] == b"\x51\x20"
    assert musig2.schnorr_verify(tx.witnesses[0][0], digest, spent_script[2:])
    return tx


# --- handed keys ------------------------------------------------------------------------------


def test_the_right_key_passes() -> None:
    p = people(4)
    for c, sk in enumerate(p.client_seckeys):
        check_handed_key(sk, p.factory.client_pubkeys[c])
    check_handed_keys(p.factory, all_keys(p))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_key_of_the_wrong_length_is_rejected(length: int) -> None:
    p = people(4)
    with pytest.raises(HandoverError, match=f"32-byte secret, got {length} bytes"):
        check_handed_key(b"\x01" * length, p.factory.client_pubkeys[0])


@pytest.mark.parametrize("scalar", [0, N_ORDER, N_ORDER + 1, 2**256 - 1])
def test_a_key_that_is_no_valid_scalar_is_rejected(scalar: int) -> None:
    p = people(4)
    with pytest.raises(HandoverError, match="not a secret key"):
        check_handed_key(scalar.to_bytes(32, "big"), p.factory.client_pubkeys[0])


def test_a_key_that_is_not_bytes_is_rejected() -> None:
    p = people(4)
    with pytest.raises(HandoverError, match="bytes, not str"):
        check_handed_key("00" * 32, p.factory.client_pubkeys[0])  # type: ignore[arg-type]


def test_a_wrong_key_is_rejected() -> None:
    p = people(4)
    with pytest.raises(HandoverError, match="client 2: the handed-over key gives public key"):
        check_handed_key(b"\x07" * 32, p.factory.client_pubkeys[2], "client 2")


def test_the_negated_key_is_rejected() -> None:
    """n - d gives the same x-only key with the other parity: not the 33-byte key on record."""
    p = people(4)
    d = int.from_bytes(p.client_seckeys[1], "big")
    negated = (N_ORDER - d).to_bytes(32, "big")
    assert musig2.xonly(musig2.pubkey_from_secret(negated)) == musig2.xonly(
        p.factory.client_pubkeys[1]
    )
    with pytest.raises(HandoverError, match="not the factory key"):
        check_handed_key(negated, p.factory.client_pubkeys[1])


def test_another_clients_key_is_named() -> None:
    p = people(4)
    with pytest.raises(HandoverError, match=r"client 1: .* it is client 3's key"):
        check_handed_keys(p.factory, {0: p.client_seckeys[0], 1: p.client_seckeys[3]})
    with pytest.raises(HandoverError, match=r"client 0: .* it is the LSP's key"):
        check_handed_keys(p.factory, {0: p.lsp_seckey})


@pytest.mark.parametrize("index", [-1, 4, "0"])
def test_a_key_for_no_client_is_rejected(index: object) -> None:
    p = people(4)
    with pytest.raises(InvalidParameter, match="not a client"):
        check_handed_keys(p.factory, {index: p.client_seckeys[0]})  # type: ignore[dict-item]


# --- the key-path spend of the funding output -------------------------------------------------


def test_keypath_spend_is_a_valid_signature_for_the_funding_output_key() -> None:
    p = people(8)
    f = p.factory
    raw = keypath_spend(f, OUTPOINT, f.funding_amount, all_keys(p), p.lsp_seckey, DEST, 2000)
    tx = verify_keypath(raw, f.funding_amount, f.funding_output.script_pubkey)
    assert [(i.txid, i.vout) for i in tx.inputs] == [OUTPOINT]
    assert tx.inputs[0].sequence == 0xFFFFFFFD and tx.locktime == 0  # valid at once, RBF
    assert tx.vsize == keypath_tx_vsize([DEST])  # the fee was computed for the real size
    fee = fee_for(tx.vsize, 2000)
    assert [(o.amount, o.script_pubkey) for o in tx.outputs] == [(f.funding_amount - fee, DEST)]
    # The output key is the tweaked aggregate of every client and L, not the internal key.
    assert f.funding_output.output_key != f.funding_output.internal_key
    # Fresh nonces every time: a second spend of the same tx has another, also valid, signature.
    again = keypath_spend(f, OUTPOINT, f.funding_amount, all_keys(p), p.lsp_seckey, DEST, 2000)
    assert Tx.deserialize(again).witnesses != tx.witnesses
    verify_keypath(again, f.funding_amount, f.funding_output.script_pubkey)


def test_keypath_spend_names_every_missing_key() -> None:
    p = people(16)
    keys = {c: sk for c, sk in all_keys(p).items() if c not in (2, 5, 6, 7, 15)}
    with pytest.raises(MissingHandedKeys, match=r"not handed over: clients 2, 5-7, 15") as info:
        keypath_spend(p.factory, OUTPOINT, p.factory.funding_amount, keys, p.lsp_seckey, DEST, 2000)
    assert info.value.clients == (2, 5, 6, 7, 15)
    assert isinstance(info.value, HandoverError)
    one = {c: sk for c, sk in all_keys(p).items() if c != 9}
    with pytest.raises(MissingHandedKeys, match=r"not handed over: client 9$"):
        keypath_spend(p.factory, OUTPOINT, p.factory.funding_amount, one, p.lsp_seckey, DEST, 2000)


def test_keypath_spend_refuses_a_swapped_key() -> None:
    """An attacker (or a mix-up) handing over another client's key is caught before signing."""
    p = people(4)
    keys = all_keys(p)
    keys[3] = p.client_seckeys[0]
    with pytest.raises(HandoverError, match=r"client 3: .* it is client 0's key"):
        keypath_spend(p.factory, OUTPOINT, p.factory.funding_amount, keys, p.lsp_seckey, DEST, 2000)


def test_keypath_spend_refuses_a_wrong_lsp_key() -> None:
    p = people(4)
    with pytest.raises(InvalidParameter, match="LSP"):
        keypath_spend(
            p.factory,
            OUTPOINT,
            p.factory.funding_amount,
            all_keys(p),
            p.client_seckeys[0],
            DEST,
            2000,
        )


def test_keypath_spend_refuses_to_leave_dust() -> None:
    p = people(4)
    fee = fee_for(keypath_tx_vsize([DEST]), 2000)
    with pytest.raises(InvalidAmount, match="330 sat, the dust limit"):
        keypath_spend(p.factory, OUTPOINT, fee + 329, all_keys(p), p.lsp_seckey, DEST, 2000)
    raw = keypath_spend(p.factory, OUTPOINT, fee + 330, all_keys(p), p.lsp_seckey, DEST, 2000)
    assert Tx.deserialize(raw).outputs[0].amount == 330
    p2wpkh = b"\x00\x14" + bytes(20)
    raw = keypath_spend(p.factory, OUTPOINT, 294 + 2 * 200, all_keys(p), p.lsp_seckey, p2wpkh, 1000)
    assert Tx.deserialize(raw).outputs[0].amount >= 294
    with pytest.raises(InvalidAmount, match="not positive"):
        keypath_spend(p.factory, OUTPOINT, 100_000, all_keys(p), p.lsp_seckey, DEST, 0)


# --- key-path sweeps of tree outputs ----------------------------------------------------------


def test_keypath_sweep_of_each_kind_of_output_verifies() -> None:
    """A kickoff output (no script tree), a state output (timeout leaf) and a leaf's stock (delay
    leaf): each signature checks against its own output key."""
    p = people(8)
    f = p.factory
    cases = [(0, 0, NodeKind.KICKOFF), (1, 1, NodeKind.STATE), (5, 0, NodeKind.KICKOFF)]
    for node, vout, kind in cases:
        spec = f.outputs[node][vout]
        assert f.topology.nodes[node].kind is kind and spec.taproot is not None
        assert (spec.taproot.tree is None) == (kind is NodeKind.KICKOFF)
        raw = keypath_sweep(
            f, node, vout, OUTPOINT, spec.amount, all_keys(p), p.lsp_seckey, DEST, 2000
        )
        verify_keypath(raw, spec.amount, spec.script_pubkey)
    leaf = f.topology.leaves[0]
    stock_vout = len(f.outputs[leaf]) - 2
    stock = f.outputs[leaf][stock_vout]
    assert stock.kind is OutputKind.STOCK
    keys = {0: p.client_seckeys[0], 1: p.client_seckeys[1]}  # the leaf's clients only
    raw = keypath_sweep(f, leaf, stock_vout, OUTPOINT, stock.amount, keys, p.lsp_seckey, DEST, 2000)
    verify_keypath(raw, stock.amount, stock.script_pubkey)


def test_keypath_sweep_needs_exactly_the_keys_under_the_output() -> None:
    p = people(8)
    f = p.factory
    spec = f.outputs[5][1]  # the kickoff output leading to leaf 7: clients 6 and 7
    assert spec.key_range == (6, 8)
    six = {c: p.client_seckeys[c] for c in range(7)}
    with pytest.raises(
        MissingHandedKeys, match="clients 6-7 and the LSP; not handed over: client 7"
    ):
        keypath_sweep(f, 5, 1, OUTPOINT, spec.amount, six, p.lsp_seckey, DEST, 2000)
    two = {6: p.client_seckeys[6], 7: p.client_seckeys[7]}
    raw = keypath_sweep(f, 5, 1, OUTPOINT, spec.amount, two, p.lsp_seckey, DEST, 2000)
    verify_keypath(raw, spec.amount, spec.script_pubkey)


def test_keypath_sweep_refuses_channels_anchors_and_wrong_amounts() -> None:
    p = people(8)
    f = p.factory
    leaf = f.topology.leaves[1]  # clients 2 and 3
    keys = all_keys(p)
    with pytest.raises(HandoverError, match="client 3's channel"):
        keypath_sweep(
            f, leaf, 1, OUTPOINT, f.outputs[leaf][1].amount, keys, p.lsp_seckey, DEST, 2000
        )
    anchor = len(f.outputs[leaf]) - 1
    with pytest.raises(HandoverError, match="anchor output: it has no key path"):
        keypath_sweep(f, leaf, anchor, OUTPOINT, 240, keys, p.lsp_seckey, DEST, 2000)
    with pytest.raises(InvalidAmount, match="holds"):
        keypath_sweep(f, 1, 0, OUTPOINT, f.outputs[1][0].amount + 1, keys, p.lsp_seckey, DEST, 2000)
    with pytest.raises(InvalidParameter, match="no output"):
        keypath_sweep(f, 99, 0, OUTPOINT, 1, keys, p.lsp_seckey, DEST, 2000)


# --- partial unroll: hand-computed plans ------------------------------------------------------


def plan_of(n: int, params: FactoryParams, handed: set[int], **kw: object) -> UnrollPlan:
    f = people(n, params).factory
    return partial_unroll(f, handed, dw.initial_states(f.topology), **kw)  # type: ignore[arg-type]


def spends(plan: UnrollPlan) -> list[tuple[int | None, int, range]]:
    return [(o.node, o.vout, o.clients) for o in plan.spend]


def published(plan: UnrollPlan) -> list[int]:
    return [s.node for s in plan.publish]


def test_the_shapes_are_as_the_plans_below_assume() -> None:
    kinds = {
        (4, BINARY): "KSKLL",
        (4, FLAT): "KLL",
        (8, BINARY): "KSKLLKLL",
        (8, ONE_PER_LEAF): "KSKLLKLLSKLLKLL",
        (8, SPLIT_TOP): "PPLLPLL",
        (16, WIDE): "KSKLLLLKLLLL",
    }
    letter = {NodeKind.KICKOFF: "K", NodeKind.STATE: "S", NodeKind.LEAF: "L", NodeKind.SPLIT: "P"}
    for (n, params), expected in kinds.items():
        nodes = people(n, params).factory.topology.nodes
        assert "".join(letter[x.kind] for x in nodes) == expected, (n, params)


@pytest.mark.parametrize(("n", "params"), [(4, BINARY), (4, FLAT), (8, BINARY), (8, SPLIT_TOP)])
def test_every_key_handed_over_means_no_node_and_the_funding_output(
    n: int, params: FactoryParams
) -> None:
    plan = plan_of(n, params, set(range(n)))
    f = people(n, params).factory
    assert plan.publish == () and plan.due == () and plan.funding_keypath
    assert plan.spend == (HandedOutput(None, 0, OutputKind.BRANCH, range(n), f.funding_amount),)


def test_no_key_or_too_few_under_any_output_means_nothing_to_do() -> None:
    assert plan_of(8, BINARY, set()) == UnrollPlan((), (), ())
    # One client of each leaf: no output has all its clients handed over.
    assert plan_of(8, BINARY, {0, 2, 4, 6}) == UnrollPlan((), (), ())
    assert not plan_of(8, BINARY, set()).funding_keypath


def test_four_clients_one_leaf_handed() -> None:
    # 0 kickoff(0-3) -> 1 leaf(0-1), 2 leaf(2-3): take the kickoff's output to leaf 1; leaf 2's
    # latest state must still consume the other kickoff output.
    plan = plan_of(4, FLAT, {0, 1})
    assert published(plan) == [0]
    assert spends(plan) == [(0, 0, range(0, 2))]
    assert plan.due == (2,)
    # 0 K(0-3) -> 1 S(0-3) -> 2 K(0-3) -> 3 L(0,1), 4 L(2,3): the state over the leaves is
    # published too (its delay waited out), then the same split at the lower kickoff.
    plan = plan_of(4, BINARY, {0, 1})
    assert published(plan) == [0, 1, 2]
    assert spends(plan) == [(2, 0, range(0, 2))]
    assert plan.due == (4,)


def test_eight_clients_binary() -> None:
    # 0 K(0-7) -> 1 S(0-7) -> {2 K(0-3) -> 3 L(0,1), 4 L(2,3)}, {5 K(4-7) -> 6 L(4,5), 7 L(6,7)}
    plan = plan_of(8, BINARY, {0, 1, 2, 3, 4, 5})
    assert published(plan) == [0, 1, 5]
    assert spends(plan) == [(1, 0, range(0, 4)), (5, 0, range(4, 6))]
    assert plan.due == (7,)
    plan = plan_of(8, BINARY, {2, 3, 6, 7})
    assert published(plan) == [0, 1, 2, 5]
    assert spends(plan) == [(2, 1, range(2, 4)), (5, 1, range(6, 8))]
    assert plan.due == (3, 6)
    # Node 1 is a state in its first state: it waits its full delay; kickoffs wait nothing.
    assert [(s.kind, s.relative_delay) for s in plan.publish] == [
        (NodeKind.KICKOFF, 0),
        (NodeKind.STATE, BINARY.state_delay(0)),
        (NodeKind.KICKOFF, 0),
        (NodeKind.KICKOFF, 0),
    ]


def test_eight_clients_one_per_leaf() -> None:
    # 0 K -> {1 S(0-3) -> 2 K(0,1) -> 3 L0, 4 L1; 5 K(2,3) -> 6 L2, 7 L3},
    #        {8 S(4-7) -> 9 K(4,5) -> 10 L4, 11 L5; 12 K(6,7) -> 13 L6, 14 L7}
    plan = plan_of(8, ONE_PER_LEAF, {0, 1, 2, 3, 5})
    assert published(plan) == [0, 8, 9]
    assert spends(plan) == [(0, 0, range(0, 4)), (9, 1, range(5, 6))]
    assert plan.due == (10,)  # node 12 hangs off a state output: it has the timeout leaf
    plan = plan_of(8, ONE_PER_LEAF, {7})
    assert published(plan) == [0, 8, 12]
    assert spends(plan) == [(12, 1, range(7, 8))]
    assert plan.due == (1, 13)  # the root is a kickoff too: its output to node 1 is due


def test_eight_clients_kickoff_only_top() -> None:
    # 0 P(0-7) -> {1 P(0-3) -> 2 L(0,1), 3 L(2,3)}, {4 P(4-7) -> 5 L(4,5), 6 L(6,7)}
    plan = plan_of(8, SPLIT_TOP, {0, 1, 2, 3, 4, 5})
    assert published(plan) == [0, 4]
    assert spends(plan) == [(0, 0, range(0, 4)), (4, 0, range(4, 6))]
    assert plan.due == ()  # split outputs carry the timeout leaf: no DW race
    assert all(s.relative_delay == 0 for s in plan.publish)


def test_sixteen_clients_arity_four() -> None:
    # 0 K -> 1 S(0-15) -> {2 K(0-7) -> 3..6 L}, {7 K(8-15) -> 8..11 L}
    plan = plan_of(16, WIDE, {0, 1, 2, 3, 4, 5, 10, 11})
    assert published(plan) == [0, 1, 2, 7]
    assert spends(plan) == [
        (2, 0, range(0, 2)),
        (2, 1, range(2, 4)),
        (2, 2, range(4, 6)),
        (7, 1, range(10, 12)),
    ]
    assert plan.due == (6, 8, 10, 11)


def test_the_plan_uses_the_latest_states() -> None:
    p = people(8)
    topo = p.factory.topology
    states = dw.initial_states(topo)
    while states[1] == 0:  # advance leaf 7 until the state node above it moved
        states = dw.advance_leaf(topo, states, 7).states
    plan = partial_unroll(p.factory, {0, 1, 2, 3}, states)
    [step] = [s for s in plan.publish if s.node == 1]
    assert step.state == 1 and step.relative_delay == BINARY.state_delay(1)


def test_a_published_leaf_gives_its_stock() -> None:
    """Clients 6 and 7 exited unilaterally (path 0, 1, 5, 7, and leaf 6 to consume kickoff 5);
    then clients 4 and 5 handed over: only leaf 6's stock is the LSP's to take by key path."""
    plan = plan_of(8, BINARY, {4, 5}, published={0, 1, 5, 6, 7})
    stock_vout = 2
    assert published(plan) == [] and plan.due == ()
    assert spends(plan) == [(6, stock_vout, range(4, 6))]
    assert plan.spend[0].kind is OutputKind.STOCK
    # With the whole tree on chain and every key, the stocks and untaken outputs are the LSP's.
    everything = plan_of(8, BINARY, set(range(8)), published={0, 1, 2, 5})
    assert not everything.funding_keypath
    assert spends(everything) == [
        (2, 0, range(0, 2)),
        (2, 1, range(2, 4)),
        (5, 0, range(4, 6)),
        (5, 1, range(6, 8)),
    ]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidParameter, match="not a client"):
        plan_of(4, BINARY, {4})
    with pytest.raises(InvalidParameter, match="without its parent"):
        plan_of(8, BINARY, {0, 1}, published={5})
    with pytest.raises(InvalidParameter, match="not a node"):
        plan_of(8, BINARY, {0, 1}, published={0, 8})


def test_outpoints_follow_the_published_txids() -> None:
    plan = plan_of(8, BINARY, {0, 1, 2, 3, 4, 5})
    txids = {1: "11" * 32, 5: "55" * 32}
    assert [o.outpoint(OUTPOINT, txids) for o in plan.spend] == [("11" * 32, 0), ("55" * 32, 0)]
    whole = plan_of(8, BINARY, set(range(8)))
    assert whole.spend[0].outpoint(OUTPOINT, {}) == OUTPOINT


# --- partial unroll against a brute-force oracle ----------------------------------------------


def oracle(f: Factory, handed: set[int]) -> tuple[list[int], list[tuple[int | None, int]]]:
    """Independent of the walk: the maximal handed outputs are those whose clients all handed
    over while the output their tx spends is not; publish exactly their txs' ancestors."""
    topo = f.topology
    if handed >= set(range(f.n_clients)):
        return [], [(None, 0)]
    taken = []
    for node in topo.nodes:
        input_handed = set(range(node.lo, node.hi)) <= handed
        for vout, spec in enumerate(f.outputs[node.index]):
            if spec.key_range and set(range(*spec.key_range)) <= handed and not input_handed:
                taken.append((node.index, vout))
    publish = sorted({a for n, _ in taken for a in topo.path(n)})
    return publish, taken


@pytest.mark.parametrize(
    ("n", "params"),
    [
        (4, BINARY),
        (4, FLAT),
        (8, BINARY),
        (8, ONE_PER_LEAF),
        (8, SPLIT_TOP),
        (16, WIDE),
        (13, BINARY),
    ],
)
def test_random_handovers_match_the_oracle(n: int, params: FactoryParams) -> None:
    f = people(n, params).factory
    rng = random.Random(n * 31 + len(f.topology.nodes))
    for _ in range(200):
        handed = {c for c in range(n) if rng.random() < rng.choice((0.3, 0.6, 0.9))}
        plan = partial_unroll(f, handed, dw.initial_states(f.topology))
        publish, taken = oracle(f, handed)
        assert published(plan) == publish, handed
        assert [(o.node, o.vout) for o in plan.spend] == taken, handed
        due = [
            child
            for n in publish
            if f.topology.nodes[n].kind is NodeKind.KICKOFF
            for vout, child in enumerate(f.topology.nodes[n].children)
            if child not in publish and (n, vout) not in taken
        ]
        assert list(plan.due) == sorted(due), handed
        # Never publish a node whose input is already all handed over; take every handed client.
        for step in plan.publish:
            node = f.topology.nodes[step.node]
            assert not set(range(node.lo, node.hi)) <= handed
        covered = {c for o in plan.spend for c in o.clients}
        assert covered <= handed
        leaves_handed = {
            c
            for leaf in f.topology.leaves
            if set(range(f.topology.nodes[leaf].lo, f.topology.nodes[leaf].hi)) <= handed
            for c in range(f.topology.nodes[leaf].lo, f.topology.nodes[leaf].hi)
        }
        assert leaves_handed <= covered, handed  # every fully handed-over leaf is reached
