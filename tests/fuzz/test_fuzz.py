"""Short, derandomized fuzz runs of every target in the normal suite (see `run_long.py`)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from superscalar_plugin.engine.errors import SuperscalarError

from .targets import BYTE_TARGETS, fuzz_store, record_inputs, record_seeds

SHORT = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.mark.parametrize("name", sorted(BYTE_TARGETS))
def test_byte_target_raises_only_project_errors(name: str) -> None:
    target, seeds = BYTE_TARGETS[name]
    from .targets import byte_inputs

    @SHORT
    @given(byte_inputs(seeds()))
    def run(data: bytes) -> None:
        with contextlib.suppress(SuperscalarError):
            target(data)

    run()


def test_store_from_json_raises_only_store_errors() -> None:
    @SHORT
    @given(record_inputs(record_seeds()))
    def run(data: Any) -> None:
        with contextlib.suppress(SuperscalarError):
            fuzz_store(data)

    run()


def test_mutation_strategy_reaches_deep_states() -> None:
    """A sanity check of the fuzzer itself: some mutated requests still parse."""
    from superscalar_plugin.engine import wire

    from .targets import mutated, wire_seeds

    parsed = 0

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(mutated(wire_seeds()), st.just(None))
    def run(data: bytes, _: None) -> None:
        nonlocal parsed
        try:
            wire.decode(data)
            parsed += 1
        except SuperscalarError:
            pass

    run()
    assert parsed > 0
