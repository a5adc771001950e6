"""Long fuzz run of every target: `python tests/fuzz/run_long.py [--seconds S] [--target NAME]`.

Each target runs under hypothesis (random, not derandomized) for about S seconds; a crash (an
exception outside `SuperscalarError`) is recorded with its input and the run goes on. Prints, per
target, the inputs run and the distinct crashes; exits 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,
)

from fuzz.targets import (  # noqa: E402
    BYTE_TARGETS,
    byte_inputs,
    fuzz_store,
    record_inputs,
    record_seeds,
)
from superscalar_plugin.engine.errors import SuperscalarError  # noqa: E402


def run_target(
    target: Callable[[Any], None], strategy: st.SearchStrategy[Any], seconds: float
) -> tuple[int, dict[str, str]]:
    inputs = 0
    crashes: dict[str, str] = {}  # exception type + last frame -> one input that raised it
    stop = time.monotonic() + seconds

    @settings(
        max_examples=500,  # one batch; batches repeat (each with a fresh random seed) until time is up
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(data: Any) -> None:
        nonlocal inputs
        inputs += 1
        try:
            target(data)
        except SuperscalarError:
            pass
        except Exception as e:  # a crash: remember one input per distinct place
            tb = traceback.extract_tb(e.__traceback__)[-1]
            key = f"{type(e).__name__} at {Path(tb.filename).name}:{tb.lineno}: {e}"[:200]
            crashes.setdefault(key, data.hex() if isinstance(data, bytes) else json.dumps(data))

    while time.monotonic() < stop:
        run()
    return inputs, crashes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--target", action="append", help="run only these (repeat)")
    args = ap.parse_args()
    plan: dict[str, tuple[Callable[[Any], None], st.SearchStrategy[Any]]] = {
        name: (fn, byte_inputs(seeds())) for name, (fn, seeds) in BYTE_TARGETS.items()
    }
    plan["store.from_json"] = (fuzz_store, record_inputs(record_seeds()))
    total_inputs, total_crashes = 0, 0
    print(f"{'target':<24} {'inputs':>9} {'crashes':>8}")
    for name, (fn, strategy) in plan.items():
        if args.target and name not in args.target:
            continue
        inputs, crashes = run_target(fn, strategy, args.seconds)
        total_inputs += inputs
        total_crashes += len(crashes)
        print(f"{name:<24} {inputs:>9} {len(crashes):>8}", flush=True)
        for key, data in crashes.items():
            print(f"    CRASH {key}\n      input: {data[:400]}")
    print(f"{'total':<24} {total_inputs:>9} {total_crashes:>8}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
