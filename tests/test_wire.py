"""Strict parsing of ceremony messages: malformed input is a WireError, never a crash."""

from __future__ import annotations

import contextlib
import random

import pytest

from superscalar_plugin.engine import wire
from superscalar_plugin.engine.errors import SuperscalarError, WireError

from helpers import coordinator_for, participants, signers_for


def _messages() -> list[bytes]:
    p = participants(4)
    co, signers = coordinator_for(p), signers_for(p)
    req = co.start()[0]
    nonces = signers[0].receive(req)
    assert nonces is not None
    # A creation's request: the aggregate nonces of the nonces given with the ACCEPTs.
    fresh = signers_for(p)
    topo = p.factory.topology
    given = {c: dict(s.precommit(topo.client_path(c))) for c, s in fresh.items()}
    precommitted = coordinator_for(p, client_nonces=given).start()[0]
    assert wire.decode(precommitted).aggnonces  # type: ignore[union-attr]
    return [req, nonces, precommitted, wire.Abort(co.session, "bye").encode()]


def test_round_trip() -> None:
    for data in _messages():
        assert wire.decode(data).encode() == data


def test_truncation_trailing_bytes_and_unknown_types_are_rejected() -> None:
    for data in _messages():
        for cut in (1, 10, len(data) // 2, len(data) - 1):
            with pytest.raises(WireError):
                wire.decode(data[:cut])
        # A request's trailing bytes start its optional aggregate nonces: truncated.
        with pytest.raises(WireError, match=r"trailing|truncated"):
            wire.decode(data + b"\x00")
    with pytest.raises(WireError, match="unknown message type"):
        wire.decode(b"\x63" + bytes(40))


def test_random_mutations_never_raise_anything_but_our_errors() -> None:
    rng = random.Random(1)
    msgs = _messages()
    for _ in range(3000):
        data = bytearray(rng.choice(msgs))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(SuperscalarError):
            wire.decode(bytes(data))
