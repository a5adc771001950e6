"""Small builders shared by the engine tests."""

from __future__ import annotations

from superscalar_plugin.engine import dw
from superscalar_plugin.engine.ceremony import Coordinator, Signer
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.simulate import Participants, agreed_terms, make_factory

OUTPOINT = ("cd" * 32, 1)


def participants(n: int, params: FactoryParams | None = None, seed: str = "t") -> Participants:
    return make_factory(n, params or FactoryParams(), timeout_height=5000, seed=seed)


def signers_for(p: Participants) -> dict[int, Signer]:
    f = p.factory
    return {c: Signer(sk, agreed_terms(f, c)) for c, sk in enumerate(p.client_seckeys)}


def coordinator_for(
    p: Participants,
    states: dw.States | None = None,
    nodes: tuple[int, ...] | None = None,
    client_nonces: dict[int, dict[int, bytes]] | None = None,
) -> Coordinator:
    f = p.factory
    states = states or dw.initial_states(f.topology)
    return Coordinator(f, p.lsp_seckey, OUTPOINT, states, nodes, client_nonces=client_nonces)
