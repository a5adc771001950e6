"""Red-team attacks, round 12: round 11's fix (no sale while a DW update of one's own is in flight,
`Cosigner._check_live` on `record.update`; a buyer keeps a priced purchase whose signature could
not leave, `Cosigner._drop_unsent`) and the sale/update interplay around it.

Each test asserts the safe outcome. Both holes (1 and its consequence for sales) were open when the
round ran; each is defended since: a client signs no update below a node whose newer state it
signed in an update that never completed (`client_checks.update_phase`; the plugin refuses such an
UPDATE at once), and co-signs no sale while such a state may be held.

Topology used here (16 clients, one per leaf, arity 2): two DW layers on every path,
kickoff 0 -> state 1 -> kickoff 2 -> state 3 -> kickoff 4 -> leaves 5 (c0), 6 (c1); state 1 covers
clients 0-7, state 3 clients 0-3.
"""

from __future__ import annotations

import dataclasses

import pytest

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, store
from superscalar_plugin.engine.ceremony import Coordinator, run_ceremony
from superscalar_plugin.engine.errors import CeremonyError, UnsafeSale, UnsafeToSign
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.engine.update import plan_update, signing_phases, updated_factory
from superscalar_plugin.engine.update_store import ClientUpdate
from superscalar_plugin.simulate import make_factory

from adversarial.test_red_team_update import (
    ceremony_withholding_signatures,
    new_scripts,
    restored,
    signed_signers,
    update_terms,
)
from adversarial.test_red_team_update2 import _client_record

PARAMS16 = FactoryParams(
    states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10, clients_per_leaf=1
)


def _sixteen():  # type: ignore[no-untyped-def]
    p = make_factory(16, PARAMS16, timeout_height=2000)
    return p.factory, p.client_seckeys, p.lsp_seckey


def _leaves_under(f, node: int) -> list[int]:  # type: ignore[no-untyped-def]
    topo = f.topology
    return [n for n in topo.subtree(node) if n in set(topo.leaves)]


def withheld_update(f, signers, lsp, outpoint, node: int):  # type: ignore[no-untyped-def]
    """Update "A" of state node `node` from the initial states: every client below it signs,
    bottom-up; the LSP aggregates the moved node's final signature and sends it to nobody
    (ABORT). Its plan, the updated factory and the moved node's coordinator (`signed`: what the
    LSP holds)."""
    plan = plan_update(f, dw.initial_states(f.topology), _leaves_under(f, node), {})
    assert plan.node == node
    new = updated_factory(f, plan, new_scripts(f, plan, "A"))
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=node, state=plan.states[node])
    below, moved = signing_phases(new, node)
    run_ceremony(Coordinator(new, lsp, outpoint, plan.states, below), signers)
    coord = Coordinator(new, lsp, outpoint, plan.states, moved)
    ceremony_withholding_signatures(coord, signers)  # the LSP holds the moved node, complete
    return plan, new, coord


