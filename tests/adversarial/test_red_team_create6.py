"""Red team round 6: a hostile LSP (then a hostile co-client) against a creation whose nonces come
with the ACCEPT (`Signer.precommit`, `Coordinator(client_nonces=...)`), through the pure engine
and the real plugin processes in the fake lightningd (tests/harness).

A test marked `xfail(strict=True, reason="HOLE: ...")` demonstrates money at risk against the
current code (it asserts the defence that is missing); every other test asserts a defence that
holds, on the specific refusal.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable

import pytest
from test_plugin_harness import _create, _setup as _real_setup

from superscalar_plugin.engine import blip56, dw, musig2, protocol, wire
from superscalar_plugin.engine.ceremony import (
    Coordinator,
    CoordinatorState,
    Signer,
    SignerState,
    run_ceremony,
)
from superscalar_plugin.engine.errors import CeremonyError, InvalidPartialSignature
from superscalar_plugin.engine.tree import FactoryParams, Topology
from superscalar_plugin.simulate import make_factory

from .hostile import OUTPOINT, honest_signers, participants
from .plugin_hostile import (
    HostileLsp,
    complete_channels,
    lsp_with_clients,
    open_channels,
    pig,
    status,
    unpig,
    wait,
)
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

# --- helpers ------------------------------------------------------------------------------------


def _precommitted(p: object, signers: dict[int, Signer]) -> dict[int, dict[int, bytes]]:
    topo = p.factory.topology  # type: ignore[attr-defined]
    return {c: dict(s.precommit(topo.client_path(c))) for c, s in signers.items()}


def _last_states(topo: Topology) -> dw.States:
    """Every DW state node at its last state (no relative delay): what supersedes any other."""
    last = topo.params.states_per_layer - 1
    return tuple(last if n.kind.is_state else 0 for n in topo.nodes)


def _superseding(held: dict[int, object], path: list[object]) -> list[int]:
    """Nodes of a client's stored path for which a tx the LSP holds fully signed spends the same
    output with a shorter relative lock: it confirms first, whatever the client signs later."""
    out = []
    for s in path:
        h = held.get(s.node)  # type: ignore[attr-defined]
        if h is None:
            continue
        mine_in = s.unsigned.tx.inputs[0]  # type: ignore[attr-defined]
        held_in = h.unsigned.tx.inputs[0]  # type: ignore[attr-defined]
        same_output = (mine_in.txid, mine_in.vout) == (held_in.txid, held_in.vout)
        if same_output and h.txid != s.txid and held_in.sequence < mine_in.sequence:  # type: ignore[attr-defined]
            out.append(s.node)  # type: ignore[attr-defined]
    return out


# --- 1. engine: a ceremony ABORT after the partial signatures, then a second tree ---------------


def test_an_abort_after_partial_signatures_lets_the_lsp_keep_a_later_state() -> None:
    p = participants(4, FactoryParams(states_per_layer=4))
    f, topo = p.factory, p.factory.topology
    signers = honest_signers(p)
    given = _precommitted(p, signers)
    # Tree A: the proposed factory, every DW state at its last index (nSequence without delay).
    held = Coordinator(f, p.lsp_seckey, OUTPOINT, _last_states(topo), client_nonces=given)
    for c, req in held.start().items():
        try:
            reply = signers[c].receive(req)
        except CeremonyError:
            reply = None  # refusing a creation at the last states would be a defence too
        if reply is not None:
            held.receive(c, reply)
    # The LSP keeps what it aggregated and tells every client the ceremony is off.
    for s in signers.values():
        s.receive(wire.Abort(held.session, "a peer went away, starting again").encode())
    # Tree B: the same factory at its initial states; the clients store it.
    with contextlib.suppress(CeremonyError):  # refusing a second tree is the defence
        run_ceremony(Coordinator(f, p.lsp_seckey, OUTPOINT, dw.initial_states(topo)), signers)
    victim = signers[0]
    lsp_holds = dict(held.signed) if held.state is CoordinatorState.DONE else {}
    # A DW update the victim agrees to later only moves its nodes to state 1, 2, ... with
    # a delay; the held tree's nodes have none and spend the same outputs.
    assert not (victim.state is SignerState.DONE and _superseding(lsp_holds, victim.signed_path)), (
        "the LSP holds a signed later state of the victim's own path"
    )


def _creation(p, given: dict[int, dict[int, bytes]]) -> Coordinator:  # type: ignore[no-untyped-def]
    """The LSP's coordinator of `p`'s creation, at its initial states, with the ACCEPTs' nonces."""
    f = p.factory
    return Coordinator(
        f, p.lsp_seckey, OUTPOINT, dw.initial_states(f.topology), client_nonces=given
    )


