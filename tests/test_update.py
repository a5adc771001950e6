"""DW state updates in the engine: the node an update moves, the new layout, what a client checks
before it signs one, and the orderings on Bitcoin Core's consensus (embedded kernel chain)."""

from __future__ import annotations

import dataclasses

import pytest

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, musig2, solvency
from superscalar_plugin.engine.ceremony import (
    ClientPolicy,
    Coordinator,
    Signer,
    run_ceremony,
    sign_in_process,
)
from superscalar_plugin.engine.errors import (
    FactoryExhausted,
    InvalidAmount,
    InvalidParameter,
    UnsafeToSign,
)
from superscalar_plugin.engine.solvency import BoundChannel, HeldChannel, SolvencyRefused
from superscalar_plugin.engine.tree import Factory, FactoryParams, NodeKind
from superscalar_plugin.engine.update import (
    UpdatePlan,
    plan_update,
    signing_phases,
    updated_factory,
)
from superscalar_plugin.plugin.lightningd.records import txid_of
from superscalar_plugin.plugin.updates.watch import superseded_race
from superscalar_plugin.simulate import agreed_terms, channel_script, make_factory, seckey

from adversarial.records import client_record

PARAMS = FactoryParams(states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10)
BIP68 = "bad-txns-nonfinal"
FUNDING = ("11" * 32, 0)


def four() -> tuple[Factory, tuple[bytes, ...], bytes]:
    p = make_factory(4, PARAMS, timeout_height=2000)
    return p.factory, p.client_seckeys, p.lsp_seckey


def new_scripts(f: Factory, plan: UpdatePlan, tag: str = "new") -> dict[int, bytes]:
    return {
        c: channel_script(musig2.pubkey_from_secret(seckey(tag, f"c{c}")), f.lsp_pubkey)
        for c in plan.clients
    }


# --- the shape and the odometer -----------------------------------------------------------------


def test_two_leaves_get_a_state_over_their_kickoff() -> None:
    f, _, _ = four()
    kinds = [n.kind for n in f.topology.nodes]
    assert kinds == [
        NodeKind.KICKOFF,
        NodeKind.STATE,
        NodeKind.KICKOFF,
        NodeKind.LEAF,
        NodeKind.LEAF,
    ]
    old = make_factory(4, dataclasses.replace(PARAMS, state_over_leaves=False), 2000).factory
    assert [n.kind for n in old.topology.nodes] == [NodeKind.KICKOFF, NodeKind.LEAF, NodeKind.LEAF]
    with pytest.raises(InvalidParameter, match="no DW state node covers"):
        dw.covering_state(old.topology, dw.initial_states(old.topology), [1, 2])


def test_the_covering_node_is_the_lowest_state_that_can_still_move() -> None:
    f, _, _ = four()
    topo = f.topology
    states = dw.initial_states(topo)
    assert dw.covering_state(topo, states, [3, 4]) == 1
    assert dw.covering_state(topo, states, [3]) == 3  # one leaf: its own state moves
    used = tuple(2 if n == 3 else s for n, s in enumerate(states))
    assert dw.covering_state(topo, used, [3]) == 1  # the leaf is used up: the one above
    spent = tuple(2 for _ in states)
    with pytest.raises(FactoryExhausted):
        dw.covering_state(topo, spent, [3, 4])


def test_advance_resets_below_and_updates_left_counts_down() -> None:
    f, _, _ = four()
    topo = f.topology
    states = dw.initial_states(topo)
    assert dw.updates_left(topo, states, 3) == 3 * 3 - 1
    a = dw.advance_node(topo, tuple(2 if n == 3 else s for n, s in enumerate(states)), 1)
    assert a.states[1] == 1 and a.states[3] == 0 and a.states[4] == 0
    assert dw.updates_left(topo, a.states, 3) == 1 * 3 + 2  # digits (1, 0) of base 3, counting down
    with pytest.raises(InvalidParameter, match="not a state"):
        dw.advance_node(topo, states, 0)


