"""What the fuzzer found on main, kept as short fixed schedules of the same catalogue (so each is a
one-line replay that does not depend on the random draw). Each is xfail(strict) while its hole is
open on main, naming it, and flips when the fix lands."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import actions, flows
from .driver import Honest, Schedule, Step, run_schedule


def _funded_and_paid() -> list[Step]:
    return [
        Honest("create", flows.create),
        Honest("confirm", flows.confirm),
        Honest(flows.Pay(0).describe(), flows.Pay(0)),
        Honest(flows.Pay(1).describe(), flows.Pay(1)),
    ]


def _run(steps: list[Step], tmp_path: Path) -> None:
    result = run_schedule(Schedule(0, 2, False, tuple(steps)), tmp_path)
    assert not result.violations and not result.findings, result.report()


@pytest.mark.xfail(
    strict=True,
    reason="move fees not capped: 10^9 ppm on the successor's channels "
    "skims the migration (30,000,000 -> 30,970 msat)",
)
def test_a_fee_raised_before_the_move_skims_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.SetFee(10**9), Honest("factory-migrate", flows.migrate)],
        tmp_path,
    )


@pytest.mark.xfail(
    strict=True,
    reason="move fees not capped: 10^9 ppm on the close's target "
    "channel skims the cooperative close",
)
def test_a_fee_raised_before_the_close_skims_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.SetFee(10**9), Honest("factory-close", flows.close)], tmp_path
    )


@pytest.mark.xfail(
    strict=True,
    reason="unconfirmed successor accepted as a move target: the LSP "
    "double-spends the successor's funding after the keys were handed over",
)
def test_a_successor_never_confirmed_takes_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.DoubleSpend(), Honest("factory-migrate", flows.migrate)],
        tmp_path,
    )
