"""One liquidity sale over the wire: `factory-sell` through the harness (real plugin processes for
the LSP and every client, real custom messages), with 2 and 4 co-signers per leaf.

Per sale: OFFER/ACCEPT, `fundchannel_start`, SALE to every co-signer, two MuSig2 rounds (burn,
then sale), `fundchannel_complete`, SALE_SIG. Wall time of the RPC (median of a few sales chained
on the same stock) and the CPU of the plugin processes (LSP, busiest co-signer).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.network import SUPERSCALAR_PLUGIN, Network  # noqa: E402

SALES = 5


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(cosigners: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(
            Path(tmp), plugin=SUPERSCALAR_PLUGIN, timeout=120, allowed_unknown_calls=["listconfigs"]
        )
        try:
            lsp = net.add_node("lsp")
            clients = [
                net.add_node(f"c{i}", options={"superscalar-accept-from": lsp.node_id})
                for i in range(2 * cosigners)
            ]
            for c in clients:
                net.connect(lsp, c)
            params = {
                "clients": [c.node_id for c in clients],
                "channel_sat": 100_000,
                "clients_per_leaf": cosigners,
                "stock_sat": 1_000_000,
                "states_per_layer": 2,
            }
            for _ in range(100):  # wait for every bLIP-56 handshake
                try:
                    created = lsp.rpc_call("factory-create", params, timeout=120)
                    break
                except Exception as e:
                    if "has not announced" not in str(e):
                        raise
                    time.sleep(0.1)
            else:
                raise SystemExit("handshakes never completed")
            leaf = [lsp, *clients[:cosigners]]
            walls = []
            before = {n.name: _cpu_seconds(n.process.pid) for n in leaf}  # type: ignore[union-attr]
            for _ in range(SALES):
                t = time.perf_counter()
                sold = lsp.rpc_call(
                    "factory-sell",
                    {"instance": created["instance"], "client": clients[0].node_id, "sat": 50_000},
                    timeout=120,
                )
                walls.append(time.perf_counter() - t)
                assert sold["kind"] == "factory", sold
            after = {n.name: _cpu_seconds(n.process.pid) for n in leaf}  # type: ignore[union-attr]
            cpu = {k: (after[k] - before[k]) / SALES for k in after}
            return {
                "wall_s": statistics.median(walls),
                "lsp_cpu_s": cpu["lsp"],
                "cosigner_cpu_max_s": max(v for k, v in cpu.items() if k != "lsp"),
            }
        finally:
            net.stop()


def run() -> None:
    print(
        "\none liquidity sale over the wire (harness: real plugin processes; factory-sell,"
        f" median of {SALES} chained sales):"
    )
    for cosigners in (2, 4):
        r = one(cosigners)
        print(
            f"  {cosigners} co-signers + LSP: wall {r['wall_s'] * 1000:.0f} ms;"
            f" CPU per sale: LSP {r['lsp_cpu_s'] * 1000:.0f} ms,"
            f" busiest co-signer {r['cosigner_cpu_max_s'] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    run()
