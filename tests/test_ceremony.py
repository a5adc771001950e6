"""The two-round MuSig2 ceremony through bytes: every client a separate Signer."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import pytest

from superscalar_plugin.engine import dw, musig2, wire
from superscalar_plugin.engine.ceremony import (
    CoordinatorState,
    SignedNodeTx,
    Signer,
    SignerState,
    run_ceremony,
    sign_in_process,
)
from superscalar_plugin.engine.errors import (
    AlreadySigned,
    CeremonyError,
    InvalidPartialSignature,
    NonceReuseError,
    UnsafeToSign,
    WireError,
)
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.simulate import agreed_terms

from helpers import OUTPOINT, coordinator_for, participants, signers_for


def test_wire_ceremony_signs_every_tx_and_each_client_stores_its_path() -> None:
    p = participants(8)
    f = p.factory
    co = coordinator_for(p)
    signers = signers_for(p)
    stats = run_ceremony(co, signers)
    assert co.state is CoordinatorState.DONE and len(co.signed) == len(f.topology.nodes)
    for node, s in co.signed.items():
        assert musig2.schnorr_verify(
            s.signature, s.unsigned.sighash, f.signing_keyagg(node).xonly_pubkey
        )
    for c, signer in signers.items():
        assert signer.state is SignerState.DONE
        assert [s.node for s in signer.signed_path] == f.topology.client_path(c)
        assert [s.txid for s in signer.signed_path] == [
            co.signed[n].txid for n in f.topology.client_path(c)
        ]
    # Same transactions as signing with every key in one process.
    local = sign_in_process(
        f, OUTPOINT, dw.initial_states(f.topology), p.lsp_seckey, p.client_seckeys
    )
    assert {n: s.txid for n, s in local.items()} == {n: s.txid for n, s in co.signed.items()}
    assert stats["to_clients"] > 0 and stats["from_clients"] > 0


def test_a_client_receives_only_its_own_path() -> None:
    p = participants(64)
    co = coordinator_for(p)
    for c, data in co.start().items():
        msg = wire.decode(data)
        assert isinstance(msg, wire.SignRequest)
        assert [t.node for t in msg.templates] == p.factory.topology.client_path(c)


def _relay_until(co, signers, tamper):  # type: ignore[no-untyped-def]
    """Run the ceremony, letting `tamper(client, data, direction)` rewrite any message."""
    outbox = co.start()
    while outbox:
        replies = {}
        for c, data in outbox.items():
            reply = signers[c].receive(tamper(c, data, "to"))
            if reply is not None:
                replies[c] = tamper(c, reply, "from")
        outbox = {}
        for c, data in replies.items():
            outbox.update(co.receive(c, data))


def test_an_invalid_partial_signature_names_the_client() -> None:
    p = participants(8)
    co, signers = coordinator_for(p), signers_for(p)

    def tamper(c: int, data: bytes, direction: str) -> bytes:
        msg = wire.decode(data)
        if (
            c == 5
            and direction == "from"
            and isinstance(msg, wire.NodeValues)
            and msg.type is wire.MsgType.PARTIAL_SIGS
        ):
            node, psig = msg.values[-1]
            bad = bytes([psig[0] ^ 1]) + psig[1:]
            return replace(msg, values=(*msg.values[:-1], (node, bad))).encode()
        return data

    with pytest.raises(InvalidPartialSignature, match="client 5") as info:
        _relay_until(co, signers, tamper)
    assert info.value.signer == "client 5"


Templates = list[wire.NodeTemplate]


def _set_output(
    t: wire.NodeTemplate, vout: int, amount: int | None = None, script: bytes | None = None
) -> wire.NodeTemplate:
    outs = list(t.outputs)
    old_amount, old_script = outs[vout]
    outs[vout] = (
        old_amount if amount is None else amount,
        old_script if script is None else script,
    )
    return replace(t, outputs=tuple(outs))


def _leaf_channel_amount(t: Templates, h: wire.FactoryHeader) -> None:
    t[-1] = _set_output(t[-1], 0, amount=t[-1].outputs[0][0] - 1)


def _leaf_channel_script(t: Templates, h: wire.FactoryHeader) -> None:
    t[-1] = _set_output(t[-1], 0, script=b"\x00\x20" + bytes(32))


def _kickoff_nsequence(t: Templates, h: wire.FactoryHeader) -> None:
    t[0] = replace(t[0], nsequence=5)


def _state_skips_ahead_inconsistently(t: Templates, h: wire.FactoryHeader) -> None:
    t[1] = replace(t[1], state=1)  # nSequence left at state 0's delay


def _branch_outputs_swapped(t: Templates, h: wire.FactoryHeader) -> None:
    o = t[1].outputs
    t[1] = replace(t[1], outputs=(o[1], o[0], *o[2:]))


def _fee_too_high(t: Templates, h: wire.FactoryHeader) -> None:
    t[0] = _set_output(t[0], 0, amount=t[0].outputs[0][0] - 1000)


def _anchor_replaced(t: Templates, h: wire.FactoryHeader) -> None:
    t[0] = _set_output(t[0], len(t[0].outputs) - 1, amount=330, script=b"\x51\x20" + bytes(32))


def _path_incomplete(t: Templates, h: wire.FactoryHeader) -> None:
    t.pop()


TAMPERS = [
    _leaf_channel_amount,
    _leaf_channel_script,
    _kickoff_nsequence,
    _state_skips_ahead_inconsistently,
    _branch_outputs_swapped,
    _fee_too_high,
    _anchor_replaced,
    _path_incomplete,
]
HEADER_TAMPERS = {
    "timeout": lambda h: replace(h, timeout_height=h.timeout_height - 1),
    "funding amount": lambda h: replace(h, funding_amount=h.funding_amount + 1),
    "someone else's slot": lambda h: replace(h, client_index=1),
    "ewt above policy": lambda h: replace(h, params=replace(h.params, step_blocks=400)),
    "another lsp": lambda h: replace(h, lsp_pubkey=h.client_pubkeys[3]),
}


def _precommitted(p):  # type: ignore[no-untyped-def]
    """A creation's signers, each having given its nonces with its ACCEPT, and the LSP's
    coordinator holding them."""
    signers = signers_for(p)
    topo = p.factory.topology
    given = {c: dict(s.precommit(topo.client_path(c))) for c, s in signers.items()}
    return coordinator_for(p, client_nonces=given), signers


def _refused(tamper_templates=None, tamper_header=None, precommit=False) -> None:  # type: ignore[no-untyped-def]
    p = participants(8)
    co, signers = _precommitted(p) if precommit else (coordinator_for(p), signers_for(p))
    req = wire.decode(co.start()[0])
    assert isinstance(req, wire.SignRequest)
    templates, header = list(req.templates), req.header
    if tamper_templates:
        tamper_templates(templates, header)
    if tamper_header:
        header = tamper_header(header)
    assert (tuple(templates), header) != (req.templates, req.header)
    bad = wire.SignRequest(req.session, header, tuple(templates), req.aggnonces).encode()
    with pytest.raises(UnsafeToSign):
        signers[0].receive(bad)
    assert signers[0].state is SignerState.FAILED and not signers[0].signed_path
    if precommit:  # its ACCEPT's nonces went with the refusal: the honest request gets none
        with pytest.raises(CeremonyError, match="never gave"):
            signers[0].receive(co.start()[0])


@pytest.mark.parametrize("precommit", [False, True], ids=["nonces-after", "nonces-with-accept"])
@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_"))
def test_a_client_refuses_tampered_transactions(tamper, precommit: bool) -> None:  # type: ignore[no-untyped-def]
    _refused(tamper_templates=tamper, precommit=precommit)


@pytest.mark.parametrize("precommit", [False, True], ids=["nonces-after", "nonces-with-accept"])
@pytest.mark.parametrize("what", sorted(HEADER_TAMPERS))
def test_a_client_refuses_terms_it_did_not_agree_to(what: str, precommit: bool) -> None:
    _refused(tamper_header=HEADER_TAMPERS[what], precommit=precommit)


def test_a_creation_signs_with_the_nonces_of_the_accepts_in_one_round_trip() -> None:
    p = participants(16)
    f = p.factory
    co, signers = _precommitted(p)
    requests = co.start()
    assert co.state is CoordinatorState.COLLECTING_PSIGS
    replies = {c: signers[c].receive(r) for c, r in requests.items()}
    for c, r in replies.items():  # the request is answered with partial signatures at once
        assert r is not None and wire.decode(r).type is wire.MsgType.PARTIAL_SIGS  # type: ignore[union-attr]
        assert signers[c].state is SignerState.PSIGS_SENT
    finals: dict[int, bytes] = {}
    for c, r in replies.items():
        assert r is not None
        finals.update(co.receive(c, r))
    assert co.state is CoordinatorState.DONE and len(co.signed) == len(f.topology.nodes)
    for c, data in finals.items():
        assert signers[c].receive(data) is None and signers[c].state is SignerState.DONE
        assert [s.node for s in signers[c].signed_path] == f.topology.client_path(c)
    local = sign_in_process(
        f, OUTPOINT, dw.initial_states(f.topology), p.lsp_seckey, p.client_seckeys
    )
    assert {n: s.txid for n, s in local.items()} == {n: s.txid for n, s in co.signed.items()}


def test_nonces_given_with_an_accept_sign_one_request_only() -> None:
    """A hostile LSP asks twice (two trees, or the same tree twice) for signatures under the
    nonces of one ACCEPT: two partial signatures with one nonce would give away the key."""
    p = participants(4)
    co, signers = _precommitted(p)
    first = co.start()[0]
    assert signers[0].receive(first) is not None
    for again in (first, co.start()[0]):
        with pytest.raises(CeremonyError):
            signers[0].receive(again)
    assert signers[0]._nonces == {}


def test_a_precommitted_client_needs_the_aggregates_and_no_one_else_gets_them() -> None:
    p = participants(4)
    co, signers = _precommitted(p)
    req = wire.decode(co.start()[0])
    assert isinstance(req, wire.SignRequest) and req.aggnonces
    bare = wire.SignRequest(req.session, req.header, req.templates).encode()
    with pytest.raises(CeremonyError, match="aggregate nonces"):
        signers[0].receive(bare)
    assert signers[0]._nonces == {} and signers[0].state is SignerState.FAILED
    # Aggregates for a signer that gave no nonce: refused, nothing signed.
    fresh = signers_for(p)[0]
    with pytest.raises(CeremonyError, match="never gave"):
        fresh.receive(req.encode())
    # Aggregates for other nodes than the request signs.
    _, signers = _precommitted(p)
    shifted = tuple((n + 1, v) for n, v in req.aggnonces)
    with pytest.raises(CeremonyError):
        signers[0].receive(
            wire.SignRequest(req.session, req.header, req.templates, shifted).encode()
        )
    assert signers[0]._nonces == {}


def test_nonces_are_committed_once_and_for_the_path_only() -> None:
    p = participants(4)
    signer = signers_for(p)[0]
    path = p.factory.topology.client_path(0)
    signer.precommit(path)
    with pytest.raises(CeremonyError, match="committed once"):
        signer.precommit(path)
    # Nonces for a shorter path than the request signs: refused before any signature.
    short = signers_for(p)
    given = {c: dict(s.precommit(p.factory.topology.client_path(c))) for c, s in short.items()}
    co = coordinator_for(p, client_nonces=given)
    liar = signers_for(p)[0]
    liar.precommit(path[:-1])
    with pytest.raises(CeremonyError, match="other nodes"):
        liar.receive(co.start()[0])
    # The LSP refuses nonces for the wrong nodes or a client without any, naming it.
    with pytest.raises(CeremonyError, match="client 1: nonces for the wrong nodes"):
        coordinator_for(p, client_nonces={**given, 1: {0: given[1][0]}})
    with pytest.raises(CeremonyError, match="client 3: no nonces"):
        coordinator_for(p, client_nonces={c: v for c, v in given.items() if c != 3})


def test_secret_nonces_are_single_use_and_never_serialized() -> None:
    p = participants(2)
    co, signers = coordinator_for(p), signers_for(p)
    out = co.start()
    replies = {c: signers[c].receive(d) for c, d in out.items()}
    aggs: dict[int, bytes] = {}
    for c, r in replies.items():
        assert r is not None
        aggs.update(co.receive(c, r))
    first = signers[0].receive(aggs[0])
    assert first is not None
    with pytest.raises(CeremonyError):  # the same aggregate nonces again: no second signature
        signers[0].receive(aggs[0])
    sec, _ = musig2.nonce_gen(p.factory.client_pubkeys[0], seckey=p.client_seckeys[0])
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(NonceReuseError):
            attempt(sec)


def test_dw_update_over_the_wire_and_replay_of_an_old_state_is_refused() -> None:
    p = participants(8, FactoryParams(states_per_layer=3))
    f = p.factory
    signers = signers_for(p)
    states = dw.initial_states(f.topology)
    run_ceremony(coordinator_for(p, states), signers)
    first_path = [s.txid for s in signers[0].signed_path]
    adv = dw.advance_leaf(f.topology, states, f.topology.leaf_of_client[0])
    co = coordinator_for(p, adv.states, adv.resigned)
    assert co.clients == [0, 1]
    for c in co.clients:  # each client agrees to the update itself; the LSP cannot start one
        signers[c].agree_update(signers[c].terms)
    run_ceremony(co, {c: signers[c] for c in co.clients})
    new_path = [s.txid for s in signers[0].signed_path]
    assert new_path[:-1] == first_path[:-1] and new_path[-1] != first_path[-1]
    assert signers[0].states[f.topology.leaf_of_client[0]] == 1
    # The LSP tries to get the older state (a longer delay) signed again.
    old = coordinator_for(p, states, adv.resigned)
    with pytest.raises(UnsafeToSign, match="already signed"):
        signers[0].receive(old.start()[0])
    signers[0].agree_update(signers[0].terms)
    with pytest.raises(UnsafeToSign, match="not newer"):
        signers[0].receive(old.start()[0])
    assert signers[0].state is SignerState.DONE and signers[0].states[adv.bumped] == 1


def test_coordinator_rejects_strangers_duplicates_and_garbage() -> None:
    p = participants(4)
    co, signers = coordinator_for(p), signers_for(p)
    out = co.start()
    reply = signers[0].receive(out[0])
    assert reply is not None
    with pytest.raises(CeremonyError, match="client 9"):
        co.receive(9, reply)
    with pytest.raises(CeremonyError, match="client 2: values for the wrong nodes"):
        co.receive(2, reply)  # client 0's leaf is not on client 2's path
    co.receive(0, reply)
    with pytest.raises(CeremonyError, match="twice"):
        co.receive(0, reply)
    with pytest.raises(WireError, match="client 3"):
        co.receive(3, b"\x02" + bytes(10))
    assert co.waiting_for == [1, 2, 3]


def test_a_stored_path_restores_into_a_signer_that_can_still_update() -> None:
    p = participants(4, FactoryParams(states_per_layer=3))
    f = p.factory
    signers = signers_for(p)
    states = dw.initial_states(f.topology)
    run_ceremony(coordinator_for(p, states), signers)
    old = signers[0]
    assert old.header is not None
    stored = [
        (s.node, s.raw(), s.unsigned.spent_amount, s.unsigned.spent_script) for s in old.signed_path
    ]
    path = [SignedNodeTx.from_raw(*entry) for entry in stored]
    restored = Signer.restore(old.seckey, old.terms, old.policy, old.header, path, old.states)
    assert [s.txid for s in restored.signed_path] == [s.txid for s in old.signed_path]
    # A tampered stored signature is caught on restore.
    bad = [*path[:-1], SignedNodeTx(path[-1].unsigned, bytes(64))]
    with pytest.raises(CeremonyError, match="invalid signature"):
        Signer.restore(old.seckey, old.terms, old.policy, old.header, bad, old.states)
    # The restored signer takes part in the next DW update.
    adv = dw.advance_leaf(f.topology, states, f.topology.leaf_of_client[0])
    co = coordinator_for(p, adv.states, adv.resigned)
    restored.agree_update(restored.terms)
    signers[1].agree_update(signers[1].terms)
    run_ceremony(co, {0: restored, 1: signers[1]})
    assert restored.signed_path[-1].txid == co.signed[f.topology.leaf_of_client[0]].txid


def test_terms_come_from_the_proposal_field_by_field() -> None:
    from superscalar_plugin.engine import protocol
    from superscalar_plugin.engine.ceremony import ClientTerms

    p = participants(4)
    f = p.factory
    propose = protocol.Propose(
        bytes(32), 2, 4, f.params, f.timeout_height, f.lsp_pubkey, 200_000, f.topology.ewt
    )
    terms = ClientTerms.from_propose(propose)
    assert (terms.n_clients, terms.client_index, terms.params) == (4, 2, f.params)
    assert terms.channel_script is None and terms.early_warning_time == f.topology.ewt
    assert terms == replace(agreed_terms(f, 2), channel_script=None)


def test_an_update_is_agreed_only_by_a_signed_client_that_knows_its_script() -> None:
    p = participants(2)
    signers = signers_for(p)
    with pytest.raises(CeremonyError, match="needs a signed factory"):
        signers[0].agree_update(signers[0].terms)
    run_ceremony(coordinator_for(p), signers)
    with pytest.raises(UnsafeToSign, match="exact script"):
        signers[0].agree_update(replace(signers[0].terms, channel_script=None))


def test_a_creation_is_signed_once_even_after_an_abort_and_at_its_initial_states_only() -> None:
    """Red team round 6: the LSP aborts after the partial signatures (it holds that tree) and
    asks again for another tree of the same factory, or asks at later DW states (no delays,
    superseding every update): nothing signed."""
    p = participants(4, FactoryParams(states_per_layer=4))
    co, signers = _precommitted(p)
    assert signers[0].receive(co.start()[0]) is not None  # partial signatures: the LSP holds them
    assert signers[0].receive(wire.Abort(co.session, "again").encode()) is None
    again = coordinator_for(p)  # the same factory, fresh two-round ceremony
    with pytest.raises(AlreadySigned):
        signers[0].receive(again.start()[0])
    topo = p.factory.topology
    last = tuple(3 if n.kind.is_state else 0 for n in topo.nodes)
    _, fresh = _precommitted(p)
    later = coordinator_for(p, states=last).start()[0]
    with pytest.raises(UnsafeToSign, match="a creation signs the initial states"):
        fresh[0].receive(later)
    assert not fresh[0].signed_path and fresh[0]._nonces == {}
