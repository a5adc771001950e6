"""The README's "Try it on regtest", run as written: `contrib/regtest/start.py --clients 3` brings
the stack up, the commands it prints work when pasted into a shell, and Ctrl-C stops everything
cleanly (no crash, no "Lost connection to the RPC socket" from the nodes' plugins).

Needs lightningd on PATH (skipped with the reason otherwise) and the project's bitcoind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from real_node import ROOT, require_lightningd

require_lightningd()


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                pytest.fail("start.py exited early:\n" + "".join(lines))
            continue
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"{marker!r} never printed:\n" + "".join(lines))


def _command_after(lines: list[str], heading: str) -> str:
    i = next(i for i, line in enumerate(lines) if line.startswith(heading))
    return lines[i + 1].strip()


def _shell(command: str) -> object:
    out = subprocess.run(
        command, shell=True, check=True, capture_output=True, text=True, timeout=180
    ).stdout
    return json.loads(out) if out.strip().startswith(("{", "[")) else out


def test_the_regtest_stack_as_the_readme_runs_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "contrib" / "regtest" / "start.py"),
            "--clients",
            "3",
            "--dir",
            str(tmp_path / "stack"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = _read_until(proc, "Ctrl-C stops everything.", timeout=180)
        create = _command_after(lines, "Create a factory")
        for _ in range(100):  # the clients' bLIP-56 handshakes follow the connections
            try:
                created = _shell(create)
                break
            except subprocess.CalledProcessError as e:
                assert "has not announced" in e.stdout, e.stdout
                time.sleep(0.2)
        assert isinstance(created, dict) and created["state"] == "funded"
        status_lines = [x.strip() for x in lines if "factory-status" in x]
        client_view = _shell(status_lines[1])
        assert isinstance(client_view, dict)
        assert client_view["factories"][0]["role"] == "client"
        _shell(_command_after(lines, "Mine a block"))
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "Lost connection to the RPC socket" not in rest, rest
    for node in (tmp_path / "stack").glob("*/stderr"):
        assert "Lost connection" not in node.read_text(), node
