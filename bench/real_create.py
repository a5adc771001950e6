"""`factory-create` on real lightningd nodes: the wall time an operator waits, for 4, 8 and 16
clients, and where it goes (the phases the LSP reports in the command's `timings`).

Runs when `lightningd` and `lightning-cli` are on PATH (Core Lightning v26.06.6), with the
project's bitcoind; otherwise prints why it is skipped. Every node is a real lightningd with the
plugin, on loopback, in a temporary directory, stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def stack(
    n_clients: int,
    base: Path,
    lsp_options: Sequence[str] = (),
    txindex: bool = False,
    node_options: Sequence[str] = (),
) -> Iterator[tuple[Any, Any, list[Any]]]:
    """bitcoind, an LSP (its wallet funded) and `n_clients` client nodes, connected; every node
    stopped on the way out. `node_options` go to every node, `lsp_options` to the LSP too.
    Yields (BitcoindProcess, LSP Node, client Nodes)."""
    from start import Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    bitcoind = BitcoindProcess(datadir=base / "bitcoind", txindex=txindex).start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        options = ["--superscalar-ceremony-timeout=120", *node_options, *lsp_options]
        lsp = Node("lsp", base, bitcoind, options)
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        for i in range(n_clients):
            options = [f"--superscalar-accept-from={lsp_id}", *node_options]
            node = Node(f"client{i}", base, bitcoind, options)
            node.start()
            nodes.append(node)
        bitcoind.wallet.call("sendtoaddress", lsp.cli("newaddr", "bech32")["bech32"], 1)
        bitcoind.mine(6)
        for node in nodes[1:]:
            lsp.cli("connect", node.cli("getinfo")["id"], "127.0.0.1", str(node.port))
        lsp.wait_for_funds()
        yield bitcoind, lsp, nodes[1:]
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


def create(
    lsp: Any, clients: list[Any], channel_sat: int = 200_000
) -> tuple[dict[str, Any], float]:
    """`factory-create` with every client: its result and the wall time it took."""
    ids = [c.cli("getinfo")["id"] for c in clients]
    deadline = time.monotonic() + 60
    while True:
        t0 = time.perf_counter()
        try:
            result = lsp.cli("factory-create", json.dumps(ids), str(channel_sat))
        except subprocess.CalledProcessError as e:
            # the bLIP-56 handshake follows the connection by a moment
            if "has not announced" not in e.stdout or time.monotonic() > deadline:
                raise SystemExit(f"factory-create failed: {e.stdout}") from e
            time.sleep(0.2)
            continue
        return result, time.perf_counter() - t0


def measure(n_clients: int, base: Path) -> dict[str, Any]:
    with stack(n_clients, base) as (_, lsp, clients):
        result, wall = create(lsp, clients)
        return {"clients": n_clients, "wall_s": wall, "timings": result.get("timings", {})}


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