def _ancestor_then_descendant(chain: KernelChain):  # type: ignore[no-untyped-def]
    """Update A moves the TOP state node 1 (every client below it signs, bottom-up); the hostile
    LSP takes every partial signature of node 1, aggregates its final signature and sends it to
    nobody (ABORT). Each client keeps A as its signed pending update (`spent` = {1: 1}).

    Update B then moves the LOWER state node 3 (c0-c3), built on node 1 at its OLD state 0, as
    each client's stored path still says. What the plugin does on that UPDATE: `_check` lets a
    new session in because the pending one is `signed` (A becomes `superseded`), `_signer`
    counts A's state as spent only for A's own node (`signer.spent[s.node]`), and
    `client_checks.update_phase` compares only the moved node (3) with `spent`. Returns what
    each step left."""
    f, sks, lsp = _sixteen()
    topo = f.topology
    assert [topo.nodes[n].kind.value for n in topo.path(topo.leaf_of_client[0])] == [
        "kickoff",
        "state",
        "kickoff",
        "state",
        "kickoff",
        "leaf",
    ]
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    signers = signed_signers(f, sks, lsp, outpoint)
    initial = dw.initial_states(topo)

    plan_a, _new_a, coord_a = withheld_update(f, signers, lsp, outpoint, 1)
    assert signers[0].spent == {1: plan_a.states[1]}
    assert signers[0].states[1] == 0  # c0's stored path: node 1 still at state 0

    plan_b = plan_update(f, initial, _leaves_under(f, 3), {})
    assert plan_b.node == 3 and plan_b.states[1] == 0
    new_b = updated_factory(f, plan_b, new_scripts(f, plan_b, "B"))
    fresh = {c: restored(signers[c], f, c) for c in plan_b.clients}
    for c in plan_b.clients:
        fresh[c].agree_update(update_terms(new_b, plan_b, c), node=3, state=plan_b.states[3])
    refused = None
    try:
        for nodes in signing_phases(new_b, 3):
            run_ceremony(Coordinator(new_b, lsp, outpoint, plan_b.states, nodes), fresh)
    except (UnsafeToSign, CeremonyError) as e:
        refused = e
    return f, signers, fresh, coord_a, plan_a, refused


# --- 1. a superseded update of an ANCESTOR state node outlives the newer state -------------------


def test_a_withheld_update_of_a_higher_state_node_cannot_void_a_later_update(
    kernel_chain: KernelChain,
) -> None:
    """Hostile LSP, 16 clients. A (node 1 -> state 1) is signed by every client below node 1 and
    its final signature withheld (the README: "the LSP may hold the new state whatever it says
    next ... counts that state as spent (a later update must move past it)"). B (node 3 -> state
    1, node 1 left at state 0) is accepted and stored by c0-c3: from then on c0 uses B's channel
    (it receives payments in it, it buys inbound liquidity from B's leaf stock: round 11 lets
    that sale in, `record.update` is None once B is stored, A only `superseded`).

    The README's safety argument ("its newest state node waits one step less than the
    superseded one after the same parent") holds for the SAME node only. Here the superseded
    state is node 1 at state 1, an ANCESTOR of B's moved node: it waits LESS than node 1 at
    state 0, which is what c0's newest path (B) holds. The LSP publishes the root kickoff and,
    3 blocks later, A's node 1: c0's path (node 1 at state 0 needs 6 blocks) is a double spend
    from node 1 down. B's channel (all c0 received after B) and any sale of B's leaf stock, with
    its burn, never reach the chain; A's leaves carry c0's balance as it was at A's time (and
    the plugin's `on_block` then adopts A from the block, `_store` writing `sales=()`). The safe
    outcome: B refused while a state c0 signed above B's moved node may be held, or c0's B
    path still confirms."""
    chain = kernel_chain
    _f, _signers, fresh, _coord_a, _plan_a, refused = _ancestor_then_descendant(chain)
    assert refused is not None and "could be voided" in str(refused), refused
    # B was never fully signed, so c0 stored nothing of it: if the LSP publishes A's node 1,
    # c0 adopts A from the block with the txs below it that it holds signed (`below`).
    assert all(c.states[3] == 0 for c in fresh.values())


