"""Red team, round 3: the Decker-Wattenhofer state update (`factory-update`).

A hostile LSP (then a hostile co-client or a stranger) tries to take a client's money, or the
LSP's, through the update flow. Every test asserts that the honest party's money is safe: a test
that FAILS is an attack that works (a hole, described in its docstring); one that passes is a
regression test of a check that held.

Topology of `four()`: kickoff 0 -> DW state 1 -> kickoff 2 -> leaves 3 (clients 0, 1) and 4
(clients 2, 3). An update of both leaves moves state node 1 to state 1.

Holes found by this review, each fixed and kept here as a regression test:
- final-signature withholding: one batched ceremony over the moved state node and everything
  below it let the LSP (the last aggregator) hold the new state while clients held none of it,
  then publish it. Fixed by signing bottom-up (`update.signing_phases`): the client gives its
  signature of the moved node only once it holds every tx below it fully signed, and adopts the
  moved node from the block if the LSP publishes it
  (`test_lsp_withholding_final_signatures_cannot_strand_the_client`); the LSP sends the moved
  node's signature again at every block until STORED, across its restarts
  (`test_final_signatures_lost_then_lsp_restart_leave_the_client_a_path`);
- DW state reuse: a state the client sent its moved-node signature for was not treated as used.
  Fixed: it is spent (`Signer.spent`, from the record's pending and superseded updates), a later
  update must move past it
  (`test_same_state_index_resigned_after_a_withheld_update_is_refused`);
- griefing: a co-client stalling after the nonces froze its co-clients' channels. With the
  bottom-up order a stall before the moved node's partial signatures leaves nothing that could
  complete, and the others are unfrozen
  (`test_a_co_client_stalling_after_the_nonces_does_not_freeze_honest_clients`); a stall after
  them still keeps their old channels frozen (money safe in both states) until a later update or
  their exit: README, "Moving stock between leaves".
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, musig2, protocol, wire
from superscalar_plugin.engine.ceremony import (
    ClientPolicy,
    Coordinator,
    CoordinatorState,
    Signer,
    SignerState,
    run_ceremony,
)
from superscalar_plugin.engine.errors import AlreadySigned, CeremonyError, UnsafeToSign
from superscalar_plugin.engine.tree import Factory, FactoryParams
from superscalar_plugin.engine.update import (
    UpdatePlan,
    plan_update,
    signing_phases,
    updated_factory,
)
from superscalar_plugin.simulate import agreed_terms, channel_script, make_factory, seckey

PARAMS = FactoryParams(states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10)
BIP68 = "bad-txns-nonfinal"


# --- engine helpers ---------------------------------------------------------------------------


def four() -> tuple[Factory, tuple[bytes, ...], bytes]:
    p = make_factory(4, PARAMS, timeout_height=2000)
    return p.factory, p.client_seckeys, p.lsp_seckey


def new_scripts(f: Factory, plan: UpdatePlan, tag: str = "new") -> dict[int, bytes]:
    return {
        c: channel_script(musig2.pubkey_from_secret(seckey(tag, f"c{c}")), f.lsp_pubkey)
        for c in plan.clients
    }


def signed_signers(
    f: Factory, sks: tuple[bytes, ...], lsp: bytes, outpoint: tuple[str, int]
) -> dict[int, Signer]:
    states = dw.initial_states(f.topology)
    signers = {
        c: Signer(sks[c], agreed_terms(f, c), ClientPolicy(require_channel_script=True))
        for c in range(f.n_clients)
    }
    run_ceremony(Coordinator(f, lsp, outpoint, states), signers)
    assert all(s.signed_path for s in signers.values())
    return signers


def update_terms(f_new: Factory, plan: UpdatePlan, c: int):  # type: ignore[no-untyped-def]
    terms = agreed_terms(f_new, c)
    leaf = f_new.topology.leaf_of_client[c]
    return dataclasses.replace(terms, leaf_stock=plan.stock_of(f_new, leaf))


def restored(signer: Signer, f: Factory, c: int) -> Signer:
    """What the plugin does on every UPDATE (`UpdateClient._signer`): a fresh Signer restored
    from the stored path and odometer (the path the client holds final signatures for)."""
    assert signer.header is not None
    fresh = Signer.restore(
        signer.seckey,
        agreed_terms(f, c),
        ClientPolicy(require_channel_script=True),
        signer.header,
        list(signer.signed_path),
        dict(signer.states),
    )
    fresh.spent = dict(signer.spent)  # persisted as the record's pending/superseded updates
    return fresh


def ceremony_withholding_signatures(coordinator: Coordinator, signers: dict[int, Signer]) -> None:
    """A hostile LSP: nonces, aggregate nonces, partial signatures; every final signature
    aggregated on its side (`coordinator.signed`), and none sent to the clients. Then ABORT."""
    replies = {c: signers[c].receive(m) for c, m in coordinator.start().items()}
    agg: dict[int, bytes] = {}
    for c, r in replies.items():
        assert r is not None
        agg.update(coordinator.receive(c, r))
    psigs = {c: signers[c].receive(m) for c, m in agg.items()}
    final: dict[int, bytes] = {}
    for c, r in psigs.items():
        assert r is not None
        final.update(coordinator.receive(c, r))
    assert coordinator.state is CoordinatorState.DONE and final  # the LSP holds the new state
    for c, m in coordinator.abort("changed my mind").items():  # SIGNATURES never leave
        signers[c].receive(m)


def publish_path(chain: KernelChain, path: list[Any], start: int = 0) -> list[str]:
    """Publish a client's signed path from `start` on, each tx as soon as its relative lock
    allows (up to 40 blocks of waiting each); returns the rejection reasons (empty: all on
    chain)."""
    failures = []
    for s in path[start:]:
        for _ in range(40):
            r = chain.mine([s.raw()])
            if r.accepted:
                break
            if r.reason != BIP68:
                failures.append(f"node {s.node}: {r.reason}")
                break
            chain.mine_empty(1)
        else:
            failures.append(f"node {s.node}: never final")
    return failures


# --- 1. the LSP withholds the final signatures, then publishes the new state ------------------


def test_lsp_withholding_final_signatures_cannot_strand_the_client(
    kernel_chain: KernelChain,
) -> None:
    """HOLE (last-aggregator advantage). The update is signed in ONE batched MuSig2 ceremony
    over state node 1 AND every node below it. The LSP aggregates last: once every client's
    partial signatures are in, it holds the whole new subtree fully signed, and it simply never
    sends SIGNATURES (then ABORT). Each client has `update.signed` and keeps its old channels
    frozen, "its money in both states" - but it holds no signature of the new state at all.

    The LSP publishes the root kickoff and then its NEW state 1, whose relative lock is shorter
    than the old state 1 the client holds: the new one confirms first and the client's old path
    is a double spend from node 1 down. The client holds no signature for the new kickoff 2 or
    the new leaves, so neither its old channel nor its new one can ever reach the chain; node 1's
    output carries the LSP's timeout leaf, so at T the LSP sweeps every client's money below it.

    Honest behaviour would need the nodes below the moved state signed (and their final
    signatures in the clients' hands) before any client's partial signature of the moved state
    node leaves, i.e. a bottom-up ceremony; this test fails while the batch stays as it is."""
    chain = kernel_chain
    f, sks, lsp = four()
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    signers = signed_signers(f, sks, lsp, outpoint)
    old_path = list(signers[0].signed_path)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=plan.node)
    below, moved = signing_phases(new, plan.node)
    run_ceremony(Coordinator(new, lsp, outpoint, plan.states, below), signers)
    coordinator = Coordinator(new, lsp, outpoint, plan.states, moved)
    ceremony_withholding_signatures(coordinator, signers)
    assert [s.txid for s in signers[0].signed_path] == [s.txid for s in old_path]

    # The LSP unrolls: the root kickoff (the same tx in both states), then its new state 1.
    assert chain.mine([old_path[0].raw()]).accepted
    chain.mine_empty(PARAMS.state_delay(1) - 1)
    assert chain.mine([coordinator.signed[1].raw()]).accepted
    # The client publishes what it holds below the moved node (signed first, bottom-up; the
    # plugin adopts the moved node from the block and its exit publishes the rest).
    mine = [signers[0].below[n] for n in sorted(signers[0].below)]
    failures = publish_path(chain, mine)
    leaf = mine[-1]
    assert not failures and chain.utxo(leaf.txid, 0) is not None, (
        "client 0 holds no path to its channel once the LSP published the state it withheld:"
        f" {failures}"
    )


# --- 2. the same state index twice, with different outputs ------------------------------------


def test_same_state_index_resigned_after_a_withheld_update_is_refused(
    kernel_chain: KernelChain,
) -> None:
    """HOLE (DW state reuse). After update A (state 1 of node 1) collected the clients' partial
    signatures and was ABORTed with its final signatures withheld, each client's stored path is
    still at state 0 (it never received A's signatures), and the plugin restores its Signer from
    that path on the next UPDATE (`UpdateClient._signer`); `UpdateClient._check` compares the
    new state with the stored path's too, and lets a new session in because the pending one is
    `signed`. So update B at the SAME state 1, with different outputs, is accepted and signed.

    Two versions of node 1 at state 1 then exist with the same relative lock: the newer one no
    longer wins the race. The LSP publishes A's version first; B's (the one the client stored and
    whose new channel it has been using since) is then a double spend. Whatever the client
    received in B's channel is gone. A client must treat a state it sent partial signatures for
    as used: a later update must move past it."""
    chain = kernel_chain
    f, sks, lsp = four()
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    signers = signed_signers(f, sks, lsp, outpoint)
    initial = dw.initial_states(f.topology)
    plan_a = plan_update(f, initial, [3, 4], {}, {3: 150_000})
    new_a = updated_factory(f, plan_a, new_scripts(f, plan_a, "A"))
    for c in plan_a.clients:
        signers[c].agree_update(update_terms(new_a, plan_a, c), node=plan_a.node)
    below, moved = signing_phases(new_a, plan_a.node)
    run_ceremony(Coordinator(new_a, lsp, outpoint, plan_a.states, below), signers)
    coord_a = Coordinator(new_a, lsp, outpoint, plan_a.states, moved)
    ceremony_withholding_signatures(coord_a, signers)

    # Update B: the same state 1, other channels and another stock split.
    plan_b = plan_update(f, initial, [3, 4], {}, {3: 50_000})
    assert plan_b.states == plan_a.states
    new_b = updated_factory(f, plan_b, new_scripts(f, plan_b, "B"))
    fresh = {c: restored(signers[c], f, c) for c in plan_b.clients}
    for c in plan_b.clients:
        fresh[c].agree_update(update_terms(new_b, plan_b, c), node=plan_b.node)
    refused = False
    try:
        for nodes in signing_phases(new_b, plan_b.node):
            run_ceremony(Coordinator(new_b, lsp, outpoint, plan_b.states, nodes), fresh)
    except (UnsafeToSign, CeremonyError):
        refused = True
    if refused:
        return
    # B went through: the client stored it. Node 1 itself is the same tx in A and B (same
    # state, same single output to kickoff 2), so the versions differ first at kickoff 2, which
    # has no relative lock at all: whoever publishes first wins. The LSP publishes A's.
    assert fresh[0].states[1] == 1
    assert fresh[0].signed_path[1].txid == coord_a.signed[1].txid
    assert fresh[0].signed_path[2].txid != coord_a.signed[2].txid
    assert chain.mine([fresh[0].signed_path[0].raw()]).accepted
    chain.mine_empty(PARAMS.state_delay(1) - 1)
    assert chain.mine([coord_a.signed[1].raw()]).accepted
    assert chain.mine([coord_a.signed[2].raw()]).accepted
    failures = publish_path(chain, fresh[0].signed_path, start=2)
    pytest.fail(
        "client 0 signed state 1 of node 1 twice (updates A and B); the LSP published A's and"
        f" client 0's stored path B cannot follow: {failures}"
    )


# --- 3. replays and requests the client did not agree to (regressions) -------------------------


def test_replayed_sign_requests_are_refused() -> None:
    """The creation SIGN_REQUEST replayed into an agreed update (nothing newer: refused), the
    update's own SIGN_REQUEST replayed after it completed (no agreement: refused), and a request
    for an update the client never agreed to (refused)."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    creation = Coordinator(f, lsp, outpoint, dw.initial_states(f.topology))
    old_requests = creation.start()
    signers = {
        c: Signer(sks[c], agreed_terms(f, c), ClientPolicy(require_channel_script=True))
        for c in range(4)
    }
    run_ceremony(creation, signers)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    # not agreed
    unagreed = Coordinator(new, lsp, outpoint, plan.states, f.topology.subtree(1)).start()
    with pytest.raises(AlreadySigned):
        signers[0].receive(unagreed[0])
    # agreed, but the LSP replays the creation request (state 0 everywhere)
    signers[0].agree_update(update_terms(new, plan, 0), node=plan.node)
    with pytest.raises(UnsafeToSign):
        signers[0].receive(old_requests[0])
    # the agreement was consumed by that request: the real one is refused now too
    with pytest.raises(AlreadySigned):
        signers[0].receive(unagreed[0])
    # the update completes; its request replayed afterwards
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=plan.node)
    phases = [
        Coordinator(new, lsp, outpoint, plan.states, nodes)
        for nodes in signing_phases(new, plan.node)
    ]
    requests = phases[-1].start()
    for coord in phases:
        run_ceremony(coord, signers)
    assert signers[0].states[1] == 1
    with pytest.raises(AlreadySigned):
        signers[0].receive(requests[0])
    # and agreed to a later update, the replay (state 1, already held) is not newer
    signers[0].agree_update(update_terms(new, plan, 0), node=plan.node)
    with pytest.raises(UnsafeToSign, match=r"nothing changed|not newer"):
        signers[0].receive(requests[0])
    assert signers[0].state is SignerState.DONE and signers[0].states[1] == 1


def test_a_leaf_mates_channel_shrunk_or_the_stock_moved_is_refused_by_its_owner() -> None:
    """The LSP pays client 1 (client 0's leaf-mate) less in the new leaf and gives the
    difference to the stock, or moves client 2's leaf stock off what UPDATE named: each victim
    checks its own output and its leaf's stock exactly (`check_path`), and a tx every client
    of the leaf must sign cannot be completed without it."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers = signed_signers(f, sks, lsp, outpoint)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    honest = updated_factory(f, plan, new_scripts(f, plan))
    # client 1's channel 10,000 sat smaller; leaf 3's stock 10,000 larger
    cheat_plan = dataclasses.replace(
        plan,
        channel_sat={**plan.channel_sat, 1: plan.channel_sat[1] - 10_000},
        stocks=(plan.stocks[0] + 10_000, plan.stocks[1]),
    )
    cheat = updated_factory(f, cheat_plan, new_scripts(f, plan))
    signers[1].agree_update(update_terms(honest, plan, 1), node=plan.node)
    req = Coordinator(cheat, lsp, outpoint, plan.states, f.topology.subtree(1)).start()
    with pytest.raises(UnsafeToSign, match=r"our channel output pays|stock"):
        signers[1].receive(req[1])
    # client 2 was told leaf 4 keeps plan's stock; the tree moves 1,000 sat of it to leaf 3
    moved = dataclasses.replace(plan, stocks=(plan.stocks[0] + 1000, plan.stocks[1] - 1000))
    cheat2 = updated_factory(f, moved, new_scripts(f, plan))
    signers[2].agree_update(update_terms(honest, plan, 2), node=plan.node)
    req2 = Coordinator(cheat2, lsp, outpoint, plan.states, f.topology.subtree(1)).start()
    with pytest.raises(UnsafeToSign, match="stock"):
        signers[2].receive(req2[2])


def test_an_update_that_changes_a_node_above_the_moved_state_is_refused() -> None:
    """The LSP says it moves leaf 3's own state but re-signs from state node 1 (changing what
    client 2 and 3's leaf hangs off too), or bumps node 1 while claiming node 3: refused
    (`expected` node)."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers = signed_signers(f, sks, lsp, outpoint)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan))
    signers[0].agree_update(update_terms(new, plan, 0), node=3)
    req = Coordinator(new, lsp, outpoint, plan.states, f.topology.subtree(1)).start()
    with pytest.raises(UnsafeToSign, match="we agreed to node 3"):
        signers[0].receive(req[0])


# --- harness: real plugin processes ------------------------------------------------------------

from fuzz_protocol import flows  # noqa: E402
from fuzz_protocol.world import World  # noqa: E402

from adversarial.plugin_hostile import pig, unpig  # noqa: E402
from harness.network import SUPERSCALAR_PLUGIN, Network  # noqa: E402
from harness.node import FakeNode  # noqa: E402

SHAPE = {
    "superscalar-ceremony-timeout": 6,
    "superscalar-states-per-layer": 3,
    "superscalar-step-blocks": 3,
    "superscalar-dying-blocks": 10,
    "superscalar-lifetime-blocks": 300,
}


def _world(base: Path, co: int | None = None) -> World:
    net = Network(base, plugin=SUPERSCALAR_PLUGIN, timeout=30)
    lsp = net.add_node("lsp", options=SHAPE)
    clients = net.add_nodes(
        ["c0", "c1", "c2", "c3"], options={**SHAPE, "superscalar-accept-from": lsp.node_id}
    )
    net.add_node("stranger", options=SHAPE)
    for c in clients:
        net.connect(lsp, c)
    return World(net, lsp, clients, None if co is None else clients[co])


def _funded(world: World) -> str:
    out = flows.create(world)
    assert out.startswith("created"), out
    for _ in range(3):
        flows.confirm(world)
    assert world.instance is not None
    return world.instance


def _status(node: FakeNode, inst: str) -> dict[str, Any]:
    view = flows.status(node, inst)
    assert view is not None
    return view


def _channels(node: FakeNode, peer: str) -> dict[str, dict[str, Any]]:
    chans = node.rpc_call("listpeerchannels", {"id": peer})["channels"]
    return {str(ch["channel_id"]): ch for ch in chans}


def _msat(v: Any) -> int:
    return int(str(v).removesuffix("msat"))


def _tap(world: World) -> list[tuple[str, str, protocol.Payload | None]]:
    """Record every message between nodes (after the world's own filters)."""
    seen: list[tuple[str, str, protocol.Payload | None]] = []
    inner = world.net.intercept

    def tap(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        out = inner(src, dst, msg_hex) if inner is not None else msg_hex
        if out is not None:
            seen.append((src.name, dst.name, unpig(out)))
        return out

    world.net.intercept = tap
    return seen


def test_forged_updates_are_refused_and_freeze_nothing(tmp_path: Path) -> None:
    """A hostile LSP sends c0 UPDATEs that would take its money: naming channels that are not
    c0's (c1's channel), a smaller new channel, a push below c0's balance, a state that is not
    newer, a node not on c0's path, a dust leaf stock. A co-client and a stranger send c0 an
    UPDATE too. Each is refused (REJECT to the LSP, or dropped) and leaves c0's channel
    unfrozen: the LSP still pays c0 through it."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0, c1 = world.clients[0], world.clients[1]
        lsp = world.lsp
        assert flows.Pay(0)(world) == "paid"
        leaf = _status(c0, inst)["exit_path"][-1]["txid"]
        mine = [cid for cid, ch in _channels(c0, lsp.node_id).items()
                if ch.get("funding_txid") == leaf]  # fmt: skip
        c1_leaf = _status(c1, inst)["exit_path"][-1]["txid"]
        theirs = [cid for cid, ch in _channels(c1, lsp.node_id).items()
                  if ch.get("funding_txid") == c1_leaf]  # fmt: skip
        assert len(mine) == 1 and len(theirs) == 1
        held = _msat(_channels(c0, lsp.node_id)[mine[0]]["to_us_msat"])
        assert held > 0
        channel_sat = flows.CHANNEL_SAT
        ib = bytes.fromhex(inst)

        def update(**kw: Any) -> protocol.Update:
            base = dict(
                instance_id=ib,
                session=bytes(range(32)),
                node=1,
                state=1,
                channel_sat=channel_sat,
                move_msat=held,
                leaf_stock=100_000,
                old_channels=tuple(bytes.fromhex(c) for c in mine),
            )
            base.update(kw)
            return protocol.Update(**base)  # type: ignore[arg-type]

        seen = _tap(world)
        forged = {
            "not our channels": update(old_channels=(bytes.fromhex(theirs[0]),)),
            "ours plus a co-client's": update(
                old_channels=tuple(bytes.fromhex(c) for c in (*mine, *theirs))
            ),
            "smaller channel": update(channel_sat=channel_sat - 10_000),
            "push below balance": update(move_msat=held - 1),
            "state not newer": update(state=0),
            "node not on path": update(node=4),
            "dust stock": update(leaf_stock=10),
        }
        for what, u in forged.items():
            n = len(seen)
            c0.deliver_custommsg(lsp, pig(u))
            ok = flows._wait(
                lambda n=n: any(
                    s == "c0" and isinstance(p, protocol.Text)
                    and p.type is protocol.PayloadType.REJECT
                    for s, _, p in seen[n:]
                ),
                10,
            )  # fmt: skip
            assert ok, f"{what}: c0 sent no REJECT"
            assert not any(
                s == "c0" and isinstance(p, protocol.UpdateStep) for s, _, p in seen[n:]
            ), f"{what}: c0 answered READY"
        # a co-client and a stranger claim to be the LSP
        stranger = next(n for n in world.net.nodes if n.name == "stranger")
        for src in (c1, stranger):
            if c0.connected_peer(src.node_id) is None:
                world.net.connect(src, c0)
            n = len(seen)
            c0.deliver_custommsg(src, pig(update()))
            time.sleep(0.5)
            answers = [(d, p) for s, d, p in seen[n:] if s == "c0" and p is not None]
            assert not answers, f"c0 answered {src.name}: {answers}"
        assert flows.Pay(0)(world) == "paid"  # nothing frozen
        assert [e["dw_state"] for e in _status(c0, inst)["exit_path"]] == [0, 0, 0, 0]
    finally:
        world.net.stop()


def _drop(
    world: World, src_name: str, msg_type: wire.MsgType, node: int | None = None
) -> list[str]:
    """Drop every ceremony message of `msg_type` that `src_name` sends (a stalling peer); with
    `node`, only those carrying a value for that tree node."""
    dropped: list[str] = []
    inner = world.net.intercept

    def hold(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        p = unpig(msg_hex)
        if src.name == src_name and isinstance(p, protocol.Ceremony):
            try:
                msg = wire.decode(p.message)
                kind = msg.type
                nodes = {n for n, _ in msg.values} if isinstance(msg, wire.NodeValues) else set()
            except Exception:
                kind, nodes = None, set()
            if kind is msg_type and (node is None or node in nodes):
                dropped.append(dst.name)
                return None
        return inner(src, dst, msg_hex) if inner is not None else msg_hex

    world.net.intercept = hold
    return dropped


def test_a_co_client_stalling_after_the_nonces_does_not_freeze_honest_clients(
    tmp_path: Path,
) -> None:
    """HOLE (griefing: a co-client freezes its co-clients' channels for good). c3 answers the
    update's nonce round and then never sends its partial signatures. The honest clients c0-c2
    have sent theirs (each persisted `update.signed` first); the LSP, short of c3's, abandons
    the update after its ceremony timeout and sends ABORT. No new state can exist without c3's
    signature - but c0 cannot tell an honest LSP from one colluding with c3 (which would hold
    the new state), so `on_abort` keeps its old channels frozen "until a later update or an
    exit". Every later update needs c3 again (it is below the same state node), so c3 can repeat
    this forever: the honest clients' balances are stuck in channels that take no HTLC, and the
    only way out is a unilateral exit on chain, at their cost. The test asserts c0 can be paid
    again once the update is abandoned."""
    world = _world(tmp_path, co=3)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        assert flows.Pay(0)(world) == "paid"
        before = sum(_msat(ch.get("to_us_msat", 0))
                     for ch in _channels(c0, world.lsp.node_id).values()
                     if ch.get("state") == "CHANNELD_NORMAL")  # fmt: skip
        dropped = _drop(world, "c3", wire.MsgType.PARTIAL_SIGS)
        res, err = flows._call(world.lsp, "factory-update", {"instance": inst})
        assert res is None and err is not None, (res, err)
        assert dropped, "c3's partial signatures were never asked for"
        assert [e["dw_state"] for e in _status(c0, inst)["exit_path"]] == [0, 0, 0, 0]
        held = sum(_msat(ch.get("to_us_msat", 0))
                   for ch in _channels(c0, world.lsp.node_id).values()
                   if ch.get("state") == "CHANNELD_NORMAL")  # fmt: skip
        assert held >= before  # nothing taken...
        time.sleep(0.5)
        result = flows.Pay(0)(world)
        assert result == "paid", (
            f"c0's channel is still frozen after the abandoned update: {result}"
        )
    finally:
        world.net.stop()


def test_a_client_restarting_before_it_signed_gets_its_channels_back(tmp_path: Path) -> None:
    """Restart during the freeze: c0 has agreed (READY sent, old channels frozen, nothing
    signed) and restarts while c1's READY is held. On resume c0 drops the unsigned update and
    REJECTs; the LSP abandons it; c0 is paid through its old channel again and nothing moved."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0, c1 = world.clients[0], world.clients[1]
        assert flows.Pay(0)(world) == "paid"
        inner = world.net.intercept
        held: list[tuple[FakeNode, FakeNode, str]] = []

        def hold_c1_ready(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
            if src is c1 and isinstance(unpig(msg_hex), protocol.UpdateStep):
                held.append((src, dst, msg_hex))
                return None
            return inner(src, dst, msg_hex) if inner is not None else msg_hex

        world.net.intercept = hold_c1_ready
        import threading

        out: list[Any] = []
        t = threading.Thread(
            target=lambda: out.append(flows._call(world.lsp, "factory-update", {"instance": inst}))
        )
        t.start()
        assert flows._wait(lambda: bool(held), 15), "c1 never sent READY"
        c0.restart(reconnect=True)
        t.join(60)
        assert out and out[0][0] is None, out  # the update failed
        world.net.intercept = inner
        for c in world.clients:
            assert [e["dw_state"] for e in _status(c, inst)["exit_path"]] == [0, 0, 0, 0]
        time.sleep(0.5)
        assert flows.Pay(0)(world) == "paid"
    finally:
        world.net.stop()


def test_final_signatures_lost_then_lsp_restart_leave_the_client_a_path(tmp_path: Path) -> None:
    """HOLE (same class as `test_lsp_withholding_final_signatures_cannot_strand_the_client`, here
    without malice: no retransmission). The LSP aggregates every signature, persists the new
    state as its tree (stage SIGNED) and sends SIGNATURES; the one to c0 is lost. After the
    LSP restarts, `UpdateLsp.resume` just drops the SIGNED update; nothing ever sends c0 the
    final signatures again, and c0 has no message to ask for them. c0 stays on its old path
    with its old channels frozen and its new channel unbound, while the LSP's tree (and its
    unroller's "due" states) is the new one, whose state 1 outruns c0's old state 1 on chain.
    The test asserts c0 ends up holding the new state."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        # the moved node's final signature (the second phase) is lost on its way to c0
        dropped = _drop(world, "lsp", wire.MsgType.SIGNATURES, node=1)
        inner_drop = world.net.intercept

        def only_to_c0(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
            if dst is c0 or src is not world.lsp:
                return inner_drop(src, dst, msg_hex)
            return msg_hex

        world.net.intercept = only_to_c0
        import threading

        out: list[Any] = []
        t = threading.Thread(
            target=lambda: out.append(flows._call(world.lsp, "factory-update", {"instance": inst})),
            daemon=True,
        )
        t.start()
        assert flows._wait(lambda: bool(dropped), 30), "no SIGNATURES were sent"
        assert flows._wait(
            lambda: [e["dw_state"] for e in _status(world.clients[1], inst)["exit_path"]][1] == 1,
            15,
        )
        world.lsp.restart(reconnect=True)
        time.sleep(1.0)
        world.mine(1)  # the LSP sends the moved node's signature again at each block
        flows._wait(lambda: [e["dw_state"] for e in _status(c0, inst)["exit_path"]][1] == 1, 20)
        states = [e["dw_state"] for e in _status(c0, inst)["exit_path"]]
        assert states[1] == 1, (
            f"c0 never received the final signatures of the state the LSP now holds: {states}"
        )
    finally:
        world.net.stop()
