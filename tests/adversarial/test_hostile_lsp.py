"""A hostile LSP against a client's Signer: each attack must end with nothing signed that the
client did not agree to, and with a signed client's exit path untouched."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import replace

import pytest

from superscalar_plugin.engine import dw, wire
from superscalar_plugin.engine.ceremony import ClientPolicy, Signer, SignerState
from superscalar_plugin.engine.errors import SuperscalarError, UnsafeToSign
from superscalar_plugin.engine.tree import FactoryParams

from .hostile import (
    NON_STANDARD_34,
    HostileLsp,
    Templates,
    honest_signers,
    participants,
    refactor,
    set_output,
    signed_clients,
    terms_for,
)

# --- 1. sign exactly once ---------------------------------------------------------------------


def _lsp_owned(t: Templates, h: wire.FactoryHeader) -> None:
    """The leaf's channel outputs pay P2WSH scripts the LSP owns (same amounts)."""
    leaf = t[-1]
    for v in range(len(leaf.outputs) - 2):
        leaf = set_output(leaf, v, script=b"\x00\x20" + bytes([0xEE]) * 32)
    t[-1] = leaf


def test_a_signed_client_refuses_a_newer_leaf_state_paying_the_lsp() -> None:
    p = participants(8, FactoryParams(states_per_layer=3))
    signers = signed_clients(p)
    topo = p.factory.topology
    before = [s.txid for s in signers[0].signed_path]
    adv = dw.advance_leaf(topo, dw.initial_states(topo), topo.leaf_of_client[0])
    for client in (0, 1):  # every client of the leaf
        _, req = HostileLsp(p).request(
            client, states=adv.states, nodes=adv.resigned, tamper=_lsp_owned
        )
        with pytest.raises(UnsafeToSign, match="already signed"):
            signers[client].receive(req)
    assert signers[0].state is SignerState.DONE
    assert [s.txid for s in signers[0].signed_path] == before


def test_a_signed_client_refuses_even_an_honest_second_request() -> None:
    p = participants(4, FactoryParams(states_per_layer=3))
    signers = signed_clients(p)
    topo = p.factory.topology
    adv = dw.advance_leaf(topo, dw.initial_states(topo), topo.leaf_of_client[0])
    _, req = HostileLsp(p).request(0, states=adv.states, nodes=adv.resigned)
    with pytest.raises(UnsafeToSign, match="already signed"):
        signers[0].receive(req)
    assert signers[0].state is SignerState.DONE and signers[0].states[topo.leaf_of_client[0]] == 0


def test_nothing_the_lsp_sends_after_signing_unsigns_a_client() -> None:
    p = participants(4)
    signers = signed_clients(p)
    path = list(signers[0].signed_path)
    co, _ = HostileLsp(p).request(0)
    for data in (
        wire.Abort(signers[0].session, "gone").encode(),
        co.abort("x")[0],
        b"\x05" + bytes(40),
    ):
        with contextlib.suppress(SuperscalarError):
            signers[0].receive(data)
        assert signers[0].state is SignerState.DONE and signers[0].signed_path == path


def _shift_into_kickoff(t: Templates, h: wire.FactoryHeader) -> None:
    """Item 13: change a kickoff (move 1 sat from the sibling branch to ours; the leaf-mate's
    channel absorbs it) and label it a 'newer state': two kickoffs with no DW order would race."""
    kick = t[2]
    t[2] = set_output(
        set_output(kick, 1, amount=kick.outputs[1][0] - 1), 0, amount=kick.outputs[0][0] + 1
    )
    t[2] = replace(t[2], state=1)
    t[3] = set_output(t[3], 1, amount=t[3].outputs[1][0] + 1)


def test_an_agreed_update_cannot_start_at_a_kickoff() -> None:
    p = participants(8, FactoryParams(states_per_layer=3))
    signers = signed_clients(p)
    signer = signers[0]
    signer.agree_update(terms_for(p.factory, 0))
    _, req = HostileLsp(p).request(0, nodes=(2, 3), tamper=_shift_into_kickoff)
    with pytest.raises(UnsafeToSign, match="node 2 is a kickoff"):
        signer.receive(req)
    assert signer.state is SignerState.DONE


def test_an_agreed_update_still_checks_our_exact_channel_script() -> None:
    p = participants(8, FactoryParams(states_per_layer=3))
    signers = signed_clients(p)
    topo = p.factory.topology
    adv = dw.advance_leaf(topo, dw.initial_states(topo), topo.leaf_of_client[0])
    signers[0].agree_update(terms_for(p.factory, 0))
    _, req = HostileLsp(p).request(0, states=adv.states, nodes=adv.resigned, tamper=_lsp_owned)
    with pytest.raises(UnsafeToSign, match="our channel output"):
        signers[0].receive(req)
    assert signers[0].state is SignerState.DONE and signers[0].states[topo.leaf_of_client[0]] == 0