# --- 2. engine: precommitted nonces sign at most one request, whatever comes after -------------


def test_precommitted_nonces_never_sign_again_after_an_abort_or_in_an_update() -> None:
    p = participants(4)
    signers = honest_signers(p)
    given = _precommitted(p, signers)
    co = _creation(p, given)
    first = co.start()[0]
    assert wire.decode(signers[0].receive(first) or b"").type is wire.MsgType.PARTIAL_SIGS  # type: ignore[union-attr]
    signers[0].receive(wire.Abort(co.session, "again").encode())
    # The same request (same aggregates, same message) and one with other aggregates: both need
    # the ACCEPT's nonces, which are spent.
    req = wire.decode(first)
    assert isinstance(req, wire.SignRequest)
    other = tuple((n, musig2.nonce_agg([given[0][n], given[1][n]])) for n, _ in req.aggnonces)
    for again in (first, wire.SignRequest(req.session, req.header, req.templates, other).encode()):
        # Refused before the nonces are even looked at: this creation was signed once already.
        with pytest.raises(CeremonyError, match=r"already signed|never gave"):
            signers[0].receive(again)
    # A finished creation: an update request carrying aggregates is refused the same way.
    p2 = make_factory(4, FactoryParams(), timeout_height=5000, seed="u")
    s2 = honest_signers(p2)
    g2 = _precommitted(p2, s2)
    topo = p2.factory.topology
    run_ceremony(
        Coordinator(p2.factory, p2.lsp_seckey, OUTPOINT, dw.initial_states(topo), client_nonces=g2),
        s2,
    )
    assert s2[0].state is SignerState.DONE
    adv = dw.advance_leaf(topo, dw.initial_states(topo), topo.leaf_of_client[0])
    s2[0].agree_update(s2[0].terms, adv.bumped)
    up = Coordinator(
        p2.factory,
        p2.lsp_seckey,
        OUTPOINT,
        adv.states,
        adv.resigned,
    )
    ureq = wire.decode(up.start()[0])
    assert isinstance(ureq, wire.SignRequest)
    forged = tuple((n, musig2.nonce_agg([g2[0].get(n) or g2[1][n]])) for n in up.client_nodes[0])
    with pytest.raises(CeremonyError, match="never gave"):
        s2[0].receive(wire.SignRequest(ureq.session, ureq.header, ureq.templates, forged).encode())


# --- 3. engine: a co-client's bad partial signature is blamed on it, whoever answers last -------


def test_a_co_clients_bad_partial_signature_is_blamed_on_it_not_the_last_to_answer() -> None:
    p = participants(4)
    signers = honest_signers(p)
    given = _precommitted(p, signers)
    co = _creation(p, given)
    replies = {c: signers[c].receive(r) for c, r in co.start().items()}
    bad = wire.decode(replies[2] or b"")
    assert isinstance(bad, wire.NodeValues)
    # Client 2 flips its partial signature for the root; client 0 answers last and honestly.
    forged = tuple((n, (v if n else bytes(31) + b"\x01")) for n, v in bad.values)
    replies[2] = wire.NodeValues(wire.MsgType.PARTIAL_SIGS, bad.session, forged).encode()
    for c in (1, 2, 3):
        assert co.receive(c, replies[c] or b"") == {}
    with pytest.raises(InvalidPartialSignature) as e:
        co.receive(0, replies[0] or b"")
    assert e.value.signer == "client 2"


# --- 4. engine: the Topology memo cannot be poisoned by what callers do with it -----------------


def test_the_topology_memo_is_not_poisoned_by_callers_or_hostile_shapes() -> None:
    params = FactoryParams(states_per_layer=3)
    fresh = Topology._build(8, params)
    cached = Topology.build(8, params)
    cached.client_path(0).append(999)  # a caller mangling what it got
    cached.subtree(0).clear()
    # Many hostile shapes in between evict it (the memo holds 64).
    for a in range(2, 65):
        for k in (2, 3):
            Topology.build(64, FactoryParams(arity=(a,), states_per_layer=k))
    again = Topology.build(8, params)
    assert again.nodes == fresh.nodes and again.leaf_of_client == fresh.leaf_of_client
    assert again.client_path(0) == fresh.client_path(0) and again.ewt == fresh.ewt
    # A shape differing in one field is never served another's topology.
    other = Topology.build(8, FactoryParams(states_per_layer=4))
    assert other.params.states_per_layer == 4 and other.ewt != again.ewt


# --- 5. plugin: the same attack as 1, through a real client plugin ------------------------------


