"""What every real-lightningd test needs: lightningd on PATH (else the module is skipped with the
reason), the project's bitcoind on PATH, pyln-testing told what this lightningd is, the plugin as an
operator installs it, and lightning-cli run exactly as an operator types it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = str(Path(sys.executable).parent / "superscalar")


def require_lightningd() -> None:
    """Skip the calling test module unless a lightningd is on PATH; prepare the environment
    pyln-testing reads when it is."""
    if shutil.which("lightningd") is None:
        pytest.skip(
            "lightningd is not on PATH: build Core Lightning v26.06.6 and put it on PATH to run "
            "the real-node tests",
            allow_module_level=True,
        )
    bitcoind_dir = ROOT / ".venv" / "bitcoind-path"
    if shutil.which("bitcoind") is None and bitcoind_dir.exists():
        os.environ["PATH"] = bitcoind_dir.read_text().strip() + os.pathsep + os.environ["PATH"]
    # pyln-testing passes --grpc-port unless RUST=0; a lightningd built without Rust (no
    # cln-grpc plugin) refuses that option.
    os.environ.setdefault("RUST", "0")


def cli(node: Any, *args: str) -> Any:
    """`lightning-cli <args>` against a pyln-testing node, arguments as typed in a shell (so
    `connect <id> 127.0.0.1 <port>` sends the raw token 127.0.0.1, as an operator's would)."""
    out = subprocess.run(
        ["lightning-cli", "--network=regtest", f"--lightning-dir={node.daemon.lightning_dir}",
         *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out) if out.strip() else None


def connect_by_ip(node: Any, peer: Any) -> None:
    """How every LSP connects to its clients: `lightning-cli connect <id> 127.0.0.1 <port>`."""
    cli(node, "connect", peer.info["id"], "127.0.0.1", str(peer.port))


def write_plugin(directory: Path, name: str, source: str) -> str:
    """A small pyln plugin for a test node: `source` as an executable file run by this
    interpreter (which has pyln-client); returns its path for the node's `plugin` option."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return str(path)