# --- the plan -------------------------------------------------------------------------------------


def test_stock_moves_between_leaves_and_the_node_spends_what_it_spent() -> None:
    f, _, _ = four()
    states = dw.initial_states(f.topology)
    # Client 0 bought 90,000 sat in leaf 3 (folded into its channel); leaf 3 asks for 60,000.
    plan = plan_update(f, states, [3, 4], {0: 90_000}, {3: 60_000})
    assert plan.node == 1 and plan.clients == (0, 1, 2, 3) and plan.leaves == (3, 4)
    assert plan.channel_sat[0] == f.channels[0][1] + 90_000
    assert plan.stock_of(f, 3) == 60_000
    assert plan.stock_of(f, 4) == 2 * PARAMS.stock_sat - 90_000 - 60_000
    new = updated_factory(f, plan, new_scripts(f, plan))
    assert new.input_amount(1) == f.input_amount(1)
    assert new.funding_amount == f.funding_amount
    assert new.stock_sat_of(3) == 60_000


def test_a_plan_that_leaves_a_leaf_below_dust_or_money_unassigned_is_refused() -> None:
    f, _, _ = four()
    states = dw.initial_states(f.topology)
    with pytest.raises(InvalidAmount, match="leaf 4 would hold"):
        plan_update(f, states, [3, 4], {}, {3: 2 * PARAMS.stock_sat - 100})
    with pytest.raises(InvalidAmount, match="unassigned"):
        plan_update(f, states, [3, 4], {}, {3: 1000, 4: 1000})
    with pytest.raises(InvalidParameter, match="no sales to fold"):
        plan_update(f, states, [3], {2: 1000})  # client 2 is not under leaf 3


def test_a_layout_that_would_change_the_parent_is_refused() -> None:
    f, _, _ = four()
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {})
    cheat = dataclasses.replace(plan, channel_sat={**plan.channel_sat, 0: plan.channel_sat[0] + 1})
    with pytest.raises(InvalidAmount, match="instead of"):
        updated_factory(f, cheat, new_scripts(f, plan))


# --- the client's checks through the wire ceremony ------------------------------------------------


def signed_signers(f: Factory, sks: tuple[bytes, ...], lsp: bytes) -> dict[int, Signer]:
    states = dw.initial_states(f.topology)
    signers = {
        c: Signer(sks[c], agreed_terms(f, c), ClientPolicy(require_channel_script=True))
        for c in range(f.n_clients)
    }
    run_ceremony(Coordinator(f, lsp, FUNDING, states), signers)
    assert all(s.signed_path for s in signers.values())
    return signers


def update_terms(f_new: Factory, plan: UpdatePlan, c: int):  # type: ignore[no-untyped-def]
    terms = agreed_terms(f_new, c)
    leaf = f_new.topology.leaf_of_client[c]
    return dataclasses.replace(terms, leaf_stock=plan.stock_of(f_new, leaf))


def test_clients_below_the_node_sign_the_newer_state_and_nothing_above_changes() -> None:
    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    old_paths = {c: [s.txid for s in signers[c].signed_path] for c in signers}
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {0: 0}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=plan.node)
    for nodes in signing_phases(new, plan.node):
        run_ceremony(Coordinator(new, lsp, FUNDING, plan.states, nodes), signers)
    for c in plan.clients:
        path = signers[c].signed_path
        assert path[0].txid == old_paths[c][0]  # the root kickoff is the same tx
        assert [s.txid for s in path[1:]] != old_paths[c][1:]
        assert signers[c].states[1] == 1
        assert path[1].unsigned.tx.inputs[0].sequence < PARAMS.state_delay(0)


def _lsp_update(f: Factory, new: Factory, plan: UpdatePlan, lsp: bytes) -> Coordinator:
    return Coordinator(new, lsp, FUNDING, plan.states, f.topology.subtree(plan.node))


