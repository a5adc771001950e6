"""Item 10: what a proposal may cost is bounded before anything is built, on PROPOSE (bytes from
the LSP), in a SIGN_REQUEST header and in every stored record."""

from __future__ import annotations

import time

import pytest

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.errors import InvalidShape, StoreError, WireError
from superscalar_plugin.engine.tree import MAX_CLIENTS, FactoryParams, Topology

INSTANCE = bytes(32)
KEY = bytes.fromhex("02" + "11" * 32)

# The review's 411-byte PROPOSE: 4096 clients, 254 levels of arity 1 then 2 (6.1 s, ~490 MB).
COSTLY = FactoryParams(
    clients_per_leaf=1, arity=(1,) * 254 + (2,), states_per_layer=2, step_blocks=1, ewt_margin=0
)

BAD_SHAPES = {
    "arity-1 level": (8, FactoryParams(arity=(1, 2))),
    "one state per layer": (8, FactoryParams(states_per_layer=1)),
    "too many clients": (
        MAX_CLIENTS + 1,
        FactoryParams(clients_per_leaf=16, arity=(8,), step_blocks=2),
    ),
    "review's costly proposal": (4096, COSTLY),
}


def _propose(n: int, params: FactoryParams) -> bytes:
    return protocol.encode(protocol.Propose(INSTANCE, 0, n, params, 900_000, KEY, 200_000, 100))


@pytest.mark.parametrize("what", sorted(BAD_SHAPES))
def test_a_costly_or_degenerate_proposal_is_refused_on_decode(what: str) -> None:
    n, params = BAD_SHAPES[what]
    data = _propose(n, params)
    start = time.perf_counter()
    with pytest.raises(WireError):
        protocol.decode(data)
    with pytest.raises(InvalidShape):
        Topology.build(n, params)
    assert time.perf_counter() - start < 0.2  # refused before anything was built


def test_the_limit_is_documented_and_a_large_sane_shape_passes() -> None:
    assert MAX_CLIENTS == 1024
    params = FactoryParams(arity=(2, 4, 8), kickoff_only_top=2)
    assert protocol.decode(_propose(MAX_CLIENTS, params)) is not None


@pytest.mark.parametrize("what", sorted(BAD_SHAPES))
def test_a_stored_record_with_a_costly_shape_is_refused_on_load(what: str) -> None:
    n, params = BAD_SHAPES[what]
    record = store.ClientRecord(
        instance_id=INSTANCE.hex(),
        lsp_node_id=KEY.hex(),
        state=store.ClientState.ACCEPTED,
        client_index=0,
        n_clients=n,
        params=params,
        timeout_height=900_000,
        lsp_pubkey=KEY.hex(),
        pubkey="03" + "11" * 32,
        channel_sat=200_000,
        early_warning_time=100,
    )
    start = time.perf_counter()
    with pytest.raises(StoreError):
        store.from_json(store.to_json(record))
    assert time.perf_counter() - start < 0.2
