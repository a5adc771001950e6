"""A scripted hostile coordinator and hostile client over the engine's byte messages.

`HostileLsp` runs honest ceremonies and then rewrites what it sends: the header, the templates, or
a whole second factory built with other terms around the same client keys. Clients are ordinary
`Signer`s holding the terms they agreed to at PROPOSE (`terms_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from superscalar_plugin.engine import dw, wire
from superscalar_plugin.engine.ceremony import ClientTerms, Coordinator, Signer, run_ceremony
from superscalar_plugin.engine.tree import ClientSlot, Factory, FactoryParams
from superscalar_plugin.simulate import Participants, agreed_terms, channel_script, make_factory

OUTPOINT = ("cd" * 32, 1)
TIMEOUT = 5000

Templates = list[wire.NodeTemplate]
Tamper = Callable[[Templates, wire.FactoryHeader], None]


def participants(n: int, params: FactoryParams | None = None) -> Participants:
    return make_factory(n, params or FactoryParams(), timeout_height=TIMEOUT, seed="adversarial")


def terms_for(f: Factory, client: int, with_script: bool = True) -> ClientTerms:
    """What client `client` agreed to at PROPOSE for factory `f` (and its channel's script)."""
    return agreed_terms(f, client, with_script)


def honest_signers(p: Participants, with_script: bool = True) -> dict[int, Signer]:
    return {
        c: Signer(sk, terms_for(p.factory, c, with_script)) for c, sk in enumerate(p.client_seckeys)
    }


def signed_clients(p: Participants) -> dict[int, Signer]:
    """Every client after an honest creation ceremony (each holds its signed exit path)."""
    signers = honest_signers(p)
    run_ceremony(
        Coordinator(p.factory, p.lsp_seckey, OUTPOINT, dw.initial_states(p.factory.topology)),
        signers,
    )
    return signers


def refactor(
    p: Participants,
    params: FactoryParams | None = None,
    n_clients: int | None = None,
    channels: Sequence[tuple[bytes, int]] | None = None,
    order: Sequence[int] | None = None,
) -> Factory:
    """Another factory around the same LSP key and the same client keys (padded with fresh keys
    when it has more clients): what a hostile LSP signs instead of what it proposed."""
    f = p.factory
    extra = make_factory(
        max(0, (n_clients or f.n_clients) - f.n_clients) or 1,
        FactoryParams(),
        timeout_height=TIMEOUT,
        seed="extra",
    )
    keys = [*f.client_pubkeys, *extra.factory.client_pubkeys][: n_clients or f.n_clients]
    chans = (
        list(channels)
        if channels is not None
        else [
            f.channels[i] if i < f.n_clients else (channel_script(k, f.lsp_pubkey), 200_000)
            for i, k in enumerate(keys)
        ]
    )
    idx = list(order) if order is not None else list(range(len(keys)))
    slots = [ClientSlot(keys[i], *chans[i]) for i in idx]
    return Factory.create(params or f.params, f.lsp_pubkey, slots, f.timeout_height)


@dataclass
class HostileLsp:
    """A coordinator that builds honest requests, then rewrites them before sending."""

    p: Participants

    def request(
        self,
        client: int,
        factory: Factory | None = None,
        states: dw.States | None = None,
        nodes: tuple[int, ...] | None = None,
        slot: int | None = None,
        tamper: Tamper | None = None,
        header: Callable[[wire.FactoryHeader], wire.FactoryHeader] | None = None,
    ) -> tuple[Coordinator, bytes]:
        f = factory or self.p.factory
        co = Coordinator(
            f, self.p.lsp_seckey, OUTPOINT, states or dw.initial_states(f.topology), nodes
        )
        req = wire.decode(co.start()[client if slot is None else slot])
        assert isinstance(req, wire.SignRequest)
        templates, hdr = list(req.templates), req.header
        if tamper is not None:
            tamper(templates, hdr)
        if header is not None:
            hdr = header(hdr)
        return co, wire.SignRequest(req.session, hdr, tuple(templates)).encode()


def set_output(
    t: wire.NodeTemplate, vout: int, amount: int | None = None, script: bytes | None = None
) -> wire.NodeTemplate:
    outs = list(t.outputs)
    a, s = outs[vout]
    outs[vout] = (a if amount is None else amount, s if script is None else script)
    return replace(t, outputs=tuple(outs))


NON_STANDARD_34 = b"\xff" * 34  # the size of a P2WSH/P2TR script, standard for no one