def test_a_state_that_is_not_newer_is_refused() -> None:
    """The LSP re-signs a state node with different outputs in the SAME state (both versions
    would wait the same delay, and the old one could win the race), or leaves the state node
    alone and changes the kickoff below it (no DW ordering at all): both refused."""
    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    initial = dw.initial_states(f.topology)
    plan = plan_update(f, initial, [3], {})  # leaf 3 alone: node 3 moves
    same = dataclasses.replace(plan, states=initial)
    new = updated_factory(f, same, new_scripts(f, plan))
    signers[0].agree_update(update_terms(new, plan, 0))
    with pytest.raises(UnsafeToSign, match="state 0 is not newer than 0"):
        signers[0].receive(_lsp_update(f, new, same, lsp).start()[0])
    plan = plan_update(f, initial, [3, 4], {}, {3: 150_000})
    same = dataclasses.replace(plan, states=initial)
    new = updated_factory(f, same, new_scripts(f, plan))
    signers[0].agree_update(update_terms(new, plan, 0))
    with pytest.raises(UnsafeToSign, match="node 2 is a kickoff"):
        signers[0].receive(_lsp_update(f, new, same, lsp).start()[0])
    assert signers[0].signed_path and signers[0].states == dict.fromkeys((0, 1, 2, 3), 0)


def test_a_client_signs_no_update_it_did_not_agree_to() -> None:
    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {})
    new = updated_factory(f, plan, new_scripts(f, plan))
    request = _lsp_update(f, new, plan, lsp).start()[1]
    with pytest.raises(UnsafeToSign, match="already signed"):
        signers[1].receive(request)