def test_no_sale_while_a_state_we_signed_above_our_leaf_may_be_held(
    kernel_chain: KernelChain,
) -> None:
    """The record c0 holds after the attack above, B stored: `update` None, A (node 1, signed,
    `moved` and `below` kept) in `superseded`. Round 11's guard (`Cosigner._check_live`) reads
    `record.update` only, so c0 co-signs and BUYS from B's leaf stock: a paid purchase whose
    last signature the LSP withholds leaves c0 a burn of a stock output that the LSP's A (on
    chain 3 blocks after the root kickoff) keeps off the chain forever; the LSP keeps the price
    and A's fresh, unsold stock, and c0's `on_block` adopts A with `sales=()`. Safe outcome:
    no sale (UnsafeSale) while such a superseded update exists."""
    from superscalar_plugin.plugin.sales.cosign import Cosigner

    f, _signers, fresh, coord_a, plan_a, _refused = _ancestor_then_descendant(kernel_chain)
    # Such a record no longer arises from B (refused above), but one written before the fix can
    # hold it, as can any signed update the LSP withholds: no sale while it may be published.
    a = ClientUpdate(
        "aa" * 32,
        1,
        plan_a.states[1],
        f.channels[0][1],
        0,
        10_000,
        ("cc" * 32,),
        signed=True,
        moved=store.PathEntry(1, plan_a.states[1], coord_a.signed[1].raw().hex(), 0, "00"),
    )
    record = _client_record(fresh[0], f, 0, superseded=(a,))
    assert record.update is None and record.superseded
    with pytest.raises(UnsafeSale, match="a DW update of ours is in flight"):
        Cosigner._check_live(object(), record)  # type: ignore[arg-type]
    past = _client_record(fresh[0], f, 0, superseded=(dataclasses.replace(a, state=0),))
    Cosigner._check_live(object(), past)  # type: ignore[arg-type]  # a state we moved past


# --- 2. round 11's guard itself (regressions, passing) -------------------------------------------


def test_a_pending_update_stops_every_sale_step_but_the_last_signature(
    kernel_chain: KernelChain,
) -> None:
    """Round 11's guard, as a co-signer and as a buyer: with an update of ours agreed (not
    signed) or signed (held by the LSP), `_check_live` refuses OFFER, SALE, AGG_NONCES and
    BURN_SIG alike, so no purchase is recorded (and no burn stored) that the update could drop.
    (SALE_SIG is not refused: completing a sale we hold is always safe.)"""
    from superscalar_plugin.plugin.sales.cosign import Cosigner

    f, signers, _fresh, _coord_a, plan_a, _refused = _ancestor_then_descendant(kernel_chain)
    for signed in (False, True):
        u = ClientUpdate(
            "aa" * 32, 1, plan_a.states[1], f.channels[0][1], 0, 10_000, ("cc" * 32,), signed=signed
        )
        record = _client_record(signers[0], f, 0, update=u)
        with pytest.raises(UnsafeSale, match="DW update of ours is in flight"):
            Cosigner._check_live(object(), record)  # type: ignore[arg-type]
    record = _client_record(signers[0], f, 0)
    Cosigner._check_live(object(), record)  # type: ignore[arg-type]  # no update: allowed


def test_the_plugin_refuses_at_once_an_update_below_a_state_it_may_have_given_away() -> None:
    """The plugin's own check on UPDATE (before anything is frozen): with our update of node 1
    signed and never stored, an UPDATE of a node below it is refused naming why; one of node 1
    itself (moving past the held state) passes every check of `_check`."""
    from superscalar_plugin.engine import protocol
    from superscalar_plugin.plugin.updates.client import UpdateClient, UpdateRefused

    from adversarial.records import client_record

    record = client_record().replace(state=store.ClientState.FUNDED)
    held = ClientUpdate("aa" * 32, 1, 1, 200_000, 0, 10_000, ("cc" * 32,), signed=True)
    record = record.replace(update=held)

    class Node:
        def channels(self) -> dict[str, dict[str, object]]:
            return {}

        def payment(self, _hash: str) -> None:
            return None

    class Me:
        _node = Node()

    def update(node: int) -> protocol.Update:
        return protocol.Update(bytes(32), bytes([0xBB]) * 32, node, 2, 200_000, 0, 10_000, ())

    with pytest.raises(UpdateRefused, match="node 1 may still go on chain at state 1"):
        UpdateClient._check(Me(), record, update(3))  # type: ignore[arg-type]
    UpdateClient._check(Me(), record, update(1))  # type: ignore[arg-type]  # moves past it
