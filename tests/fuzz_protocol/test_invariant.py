"""The invariant is not a rubber stamp: a client whose stored leaf signature is corrupted (its
funding confirmed, its leaf not) holds nothing enforceable, and the check says so; the same
run untouched passes (the fixed seeds show that)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import flows
from .driver import Honest, Schedule, run_schedule
from .invariant import RECORDS
from .world import World


@dataclass(frozen=True)
class CorruptLeafSignature:
    client: int

    def describe(self) -> str:
        return f"test: corrupt client {self.client}'s stored leaf signature"

    def apply(self, world: World) -> None:
        store = world.honest[self.client].datastore
        with store.lock:
            for key, (value, gen) in list(store.entries.items()):
                rec = json.loads(value)
                if key[:2] != RECORDS or rec.get("kind") != "client" or not rec["path"]:
                    continue
                raw = bytearray.fromhex(rec["path"][-1]["raw"])
                raw[-10] ^= 1  # inside the witness (the signature), before nLockTime
                rec["path"][-1]["raw"] = raw.hex()
                store.entries[key] = (json.dumps(rec).encode(), gen)


def _steps(corrupt: bool) -> tuple[object, ...]:
    pay = flows.Pay(0)
    steps: list[object] = [Honest("create", flows.create), Honest("confirm", flows.confirm)]
    steps.append(Honest(pay.describe(), pay))
    return (*steps, CorruptLeafSignature(0)) if corrupt else tuple(steps)


def test_a_corrupted_stored_signature_is_unenforceable(tmp_path: Path) -> None:
    result = run_schedule(Schedule(0, 2, False, _steps(True)), tmp_path)  # type: ignore[arg-type]
    kinds = {(v.client, v.kind) for _, v in result.violations}
    assert ("c0", "UNENFORCEABLE") in kinds, result.report()
    assert "fails consensus script checks" in result.report()
    assert not any(v.client == "c1" for _, v in result.violations), result.report()