def test_a_smaller_channel_or_another_node_than_agreed_is_refused() -> None:
    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {0: 50_000}, {3: 50_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    # Client 0 expects its channel to grow by what it bought; the LSP's tree pays the old amount.
    terms = dataclasses.replace(update_terms(new, plan, 0), channel_sat=f.channels[0][1] + 60_000)
    signers[0].agree_update(terms, node=plan.node)
    with pytest.raises(UnsafeToSign, match="our channel output pays"):
        signers[0].receive(_lsp_update(f, new, plan, lsp).start()[0])
    # Agreed to an update of leaf 3 alone; the request moves node 1.
    signers[0].agree_update(update_terms(new, plan, 0), node=3)
    with pytest.raises(UnsafeToSign, match="we agreed to node 3"):
        signers[0].receive(_lsp_update(f, new, plan, lsp).start()[0])


def test_the_solvency_guard_runs_on_the_bound_channel_before_any_nonce() -> None:
    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    leaf_tx = _lsp_update(f, new, plan, lsp).txs[3]
    seen: list[tuple[BoundChannel, bool]] = []

    def binder(txid: str, vout: int) -> BoundChannel:
        # a fake node database: the keys behind new_scripts' 2-of-2 for client 0
        key = musig2.pubkey_from_secret(seckey("new", "c0"))
        return BoundChannel("aa" * 32, key, f.lsp_pubkey, txid, vout, new.channels[0][1])

    def refuse(bound: BoundChannel, moved: bool) -> None:
        seen.append((bound, moved))
        old = (HeldChannel("bb" * 32, "CHANNELD_NORMAL", 5_000_000, 1),)
        new_ch = HeldChannel(bound.channel_id, "CHANNELD_NORMAL", 1000, 0)
        solvency.check_update_signature(old, new_ch, 1)

    signers[0].binder = binder
    signers[0].agree_update(dataclasses.replace(update_terms(new, plan, 0), channel_script=None),
                            node=plan.node, check=refuse)  # fmt: skip
    with pytest.raises(SolvencyRefused, match="htlcs"):
        signers[0].receive(_lsp_update(f, new, plan, lsp).start()[0])
    assert seen and seen[0][0].funding_txid == leaf_tx.txid and seen[0][1] is False
    assert not signers[0]._nonces  # no nonce was made


def test_update_signature_guard() -> None:
    old = (
        HeldChannel("aa" * 32, "CHANNELD_NORMAL", 3_000_000, 0),
        HeldChannel("bb" * 32, "CHANNELD_NORMAL", 2_000_000, 0),
    )
    ok = HeldChannel("cc" * 32, "CHANNELD_NORMAL", 1_000, 0)
    solvency.check_update_signature(old, ok, 2)  # the first ceremony: frozen, nothing in flight
    with pytest.raises(SolvencyRefused, match="old_channels"):
        solvency.check_update_signature(old[:1], ok, 2)
    with pytest.raises(SolvencyRefused, match="htlcs"):
        solvency.check_update_signature((dataclasses.replace(old[0], htlcs=1), old[1]), ok, 2)
    with pytest.raises(SolvencyRefused, match="new_channel"):
        solvency.check_update_signature(old, None, 2)
    # The moved node: our payment to ourselves waits in the new channel, all of it but the fee.
    busy = tuple(dataclasses.replace(c, htlcs=1) for c in old)
    # (the new channel opened with 1,000 msat; one old channel's reserve floor is allowed)
    solvency.check_update_signature(busy, ok, 2, 4_998_000 - 546_000, 5_000_000, 1_000)
    with pytest.raises(SolvencyRefused, match="balance_short"):
        solvency.check_update_signature(busy, ok, 2, 4_997_999 - 546_000, 5_000_000, 1_000)
    with pytest.raises(SolvencyRefused, match="balance_short"):
        solvency.check_update_signature(busy, ok, 2, 0, 5_000_000, 1_000)


# --- consensus: the newer state confirms first ----------------------------------------------------


def test_the_newer_state_confirms_before_the_superseded_one(kernel_chain: KernelChain) -> None:
    """The LSP publishes the root kickoff and waits to put the OLD state node on chain; the
    newer one's shorter relative lock lets it confirm first, and the old one is then a
    double spend. Below it, the new leaves pay the new channels and the moved stock."""
    chain = kernel_chain
    p = make_factory(4, PARAMS, timeout_height=2000)
    f = p.factory
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    states = dw.initial_states(f.topology)
    old = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    plan = plan_update(f, states, [3, 4], {}, {3: 150_000})
    new_f = updated_factory(f, plan, new_scripts(f, plan))
    new = sign_in_process(
        new_f, outpoint, plan.states, p.lsp_seckey, p.client_seckeys, f.topology.subtree(1)
    )
    assert new[1].txid != old[1].txid
    kickoff = chain.mine([old[0].raw()])
    assert kickoff.accepted
    new_delay, old_delay = PARAMS.state_delay(1), PARAMS.state_delay(0)
    assert new_delay < old_delay
    chain.mine_empty(new_delay - 1)
    assert chain.height + 1 == kickoff.height + new_delay
    early_old = chain.mine([old[1].raw()])
    assert not early_old.accepted and early_old.reason == BIP68
    result = chain.mine([new[1].raw()])
    assert result.accepted, (result.reason, result.detail)
    chain.mine_empty(old_delay)
    late_old = chain.mine([old[1].raw()])
    assert not late_old.accepted  # its input is spent by the newer state
    # The newer subtree goes on: kickoff, then leaf 3 paying client 0's new channel.
    assert chain.mine([new[2].raw()]).accepted
    chain.mine_empty(PARAMS.state_delay(0))
    leaf = chain.mine([new[3].raw()])
    assert leaf.accepted, (leaf.reason, leaf.detail)
    assert chain.utxo(new[3].txid, 0) == (new_f.channels[0][1], new_f.channels[0][0])
    assert chain.utxo(new[3].txid, 2)[0] == 150_000


# --- the watch: a superseded state is harmless only if the newest confirms first ---------------


def test_a_client_publishes_its_newest_path_once_an_updated_tree_goes_on_chain() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))

    record = client_record()
    root = txid_of(record.path[0].raw)
    on_chain = record.replace(confirmed=((root, 100),))
    assert superseded_race(on_chain) is None  # never updated: no older state to race
    updated = on_chain.replace(
        path=tuple(dataclasses.replace(e, state=1) if e.node == 1 else e for e in record.path)
    )
    assert superseded_race(updated) is not None and "node 0" in str(superseded_race(updated))
    assert superseded_race(updated.replace(confirmed=())) is None  # nothing on chain yet


