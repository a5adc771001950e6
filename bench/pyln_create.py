"""`factory-create` with the nodes a pyln-testing test starts, beside lightningd's own floor there.

A real-node test built on pyln-testing (ours in tests/, or anyone's) runs every node its way:
through pyln-testing's bitcoind RPC proxy (a Python server inside the test process, which every
node's `bcli` reaches each second with `dev-bitcoind-poll=1`), with trace logs read by the test
process, and the node options pyln-testing sets. `bench/real_create.py` gives each node only
pyln-testing's options; here pyln-testing starts the nodes itself. Two measurements, each on its
own nodes (an LSP and N clients):

- the creation: `factory-create` of N clients with the plugin on every node (its wall time and
  phases), twice on the same nodes (the second LSP holds N more channels);
- lightningd's floor: the same `fundchannel_start` and `fundchannel_complete` calls, 8 at once,
  zero-conf, until every channel is CHANNELD_NORMAL, with no superscalar plugin on any node
  (`real_create.floor_round`), twice.

    .venv/bin/python bench/pyln_create.py [N]      # N clients, 64 by default

`make bench` runs it when lightningd is on PATH (about 6 minutes at 64: most of it is
pyln-testing starting 130 nodes one after the other).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

SIZE = 64
PYTEST = (sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "-p", "no:cacheprovider")
MARK = "PYLN-BENCH "  # the lines `run` relays from the pytest run
FUND_SAT = 50_000_000  # two of these: N channels of 200,000 sat, twice, and their stock

N = int(os.environ.get("SUPERSCALAR_BENCH_PYLN_N", str(SIZE)))

if "pytest" in sys.modules:  # collected by `run`'s pytest, not imported by bench/run.py
    from real_node import require_lightningd

    require_lightningd()
    from pyln.testing.fixtures import *  # noqa: F403  (node_factory, bitcoind, ...)


def _settle(lsp: Any, clients: list[Any]) -> None:
    from real_create import settle

    settle(lsp.daemon.proc.pid, [c.daemon.proc.pid for c in clients])


def _create(lsp: Any, ids: list[str]) -> tuple[dict[str, Any], float]:
    deadline = time.monotonic() + 60
    while True:
        t = time.perf_counter()
        try:
            result = lsp.rpc.call("factory-create", {"clients": ids, "channel_sat": 200_000})
        except Exception as e:  # the bLIP-56 handshake follows the connection by a moment
            if "has not announced" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return result, time.perf_counter() - t


def test_factory_create_as_a_pyln_testing_test_runs_it(node_factory: Any, bitcoind: Any) -> None:
    from pyln.testing.utils import wait_for
    from real_node import lsp_and_clients

    lsp, clients = lsp_and_clients(node_factory, N)
    lsp.fundwallet(FUND_SAT)
    lsp.fundwallet(FUND_SAT)
    wait_for(lambda: sum(o["status"] == "confirmed" for o in lsp.rpc.listfunds()["outputs"]) >= 3)
    _settle(lsp, clients)
    ids = [c.info["id"] for c in clients]
    for round_ in (1, 2):
        result, wall = _create(lsp, ids)
        assert result["state"] == "funded", result
        phases = ", ".join(f"{k} {v:.2f}" for k, v in result.get("timings", {}).items())
        print(f"\n{MARK}creation {round_}: {N} clients {wall:.2f} s; phases (s): {phases}")


def test_lightningd_floor_as_a_pyln_testing_test_runs_it(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    from real_create import ZEROCONF_PLUGIN, floor_round
    from real_node import connect_by_ip, write_plugin

    zeroconf = write_plugin(tmp_path, "zeroconf.py", ZEROCONF_PLUGIN)
    lsp = node_factory.get_node(options={"plugin": zeroconf})
    clients = node_factory.get_nodes(N, opts={"plugin": zeroconf})
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    _settle(lsp, clients)
    ids = [c.info["id"] for c in clients]
    pids = [c.daemon.proc.pid for c in clients]
    for done in (0, 1):
        f = floor_round(lsp.rpc, ids, 8, done, lsp.daemon.proc.pid, pids)
        total = f["fundchannel_start"] + f["fundchannel_complete"] + f["lockin"]
        assert total > 0
        print(
            f"\n{MARK}floor {done + 1}: {N} clients {total:.2f} s: fundchannel_start"
            f" {f['fundchannel_start']:.2f}, fundchannel_complete"
            f" {f['fundchannel_complete']:.2f}, then every channel CHANNELD_NORMAL"
            f" {f['lockin']:.2f}"
        )


def run(n: int = SIZE) -> None:
    """Both measurements in a pytest run of this file (pyln-testing's fixtures), its figures
    printed; skipped, with the reason, where lightningd is not on PATH."""
    from real_create import skip_reason

    reason = skip_reason()
    if reason is not None:
        print(f"\nfactory-create as a pyln-testing test runs it: skipped: {reason}")
        return
    print(
        f"\nfactory-create as a pyln-testing test runs it (LSP + {n} clients started by"
        " pyln-testing: its bitcoind proxy, dev-bitcoind-poll=1, trace logs), beside"
        " lightningd's own opens on nodes started the same way:"
    )
    proc = subprocess.run(
        [*PYTEST, "--rootdir", str(ROOT), str(Path(__file__))],
        cwd=ROOT,
        env={**os.environ, "SUPERSCALAR_BENCH_PYLN_N": str(n)},
        capture_output=True,
        text=True,
    )
    lines = [ln.removeprefix(MARK) for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    for line in lines:
        print(f"  {line}", flush=True)
    walls = {ln.split(":")[0]: float(ln.split(" s")[0].split()[-1]) for ln in lines}
    for i in (1, 2):
        created, floor = walls.get(f"creation {i}"), walls.get(f"floor {i}")
        if created and floor:
            print(f"  creation {i} / floor {i}: {created / floor:.2f}x (issue 17's aim: 1.2x)")
    if proc.returncode != 0:
        print(f"  failed (pytest exit {proc.returncode}):\n{proc.stdout[-3000:]}")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else SIZE)
