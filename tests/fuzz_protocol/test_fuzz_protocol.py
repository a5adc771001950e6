"""The protocol fuzzer's fixed seeds (CI): each plays honest flows with hostile actions drawn from
the catalogue on the real plugin processes and checks the outside solvency invariant after every
step. A seed that exposes a hole still open on main is xfail(strict) naming it, so it flips when
the fix lands. `make fuzz-protocol` runs many more seeds (tests/fuzz_protocol/run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .driver import run_seed

# Chosen to cover creation, sales (factory-sell and factory-buy), migration and close, with a
# hostile co-client in some (4, 28), each seed a few seconds; `make fuzz-protocol` runs the rest.
SEEDS = [1, 3, 4, 5, 9, 11, 24, 26, 27, 28, 33]
UNCONFIRMED_SUCCESSOR = (
    "unconfirmed successor accepted as a move target: clients move into a successor whose "
    "funding the LSP then double-spends, after handing over their keys of the old factory"
)
MOVE_FEE = "move fees not capped: 10^9 ppm on the successor's channels skims the migration"
# Seeds 1 (UNCONFIRMED_SUCCESSOR) and 26 (MOVE_FEE) found those holes; both are closed now.
OPEN_HOLES: dict[int, str] = {}


def _param(seed: int) -> object:
    hole = OPEN_HOLES.get(seed)
    if hole is None:
        return seed
    return pytest.param(seed, marks=pytest.mark.xfail(strict=True, reason=hole))


@pytest.mark.parametrize("seed", [_param(s) for s in SEEDS])
def test_seed_keeps_every_honest_client_solvent(seed: int, tmp_path: Path) -> None:
    result = run_seed(seed, tmp_path)
    assert not result.violations and not result.findings, result.report()