def test_the_moved_node_is_signed_only_once_everything_below_it_is_ours() -> None:
    """Red-team hole 1: an LSP that completes the moved state node and withholds the rest would
    hold the only new state (its shorter lock beats our old path) and strand us. So we sign
    bottom-up: asked for the moved node first, we give nonces for the txs below it only; asked
    for it later with other txs below, we refuse."""
    from superscalar_plugin.engine import wire

    f, sks, lsp = four()
    signers = signed_signers(f, sks, lsp)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    signers[0].agree_update(update_terms(new, plan, 0), node=plan.node)
    moved_first = Coordinator(new, lsp, FUNDING, plan.states, [plan.node])
    reply = signers[0].receive(moved_first.start()[0])
    assert reply is not None
    nonces = wire.decode(reply)
    assert isinstance(nonces, wire.NodeValues)
    assert {n for n, _ in nonces.values} == {2, 3}  # below the moved node 1, on our path
    assert not signers[0].signing_moved_node
    # The honest order, then a second request for the moved node over OTHER txs below it.
    signers[0].forget()
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=plan.node)
    below, moved = signing_phases(new, plan.node)
    run_ceremony(Coordinator(new, lsp, FUNDING, plan.states, below), signers)
    assert set(signers[0].below) == {2, 3} and signers[0].states[1] == 0  # nothing stored yet
    # Our leaf-mate's new channel differs: our leaf (below the moved node) is another tx.
    scripts = {**new_scripts(f, plan), 1: new_scripts(f, plan, tag="other")[1]}
    other = updated_factory(f, plan, scripts)
    with pytest.raises(UnsafeToSign, match="another state than we signed below"):
        signers[0].receive(Coordinator(other, lsp, FUNDING, plan.states, moved).start()[0])


def test_the_swap_hook_holds_pending_and_superseded_swaps_and_settles_replays() -> None:
    """The htlc_accepted hook answers from sets built off the hot path: a pending swap (also of
    an update we signed and that a later one superseded: the LSP may still hold its state) is
    held, a settled one replayed after a restart continues, any other HTLC is not ours."""
    from superscalar_plugin.engine.update_store import ClientUpdate
    from superscalar_plugin.plugin.updates.swap import SwapHolder

    class Req:
        def __init__(self) -> None:
            self.result: dict[str, str] | None = None

        def set_result(self, r: dict[str, str]) -> None:
            self.result = r

        def set_exception(self, e: Exception) -> None:
            raise AssertionError(e)

    def upd(h: str) -> ClientUpdate:
        return ClientUpdate("cc" * 32, 1, 1, 100_000, 0, 100_000, ("dd" * 32,), swap_hashes=(h,))

    record = client_record().replace(
        update=upd("11" * 32), superseded=(upd("22" * 32),), swaps_settled=("33" * 32,)
    )
    swaps = SwapHolder()
    swaps.track([record])
    held, old, done, other = Req(), Req(), Req(), Req()
    assert swaps.hold({"payment_hash": "11" * 32, "amount_msat": 5}, held) and not held.result
    assert swaps.hold({"payment_hash": "22" * 32, "amount_msat": 5}, old) and not old.result
    assert swaps.hold({"payment_hash": "33" * 32}, done) and done.result == {"result": "continue"}
    assert not swaps.hold({"payment_hash": "44" * 32}, other)
    assert swaps.held_msat(("11" * 32, "22" * 32)) == 10
    swaps.fail(("11" * 32,))
    assert held.result is not None and held.result["result"] == "fail"
