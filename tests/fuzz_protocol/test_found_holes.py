"""What the fuzzer found on main, kept as short fixed schedules of the same catalogue (so each is a
one-line replay that does not depend on the random draw). Each was xfail(strict) while its hole
was open on main; the solvency guard (engine/solvency.py) closed them:
- a fee raised before the move or the close: refused above `max-move-fee-sat`;
- a successor never confirmed (its funding double-spent): no move below `move-min-depth`."""

from __future__ import annotations

from pathlib import Path

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


def test_a_fee_raised_before_the_move_skims_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.SetFee(10**9), Honest("factory-migrate", flows.migrate)],
        tmp_path,
    )


def test_a_fee_raised_before_the_close_skims_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.SetFee(10**9), Honest("factory-close", flows.close)], tmp_path
    )


def test_a_successor_never_confirmed_takes_nothing(tmp_path: Path) -> None:
    _run(
        [*_funded_and_paid(), actions.DoubleSpend(), Honest("factory-migrate", flows.migrate)],
        tmp_path,
    )
