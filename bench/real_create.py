"""`factory-create` on real lightningd nodes: the wall time an operator waits, for 4, 8 and 16
clients, and where it goes (the phases the LSP reports in the command's `timings`).

Runs when `lightningd` and `lightning-cli` are on PATH (Core Lightning v26.06.6), with the
project's bitcoind; otherwise prints why it is skipped. Every node is a real lightningd with the
plugin, on loopback, in a temporary directory, stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "contrib" / "regtest"))

SIZES = (4, 8, 16)


def _bitcoind_on_path() -> bool:
    cached = ROOT / ".venv" / "bitcoind-path"
    if shutil.which("bitcoind") is None and cached.exists():
        import os

        os.environ["PATH"] = cached.read_text().strip() + os.pathsep + os.environ["PATH"]
    return shutil.which("bitcoind") is not None


def skip_reason() -> str | None:
    for tool in ("lightningd", "lightning-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (build Core Lightning v26.06.6 to measure this)"
    if not _bitcoind_on_path():
        return "no bitcoind (run `make bitcoind`)"
    return None


def measure(n_clients: int, base: Path) -> dict[str, Any]:
    from start import Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    bitcoind = BitcoindProcess(datadir=base / "bitcoind").start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        lsp = Node("lsp", base, bitcoind, ["--superscalar-ceremony-timeout=120"])
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        for i in range(n_clients):
            node = Node(f"client{i}", base, bitcoind, [f"--superscalar-accept-from={lsp_id}"])
            node.start()
            nodes.append(node)
        bitcoind.wallet.call("sendtoaddress", lsp.cli("newaddr")["bech32"], 1)
        bitcoind.mine(6)
        ids = []
        for node in nodes[1:]:
            ids.append(node.cli("getinfo")["id"])
            lsp.cli("connect", ids[-1], "127.0.0.1", str(node.port))
        lsp.wait_for_funds()
        deadline = time.monotonic() + 60
        while True:
            t0 = time.perf_counter()
            try:
                result = lsp.cli("factory-create", json.dumps(ids), "200000")
            except subprocess.CalledProcessError as e:
                # the bLIP-56 handshake follows the connection by a moment
                if "has not announced" not in e.stdout or time.monotonic() > deadline:
                    raise SystemExit(f"factory-create failed: {e.stdout}") from e
                time.sleep(0.2)
                continue
            wall = time.perf_counter() - t0
            return {"clients": n_clients, "wall_s": wall, "timings": result.get("timings", {})}
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


def run() -> list[dict[str, Any]]:
    reason = skip_reason()
    if reason is not None:
        print(f"\nfactory-create on real lightningd: skipped: {reason}")
        return []
    print("\nfactory-create on real lightningd v26.06.6 (LSP + N client nodes, loopback):")
    out = []
    for n in SIZES:
        with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
            r = measure(n, Path(tmp))
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r["timings"].items())
        print(f"  {n:3d} clients: {r['wall_s']:6.2f} s   ({phases})")
        out.append(r)
    return out


if __name__ == "__main__":
    run()
