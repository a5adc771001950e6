"""One liquidity sale on real lightningd nodes: `factory-sell` wall time with 2 and 4 co-signers
per leaf (the LSP + 4 or 8 client nodes, loopback), median of a few sales chained on one stock.

Runs when `lightningd` is on PATH with the project's bitcoind (see `real_create`), else says why.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "contrib" / "regtest"))
sys.path.insert(0, str(ROOT / "bench"))

from real_create import create, skip_reason  # noqa: E402

SALES = 5


def measure(cosigners: int, base: Path) -> list[float]:
    from start import Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    bitcoind = BitcoindProcess(datadir=base / "bitcoind").start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        lsp = Node("lsp", base, bitcoind, [])
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        for i in range(2 * cosigners):
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
        created, _ = create(
            lsp, nodes[1:], 100_000, clients_per_leaf=cosigners, stock_sat=1_000_000
        )
        walls = []
        for _ in range(SALES):
            t = time.perf_counter()
            sold = lsp.cli("factory-sell", created["instance"], ids[0], "50000")
            walls.append(time.perf_counter() - t)
            assert sold["kind"] == "factory", sold
        return walls
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


def run() -> None:
    reason = skip_reason()
    if reason is not None:
        print(f"\nfactory-sell on real lightningd: skipped: {reason}")
        return
    print(f"\none liquidity sale on real lightningd v26.06.6 (factory-sell, median of {SALES}):")
    for cosigners in (2, 4):
        with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
            walls = measure(cosigners, Path(tmp))
        print(
            f"  {cosigners} co-signers + LSP: {statistics.median(walls) * 1000:.0f} ms"
            f" (min {min(walls) * 1000:.0f}, max {max(walls) * 1000:.0f})"
        )


if __name__ == "__main__":
    run()
