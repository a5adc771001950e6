"""A hostile client against the LSP's Coordinator: whatever it sends, the ceremony fails with a
project error that names it (so the LSP aborts and says who), never a crash or a wrong blame."""

from __future__ import annotations

from dataclasses import replace

import pytest

from superscalar_plugin.engine import dw, wire
from superscalar_plugin.engine.ceremony import Coordinator, CoordinatorState
from superscalar_plugin.engine.errors import (
    CeremonyError,
    InvalidParameter,
    InvalidPartialSignature,
    SuperscalarError,
)
from superscalar_plugin.engine.tree import ClientSlot, Factory

from .hostile import OUTPOINT, honest_signers, participants


def _after_nonces(n: int = 4):  # type: ignore[no-untyped-def]
    """A coordinator that sent its requests, the honest signers, and their nonce replies."""
    p = participants(n)
    co = Coordinator(p.factory, p.lsp_seckey, OUTPOINT, dw.initial_states(p.factory.topology))
    signers = honest_signers(p)
    nonces = {c: signers[c].receive(m) for c, m in co.start().items()}
    return co, signers, nonces


def _values(data: bytes) -> wire.NodeValues:
    msg = wire.decode(data)
    assert isinstance(msg, wire.NodeValues)
    return msg


@pytest.mark.parametrize("bad", [b"\xff" * 66, bytes(66), b"\x02" + b"\xff" * 32 + b"\x02" * 33])
def test_an_invalid_nonce_names_the_client(bad: bytes) -> None:
    co, _, nonces = _after_nonces()
    msg = _values(nonces[2])
    forged = replace(msg, values=tuple((n, bad) for n, _ in msg.values)).encode()
    with pytest.raises(SuperscalarError, match="client 2"):
        for c in (0, 1, 3):
            co.receive(c, nonces[c])
        co.receive(2, forged)


@pytest.mark.parametrize("bad", [b"\xff" * 32, bytes(32), b"\x01" * 32])
def test_an_out_of_range_or_wrong_partial_signature_names_the_client(bad: bytes) -> None:
    co, signers, nonces = _after_nonces()
    aggs: dict[int, bytes] = {}
    for c, m in nonces.items():
        aggs.update(co.receive(c, m))
    psigs = {c: signers[c].receive(m) for c, m in aggs.items()}
    msg = _values(psigs[1])
    forged = replace(msg, values=tuple((n, bad) for n, _ in msg.values)).encode()
    with pytest.raises(InvalidPartialSignature, match="client 1") as info:
        for c in (0, 2, 3):
            co.receive(c, psigs[c])
        co.receive(1, forged)
    assert info.value.signer == "client 1"
    assert co.state is not CoordinatorState.DONE and not co._lsp_nonces  # nonces forgotten


def test_a_replayed_or_foreign_session_message_names_the_client() -> None:
    co, _, nonces = _after_nonces()
    co.receive(0, nonces[0])
    with pytest.raises(CeremonyError, match="client 0"):
        co.receive(0, nonces[0])
    other = _values(nonces[1])
    with pytest.raises(CeremonyError, match="client 1"):
        co.receive(1, replace(other, session=bytes(32)).encode())
    with pytest.raises(CeremonyError, match="client 3 aborted"):
        co.receive(3, wire.Abort(co.session, "no").encode())


def test_a_client_that_copies_the_lsps_key_is_named() -> None:
    """Item 14 (engine part): a duplicate key names the client, not 'internal error'."""
    p = participants(4)
    f = p.factory
    slots = [ClientSlot(pk, *f.channels[i]) for i, pk in enumerate(f.client_pubkeys)]
    slots[2] = replace(slots[2], pubkey=f.lsp_pubkey)
    with pytest.raises(InvalidParameter, match="client 2"):
        Factory.create(f.params, f.lsp_pubkey, slots, f.timeout_height)
    slots[2] = replace(slots[2], pubkey=f.client_pubkeys[0])
    with pytest.raises(InvalidParameter, match="client 2"):
        Factory.create(f.params, f.lsp_pubkey, slots, f.timeout_height)
