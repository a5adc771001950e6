"""`factory-migrate` through the harness: real plugin processes, the fake lightningd's payments.

1 LSP + N clients, each holding a balance: wall time from the command until every client handed
over its key (the key-path spend is sent), per client. The harness settles payments at once, so
this is the plugin's own share of a migration (the real-node figure is `real_migrate.py`'s).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_plugin_migration import PAID_MSAT, _pay_into, _status  # noqa: E402

from harness.network import SUPERSCALAR_PLUGIN, Network  # noqa: E402


def _wait(check: object, timeout: float = 120.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("the migration did not finish")
        time.sleep(0.05)


def measure(n_clients: int, base: Path) -> tuple[float, float]:
    net = Network(base, plugin=SUPERSCALAR_PLUGIN, timeout=120)
    try:
        lsp = net.add_node("lsp")
        clients = [
            net.add_node(f"c{i}", options={"superscalar-accept-from": lsp.node_id})
            for i in range(n_clients)
        ]
        for c in clients:
            net.connect(lsp, c)
        ids = [c.node_id for c in clients]
        for _ in range(100):  # every bLIP-56 handshake first
            try:
                old = lsp.rpc_call("factory-create", {"clients": ids, "channel_sat": 100_000})
                break
            except Exception as e:
                if "has not announced" not in str(e):
                    raise
                time.sleep(0.1)
        instance = old["instance"]
        net.mine(1)
        for c in clients:
            _wait(lambda c=c: _status(c, instance)["state"] == "funded")
            _pay_into(lsp, c, instance, PAID_MSAT)
        t0 = time.perf_counter()
        lsp.rpc_call("factory-migrate", {"instance": instance}, timeout=120)
        funded = time.perf_counter() - t0
        _wait(lambda: bool(_status(lsp, instance).get("handover_txid")))
        return funded, time.perf_counter() - t0
    finally:
        net.stop()


def run(sizes: tuple[int, ...] = (4, 8)) -> None:
    print("\nfactory-migrate through the harness (each client holds 30,000 sat):")
    print(f"{'clients':>8} {'successor_s':>12} {'all_keys_s':>11} {'/client_s':>10}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            funded, keys = measure(n, Path(tmp))
        print(f"{n:>8} {funded:>12.2f} {keys:>11.2f} {keys / n:>10.2f}")


if __name__ == "__main__":
    run()
