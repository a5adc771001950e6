"""`make fuzz-protocol`: many seeds for a time budget (FUZZ_SECONDS, default 300; FUZZ_START, the
first seed, default 1000), each seed's line printed, every failing seed's whole trace at the end.
Replay one with `python tests/fuzz_protocol/run.py --seed N`. Exit 1 if any seed failed."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz_protocol.driver import Result, run_seed


def _one(seed: int) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"fuzzproto-{seed}-") as d:
        return run_seed(seed, Path(d))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 300)))
    ap.add_argument("--start", type=int, default=int(os.environ.get("FUZZ_START", 1000)))
    ap.add_argument("--seed", type=int, action="append", help="replay these seeds only")
    args = ap.parse_args()
    deadline = time.monotonic() + args.seconds
    seeds = iter(args.seed) if args.seed else iter(range(args.start, 1 << 62))
    failed: list[Result] = []
    for seed in seeds:
        if not args.seed and time.monotonic() > deadline:
            break
        r = _one(seed)
        bad = r.violations or r.findings
        print(
            f"seed {seed}: {'FAIL ' + ','.join(sorted(r.kinds)) if bad else 'ok'} "
            f"({r.seconds:.1f}s)",
            flush=True,
        )
        if bad or args.seed:
            failed.append(r) if bad else print(r.report())
    for r in failed:
        print("\n" + r.report())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