def _next(hostile: HostileLsp, kind: type, timeout: float = 10.0) -> protocol.Payload | None:
    """The next message of `kind` from a client, or None if it sent none (skipping others)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, payload = hostile.inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(payload, kind):
            return payload
        if isinstance(payload, protocol.Text):
            return None  # refused or aborted
    return None


@pytest.mark.parametrize("first_states", ["last", "initial"])
def test_a_client_plugin_signs_a_factory_twice_after_a_ceremony_abort(
    network_factory: Callable[..., Network], first_states: str
) -> None:
    net, lsp, clients = lsp_with_clients(network_factory, SUPERSCALAR_PLUGIN, 30, n=1)
    hostile = HostileLsp(net, lsp, clients)
    hostile.propose_all()
    victim = clients[0]
    outpoint = ("ab" * 32, 0)
    # Tree A: the leaf at its last state (no delay), on the first channel.
    tree = hostile.factory(open_channels(hostile))
    topo = tree.topology
    states = _last_states(topo) if first_states == "last" else dw.initial_states(topo)
    held = Coordinator(tree, hostile.lsp_key, outpoint, states, client_nonces=hostile.nonces)
    complete_channels(hostile, held)
    hostile.send(0, protocol.Ceremony(hostile.instance, held.start()[0]))
    reply = _next(hostile, protocol.Ceremony)
    if first_states == "last":  # the defence: a creation signs the initial states only
        assert reply is None
        wait(lambda: status(victim)[0]["state"] == "aborted", what="victim aborted")
        assert "a creation signs the initial states" in str(status(victim)[0]["error"])
        return
    assert isinstance(reply, protocol.Ceremony)
    held.receive(0, reply.message)
    assert held.state is CoordinatorState.DONE  # the LSP holds tree A, fully signed
    hostile.send(0, protocol.Ceremony(hostile.instance, wire.Abort(held.session, "retry").encode()))
    # A second channel for the same slot, and tree B on it at the initial states.
    announce = protocol.InFactory(
        hostile.instance,
        blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, hostile.instance, topo.ewt),
    )
    hostile.send(0, announce)
    time.sleep(0.5)
    second = open_channels(hostile)
    tree_b = hostile.factory(second)
    co = Coordinator(tree_b, hostile.lsp_key, outpoint, dw.initial_states(topo))
    complete_channels(hostile, co)
    stored = None
    pending = co.start()
    while pending:
        for c, data in pending.items():
            hostile.send(c, protocol.Ceremony(hostile.instance, data))
        if co.state is CoordinatorState.DONE:
            stored = _next(hostile, protocol.Stored)
            break
        answer = _next(hostile, protocol.Ceremony)
        if answer is None:
            break  # the client refused: the defence
        assert isinstance(answer, protocol.Ceremony)
        pending = co.receive(0, answer.message)
    # Tree A (held by the LSP, fully signed, paying the first channel) and tree B spend the same
    # outputs at the same delays: the LSP wins that race, and the channel the victim uses never
    # confirms. The defence: after its partial signatures for tree A, no second tree.
    assert stored is None, "the victim signed and stored a second tree of the same factory"
    [mine] = status(victim)
    assert mine["state"] == "aborted", mine


# --- 6. plugin: a co-client's (or a stranger's) ACCEPT nonces against the real LSP --------------


def _rewrite_accept(
    net: Network, who: FakeNode, lsp: FakeNode, change: Callable[[protocol.Accept], protocol.Accept]
) -> None:
    def intercept(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        if src is who and dst is lsp:
            msg = bytes.fromhex(msg_hex)
            if int.from_bytes(msg[:2], "big") == blip56.FACTORY_MESSAGE_TYPE:
                parsed = blip56.decode_factory_message(msg)
                if isinstance(parsed, blip56.Piggyback):
                    p = protocol.decode(parsed.payload)
                    if isinstance(p, protocol.Accept):
                        return pig(change(p))
        return msg_hex

    net.intercept = intercept


def _invalid_point(accept: protocol.Accept) -> protocol.Accept:
    n, v = accept.nonces[0]
    return protocol.Accept(
        accept.instance_id,
        accept.client_pubkey,
        ((n, b"\x02" + b"\xff" * 32 + v[33:]), *accept.nonces[1:]),
    )


def _other_nodes(accept: protocol.Accept) -> protocol.Accept:
    return protocol.Accept(
        accept.instance_id,
        accept.client_pubkey,
        tuple((n + 100, v) for n, v in accept.nonces),
    )


def _a_victims_nonces(accept: protocol.Accept) -> protocol.Accept:
    """The co-client's nonce for the shared root replaced by a point of its choosing (the
    negation of a fresh one: it sums with nothing it knows)."""
    n, _v = accept.nonces[0]
    _, pub = musig2.nonce_gen(accept.client_pubkey)
    return protocol.Accept(accept.instance_id, accept.client_pubkey, ((n, pub), *accept.nonces[1:]))


@pytest.mark.parametrize(
    "change, refusal",
    [
        (_invalid_point, "its nonce for node 0 is invalid"),
        (_other_nodes, "its nonces are not for the nodes of its path"),
    ],
    ids=["invalid-point", "other-nodes"],
)
def test_a_co_clients_bad_accept_nonces_abort_naming_it_and_cost_nothing(
    network_factory: Callable[..., Network], change: Callable[..., protocol.Accept], refusal: str
) -> None:
    net, lsp, clients = _real_setup(network_factory, n=2)
    liar, honest = clients[1], clients[0]
    _rewrite_accept(net, liar, lsp, change)
    with pytest.raises(Exception) as e:
        _create(lsp, clients)
    message = e.value.error["message"]  # type: ignore[attr-defined]
    assert f"client {liar.node_id}: {refusal}" in message
    assert honest.node_id not in message
    [record] = status(lsp)
    assert record["state"] == "aborted"
    # The honest client is told, its ceremony ends (not stuck waiting), no channel left open.
    wait(lambda: status(honest) and status(honest)[0]["state"] == "aborted", what="honest told")
    assert not [
        c
        for c in honest.rpc_call("listpeerchannels")["channels"]
        if c.get("state") not in ("ONCHAIN", "CLOSINGD_COMPLETE", "CLOSED")
        and c.get("state") is not None
        and "CLOS" not in str(c.get("state"))
    ]


def test_a_co_clients_chosen_nonce_does_not_break_the_others_signing(
    network_factory: Callable[..., Network],
) -> None:
    """A co-client gives a nonce that is not the one it will sign with: the aggregate still
    forms, the others sign, and the creation aborts naming the co-client alone, even when the
    honest client's partial signatures are the last to arrive (they complete the round)."""
    net, lsp, clients = _real_setup(network_factory, n=2)
    liar, honest = clients[1], clients[0]
    _rewrite_accept(net, liar, lsp, _a_victims_nonces)
    rewrite = net.intercept
    assert rewrite is not None

    held: list[str] = []

    def honest_last(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        if src is honest and dst is lsp and msg_hex not in held:
            p = unpig(msg_hex)
            if isinstance(p, protocol.Ceremony) and p.message[0] == wire.MsgType.PARTIAL_SIGS:
                held.append(msg_hex)
                threading.Timer(3.0, lambda: lsp.deliver_custommsg(honest, msg_hex)).start()
                return None
        return rewrite(src, dst, msg_hex)

    net.intercept = honest_last
    with pytest.raises(Exception) as e:
        _create(lsp, clients)
    text = e.value.error["message"]  # type: ignore[attr-defined]
    assert "invalid partial signature from client 1" in text, text
    assert honest.node_id not in text, f"the abort names the honest client: {text}"
    [record] = status(lsp)
    assert record["state"] == "aborted"


def test_a_strangers_accept_with_nonces_changes_nothing(
    network_factory: Callable[..., Network],
) -> None:
    """A node outside the factory sends ACCEPTs (with a valid key and nonces) for every slot
    while the creation runs: dropped; the factory is funded with the real clients' nonces."""
    net, lsp, clients = _real_setup(network_factory, n=2)
    stranger = net.add_node("stranger")
    net.connect(lsp, stranger)
    sent: list[bytes] = []

    def intercept(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        msg = bytes.fromhex(msg_hex)
        if dst is clients[0] and int.from_bytes(msg[:2], "big") == blip56.FACTORY_MESSAGE_TYPE:
            parsed = blip56.decode_factory_message(msg)
            if isinstance(parsed, blip56.Piggyback):
                p = protocol.decode(parsed.payload)
                if isinstance(p, protocol.Propose) and p.instance_id not in sent:
                    sent.append(p.instance_id)
                    topo = Topology.build(p.n_clients, p.params)
                    sk = hashlib.sha256(b"stranger").digest()
                    pk = musig2.pubkey_from_secret(sk)
                    nonces = tuple(
                        (n, musig2.nonce_gen(pk, seckey=sk)[1]) for n in topo.client_path(0)
                    )
                    forged = protocol.Accept(p.instance_id, pk, nonces)
                    lsp.deliver_custommsg(stranger, pig(forged))
        return msg_hex

    net.intercept = intercept
    created = _create(lsp, clients)
    assert sent and created["state"] == "funded"
    lsp.wait_for_log("not a client of factory")