# --- 2. the proposed shape is the signed shape ------------------------------------------------


def test_a_sign_request_with_more_clients_than_proposed_is_refused() -> None:
    p = participants(2)
    signer = honest_signers(p)[0]
    bigger = refactor(p, n_clients=8)
    _, req = HostileLsp(p).request(0, factory=bigger)
    with pytest.raises(UnsafeToSign, match="n_clients"):
        signer.receive(req)


OTHER_VALUES = {
    "clients_per_leaf": 3,
    "arity": (4,),
    "kickoff_only_top": 1,
    "states_per_layer": 3,
    "step_blocks": 30,
    "fee_rate_kvb": 3000,
    "anchor_sat": 330,
    "stock_sat": 90_000,
    "stock_delay": 100,
    "ewt_margin": 12,
    "max_ewt": 2000,
    "state_over_leaves": False,
}


def test_every_factory_param_is_covered() -> None:
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(FactoryParams)}


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_a_sign_request_with_other_params_is_refused_naming_the_field(field: str) -> None:
    p = participants(8)
    signer = honest_signers(p)[0]
    other = refactor(p, params=replace(p.factory.params, **{field: OTHER_VALUES[field]}))
    _, req = HostileLsp(p).request(0, factory=other)
    with pytest.raises(UnsafeToSign, match=rf"params\.{field}"):
        signer.receive(req)
    assert not signer.signed_path


def test_a_sign_request_for_another_slot_than_proposed_is_refused() -> None:
    p = participants(4)
    signer = honest_signers(p)[0]  # agreed to slot 0
    moved = refactor(p, order=[1, 2, 3, 0])  # our key (and channel) now in slot 3
    _, req = HostileLsp(p).request(0, factory=moved, slot=3)
    with pytest.raises(UnsafeToSign, match="client_index"):
        signer.receive(req)


# --- 5. every output of every tx on the path --------------------------------------------------


def _sibling_branch_non_standard(t: Templates, h: wire.FactoryHeader) -> None:
    t[1] = set_output(t[1], 1, script=NON_STANDARD_34)  # node 1 (state): vout 1 is not ours


def _leaf_mate_non_standard(t: Templates, h: wire.FactoryHeader) -> None:
    t[-1] = set_output(t[-1], 1, script=NON_STANDARD_34)


def _leaf_mate_p2tr(t: Templates, h: wire.FactoryHeader) -> None:
    t[-1] = set_output(t[-1], 1, script=b"\x51\x20" + bytes(32))


def _sibling_branch_other_key(t: Templates, h: wire.FactoryHeader) -> None:
    t[1] = set_output(t[1], 1, script=t[1].outputs[0][1])  # a valid script, of the wrong keys


@pytest.mark.parametrize(
    "tamper",
    [
        _sibling_branch_non_standard,
        _leaf_mate_non_standard,
        _leaf_mate_p2tr,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_every_output_on_the_path_is_checked(tamper) -> None:  # type: ignore[no-untyped-def]
    p = participants(8)
    signer = honest_signers(p)[0]
    _, req = HostileLsp(p).request(0, tamper=tamper)
    with pytest.raises(UnsafeToSign, match="output 1"):
        signer.receive(req)
    assert signer.state is SignerState.FAILED and not signer.signed_path


def test_a_sibling_branch_of_the_wrong_keys_is_refused_when_derived_exactly() -> None:
    """A standard sibling output of the wrong keys only hurts that sibling's clients, who sign
    this tx too and check their own output exactly; `exact_siblings` refuses it here as well."""
    p = participants(8)
    f = p.factory
    strict = Signer(p.client_seckeys[0], terms_for(f, 0), ClientPolicy(exact_siblings=True))
    _, req = HostileLsp(p).request(0, tamper=_sibling_branch_other_key)
    with pytest.raises(UnsafeToSign, match="output 1 is not node"):
        strict.receive(req)
    sibling = Signer(p.client_seckeys[4], terms_for(f, 4))  # a client under that sibling branch
    _, req = HostileLsp(p).request(4, tamper=_sibling_branch_other_key)
    with pytest.raises(UnsafeToSign, match="our branch"):
        sibling.receive(req)


def test_a_client_that_requires_its_channel_script_refuses_without_it() -> None:
    p = participants(2)
    f = p.factory
    signer = Signer(
        p.client_seckeys[0],
        terms_for(f, 0, with_script=False),
        ClientPolicy(require_channel_script=True),
    )
    _, req = HostileLsp(p).request(0)
    with pytest.raises(UnsafeToSign, match="channel script"):
        signer.receive(req)
