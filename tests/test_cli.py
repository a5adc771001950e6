"""`superscalar plan` and `superscalar demo` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from superscalar_plugin.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_json_reports_shape_ewt_and_worst_exit() -> None:
    out = _run("plan", "--clients", "64", "--arity", "2,4,8", "--kickoff-only-top", "2", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["clients"] == 64 and plan["ewt_blocks"] == 3 * 36 + 36
    assert [lv["kind"] for lv in plan["levels"]] == ["split", "split", "kickoff", "leaf"]
    worst = plan["worst_exit"]
    assert worst["transactions"] == 4 and 0 < worst["vbytes"] <= 999
    assert worst["fee_sat_at_rate"] == pytest.approx(2 * worst["vbytes"], rel=0.02)
    assert plan["funding_vbytes_per_client"] < 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plan", "--clients", "0"], "--clients must be at least 1"),
        (["plan", "--clients", "1024", "--step-blocks", "144"], "exceeds the limit of 2016"),
        (["plan", "--clients", "8", "--channel-sat", "100"], "below dust"),
        (["plan", "--clients", "8", "--stock-sat", "1"], "below dust"),
        (["plan", "--clients", "8", "--arity", "two"], "--arity"),
        (["plan", "--clients", "8", "--arity", "0"], "arity"),
        (["plan", "--clients", "8", "--fee-rate", "0"], "--fee-rate"),
        (["demo", "--clients", "0"], "--clients must be at least 1"),
        (["demo", "--clients", "8", "--arity", "-3"], "arity"),
        (["plan", "--clients", "x"], "--clients"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args: list[str], needle: str) -> None:
    out = _run(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_demo_with_8_clients_shows_every_step() -> None:
    out = _run("demo", "--clients", "8")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in [
        "1. Create the factory and sign it",
        "2. Fund the factory and confirm it",
        "3. Advance client 0's leaf 3 times",
        "4. Client 0 exits alone",
        "rejected (bad-txns-nonfinal), needs",
        "superseded state #1",
        "is on chain",
        "5. The outdated state never confirms",
        "rejected (bad-txns-inputs-missingorspent)",
        "6. The LSP's timeout sweep",
        "accepted,",
        "Summary",
        "└─ kickoff #0",
    ]:
        assert needle in text, needle


@pytest.mark.parametrize("n", ["1", "2", "3"])
def test_demo_works_for_tiny_factories(n: str) -> None:
    out = _run("demo", "--clients", n)
    assert out.returncode == 0, out.stderr
    assert "Summary" in out.stdout and "is on chain" in out.stdout
