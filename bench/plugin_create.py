"""`factory-create` through the harness: real plugin processes, real custom messages.

1 LSP + 16 clients: wall time of the RPC, and the CPU of all plugin processes (from /proc).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.network import SUPERSCALAR_PLUGIN, Network  # noqa: E402

PLUGIN = SUPERSCALAR_PLUGIN


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    import os

    return ticks / os.sysconf("SC_CLK_TCK")


def run(n_clients: int = 16) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp), plugin=PLUGIN, timeout=120, allowed_unknown_calls=["listconfigs"])
        try:
            lsp = net.add_node("lsp")
            clients = [
                net.add_node(f"c{i}", options={"superscalar-accept-from": lsp.node_id})
                for i in range(n_clients)
            ]
            for c in clients:
                net.connect(lsp, c)
            nodes = [lsp, *clients]
            params = {"clients": [c.node_id for c in clients], "channel_sat": 100_000}
            for _ in range(100):  # wait for every bLIP-56 handshake
                try:
                    before = {n.name: _cpu_seconds(n.process.pid) for n in nodes}  # type: ignore[union-attr]
                    t = time.perf_counter()
                    result = lsp.rpc_call("factory-create", params, timeout=120)
                    wall = time.perf_counter() - t
                    break
                except Exception as e:
                    if "has not announced" not in str(e):
                        raise
                    time.sleep(0.1)
            else:
                raise SystemExit("handshakes never completed")
            after = {n.name: _cpu_seconds(n.process.pid) for n in nodes}  # type: ignore[union-attr]
            cpu = {k: after[k] - before[k] for k in after}
            assert result["state"] == "funded"
            print(
                f"\nfactory-create through the harness, 1 LSP + {n_clients} clients:"
                f" wall {wall:.2f} s; plugin CPU total {sum(cpu.values()):.2f} s"
                f" (LSP {cpu['lsp']:.2f} s, clients max {max(v for k, v in cpu.items() if k != 'lsp'):.2f} s)"
            )
        finally:
            net.stop()


if __name__ == "__main__":
    run()
