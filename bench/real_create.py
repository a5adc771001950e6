"""`factory-create` on real lightningd nodes: the wall time an operator waits and where it goes
(the phases the LSP reports in the command's `timings`), the CPU each kind of process spent during
it, and the plugin's resident memory on the LSP and on a client node.

`make bench` runs 4, 16 and 64 clients (and 128 with `SUPERSCALAR_BENCH_128=1`; lightningd's
own floor for the same channel calls, and the lock-in that follows them until every channel is
CHANNELD_NORMAL, beside 64 and up with `SUPERSCALAR_BENCH_FLOOR=1`). By hand:

    .venv/bin/python bench/real_create.py 32 64            # sizes
    .venv/bin/python bench/real_create.py 32 --profile DIR  # py-spy of the LSP's plugin
    .venv/bin/python bench/real_create.py 64 --floor        # lightningd's floor (see `floor`)

Runs when `lightningd` and `lightning-cli` are on PATH (Core Lightning v26.06.6), with the
project's bitcoind; otherwise prints why it is skipped. Every node is a real lightningd with the
plugin, on loopback, in a temporary directory, stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "contrib" / "regtest"))
sys.path.insert(0, str(ROOT / "bench"))

from procstat import box_busy, cpu_by_kind, plugin_pid, rss_mb  # noqa: E402

SIZES = (4, 16, 64)
LARGE = 128  # added with SUPERSCALAR_BENCH_128=1 (129 nodes: minutes of set-up)
TARGETS_S = {64: 4.0, 128: 8.0}  # issue 17, on a 2-core machine
CLIENT_RSS_TARGET_MB = 60.0
START_BATCH = 16
# pyln-testing's node options (v26.06.6's pyln/testing/utils.py): every node polls bitcoind each
# second (bcli forks bitcoin-cli for it) and logs at trace level; the real-node tests, and any
# test harness built on pyln-testing, run their nodes so.
PYLN_OPTIONS = (
    "--developer",
    "--dev-bitcoind-poll=1",
    "--dev-fast-gossip",
    "--log-level=trace",
)
PYLN_SIZES = (64,)
FLOOR_FROM = 64  # SUPERSCALAR_BENCH_FLOOR=1: lightningd's floor beside these sizes  # lightningd nodes started at once


def _bitcoind_on_path() -> bool:
    cached = ROOT / ".venv" / "bitcoind-path"
    if shutil.which("bitcoind") is None and cached.exists():
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
    plugin: bool = True,
) -> Iterator[tuple[Any, Any, list[Any]]]:
    """bitcoind, an LSP (its wallet funded) and `n_clients` client nodes, connected; every node
    stopped on the way out. `node_options` go to every node, `lsp_options` to the LSP too.
    Without `plugin`, no node runs it (lightningd's floor).
    Yields (BitcoindProcess, LSP Node, client Nodes)."""
    from start import Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    bitcoind = BitcoindProcess(datadir=base / "bitcoind", txindex=txindex).start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        ours = (
            ["--superscalar-ceremony-timeout=120"] if plugin else ["--disable-plugin=superscalar"]
        )
        options = [*ours, *node_options, *lsp_options]
        lsp = Node("lsp", base, bitcoind, options)
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        clients = []
        for i in range(n_clients):
            ours = [f"--superscalar-accept-from={lsp_id}"] if plugin else ours
            options = [*ours, *node_options]
            clients.append(Node(f"client{i}", base, bitcoind, options))
        for b in range(0, n_clients, START_BATCH):
            batch = clients[b : b + START_BATCH]
            for node in batch:
                node.launch()
                nodes.append(node)
            for node in batch:
                wait_started(node)
        bitcoind.wallet.call("sendtoaddress", lsp.cli("newaddr", "bech32")["bech32"], 1)
        bitcoind.mine(6)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: lsp.cli("connect", n.cli("getinfo")["id"], "127.0.0.1", str(n.port)),
                    clients,
                )
            )
        lsp.wait_for_funds()
        settle(lsp.proc.pid, [c.proc.pid for c in clients])
        yield bitcoind, lsp, clients
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


SETTLED_CPU = 0.1  # CPU-seconds per second, every node together: the stack is idle
SETTLE_MAX_S = 30.0


def settle(lsp_pid: int, pids: list[int]) -> None:
    """Wait (at most SETTLE_MAX_S) until the nodes have finished starting up: a lightningd just
    started and connected still exchanges its first messages and runs its plugins' start-up
    for a while, and a measurement started then varies 2x between runs at 128 nodes. Settled:
    the nodes' CPU is under SETTLED_CPU, or (nodes that poll bitcoind each second never go
    quiet) it stopped falling over the last seconds. `lsp_pid`, `pids`: the lightningd processes
    of the LSP and of the clients."""
    deadline = time.monotonic() + SETTLE_MAX_S
    rates: list[float] = []
    before = sum(cpu_by_kind(lsp_pid, pids).values())
    while time.monotonic() < deadline:
        time.sleep(1.0)
        after = sum(cpu_by_kind(lsp_pid, pids).values())
        rates.append(after - before)
        before = after
        if rates[-1] < SETTLED_CPU or (len(rates) >= 5 and rates[-1] >= 0.9 * min(rates[-4:-1])):
            return


def wait_started(node: Any) -> None:
    """A node up; once more on another port if its port was taken meanwhile (other nodes of the
    machine pick free ports too)."""
    from superscalar_plugin.chain.bitcoind import free_port

    try:
        node.wait_started()
    except SystemExit:
        if node.proc is None or node.proc.poll() is None:
            raise
        node.port = free_port()
        node.options = [
            f"--addr=127.0.0.1:{node.port}" if o.startswith("--addr=") else o for o in node.options
        ]
        node.launch()
        node.wait_started()


def create(
    lsp: Any, clients: list[Any], channel_sat: int = 200_000, **shape: int
) -> tuple[dict[str, Any], float]:
    """`factory-create` with every client (and `shape`'s optional parameters, such as
    `clients_per_leaf` or `stock_sat`): its result and the wall time it took."""
    ids = [c.cli("getinfo")["id"] for c in clients]
    args = [f"clients={json.dumps(ids)}", f"channel_sat={channel_sat}"]
    args += [f"{k}={v}" for k, v in shape.items()]
    deadline = time.monotonic() + 60
    while True:
        t0 = time.perf_counter()
        try:
            result = lsp.cli("-k", "factory-create", *args)
        except subprocess.CalledProcessError as e:
            # the bLIP-56 handshake follows the connection by a moment
            if "has not announced" not in e.stdout or time.monotonic() > deadline:
                raise SystemExit(f"factory-create failed: {e.stdout}") from e
            time.sleep(0.2)
            continue
        return result, time.perf_counter() - t0


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, idle: bool = True) -> Iterator[None]:
    """py-spy (sampling, every thread, idle included or not) on `pid` while the block runs."""
    if out is None:
        yield
        return
    spy = ROOT / ".venv" / "bin" / "py-spy"
    cmd = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--threads"]
    cmd += ["--idle"] if idle else []
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def measure(
    n_clients: int,
    base: Path,
    profile: Path | None = None,
    node_options: Sequence[str] = (),
) -> dict[str, Any]:
    with stack(n_clients, base, node_options=node_options) as (_, lsp, clients):
        ids = [c.cli("getinfo")["id"] for c in clients]
        del ids  # every node answers: started
        lsp_plugin = plugin_pid(lsp.proc.pid)
        out = None if profile is None else profile / f"lsp-{n_clients}.txt"
        out_client = None if profile is None else profile / f"client0-cpu-{n_clients}.txt"
        before = cpu_by_kind(lsp.proc.pid, [c.proc.pid for c in clients])
        client0 = plugin_pid(clients[0].proc.pid)
        busy = box_busy()
        with profiled(lsp_plugin, out), profiled(client0, out_client, idle=False):
            result, wall = create(lsp, clients)
        busy = box_busy() - busy
        after = cpu_by_kind(lsp.proc.pid, [c.proc.pid for c in clients])
        cpu = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
        cpu["machine"] = round(busy, 2)
        return {
            "clients": n_clients,
            "as": "pyln-testing" if node_options else "",
            "wall_s": wall,
            "timings": result.get("timings", {}),
            "cpu_s": cpu,
            "lsp_plugin_rss_mb": rss_mb(lsp_plugin),
            "client_plugin_rss_mb": max(rss_mb(plugin_pid(c.proc.pid)) for c in clients),
        }


ZEROCONF_PLUGIN = """
from pyln.client import Plugin
plugin = Plugin()
@plugin.hook("openchannel")
def on_openchannel(openchannel, plugin, **kwargs):
    return {"result": "continue", "mindepth": 0}
plugin.run()
"""


def floor(
    n_clients: int,
    base: Path,
    parallel: Sequence[int] = (8,),
    node_options: Sequence[str] = (),
) -> list[dict[str, float]]:
    """lightningd's own floor: the same `fundchannel_start` and `fundchannel_complete` calls the
    creation makes (the same zero-conf channel type, push and reserve, `parallel` at once), with
    no superscalar plugin on any node: each client runs only a 5-line plugin accepting zero-conf
    opens, and every channel is completed with a PSBT paying its script from a made-up input
    (never broadcast). Wall seconds per phase, one round (a new channel with every client) per
    value of `parallel`, on the same nodes."""
    base.mkdir(parents=True, exist_ok=True)
    zeroconf = base / "zeroconf.py"
    zeroconf.write_text(f"#!{sys.executable}\n{ZEROCONF_PLUGIN}")
    zeroconf.chmod(0o755)
    options = [f"--plugin={zeroconf}", *node_options]
    with stack(n_clients, base, node_options=options, plugin=False) as (
        _,
        lsp,
        clients,
    ):
        ids = [c.cli("getinfo")["id"] for c in clients]
        from pyln.client import LightningRpc

        rpc = LightningRpc(str(lsp.dir / "regtest" / "lightning-rpc"))
        tracer = None
        if os.environ.get("BENCH_STRACE"):  # where the LSP's lightningd waits (syscalls)
            tracer = subprocess.Popen(
                [
                    "strace",
                    "-f",
                    "-c",
                    "-w",
                    "-o",
                    os.environ["BENCH_STRACE"],
                    "-p",
                    str(lsp.proc.pid),
                ]
            )
            time.sleep(1)
        pids = [c.proc.pid for c in clients]
        rounds: list[dict[str, float]] = []
        for p in parallel:
            rounds.append(floor_round(rpc, ids, p, len(rounds), lsp.proc.pid, pids))
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        return rounds


def floor_round(
    rpc: Any, ids: list[str], parallel: int, done: int, lsp_pid: int, client_pids: list[int]
) -> dict[str, float]:
    """One round of lightningd's floor on running nodes: a new zero-conf channel from the LSP
    (`rpc`) to every client in `ids`, `parallel` calls at once, until every channel is
    CHANNELD_NORMAL; `done` rounds came before on the same nodes. Seconds per phase and the
    CPU of each kind of process (`cpu_by_kind` of the given lightningd pids)."""
    from superscalar_plugin.engine.store import ClientEntry
    from superscalar_plugin.engine.tree import UnsignedNodeTx
    from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
    from superscalar_plugin.plugin.creation.funding import start_channel
    from superscalar_plugin.plugin.lightningd.psbt import leaf_psbt

    def start(node_id: str) -> str:
        return start_channel(rpc, ClientEntry(node_id, 200_000))

    def complete(i: int, node_id: str, script: str) -> None:
        tx = Tx(
            2,
            (TxIn(hashlib.sha256(b"%d" % i).hexdigest(), 1 + done, 0xFFFFFFFD),),
            (TxOut(200_000, bytes.fromhex(script)),),
            0,
        )
        utx = UnsignedNodeTx(0, tx, 201_000, b"\x51\x20" + bytes(32))
        rpc.call("fundchannel_complete", {"id": node_id, "psbt": leaf_psbt(utx)})

    before = cpu_by_kind(lsp_pid, client_pids)
    busy = box_busy()
    with ThreadPoolExecutor(parallel) as pool:
        t = time.perf_counter()
        scripts = list(pool.map(start, ids))
        t_start = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(complete, range(len(ids)), ids, scripts))
        t_complete = time.perf_counter() - t
    t = time.perf_counter()
    _wait_normal(rpc, (done + 1) * len(ids))
    t_lockin = time.perf_counter() - t
    after = cpu_by_kind(lsp_pid, client_pids)
    after["machine"] = box_busy() - busy
    return {
        "parallel": parallel,
        "fundchannel_start": t_start,
        "fundchannel_complete": t_complete,
        "lockin": t_lockin,
        **{f"cpu_{k}": round(after[k] - before.get(k, 0.0), 2) for k in after},
    }


def _wait_normal(rpc: Any, expected: int, timeout: float = 120.0) -> None:
    """Until lightningd shows `expected` channels in CHANNELD_NORMAL. A zero-conf channel's
    lock-in (channel_ready both ways, the peer's channel_update stored, the built-in plugins'
    reactions) goes on after `fundchannel_complete` returns; in a creation it overlaps the
    signing ceremony, so a creation's floor includes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chans = rpc.call("listpeerchannels")["channels"]
        if sum(c["state"] == "CHANNELD_NORMAL" for c in chans) >= expected:
            return
        time.sleep(0.02)
    raise SystemExit(f"the floor's channels never all reached CHANNELD_NORMAL ({expected})")


def _line(r: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
    target = TARGETS_S.get(r["clients"])
    verdict = ""
    if target is not None:
        verdict = f"  (target {target:g} s: {'met' if r['wall_s'] <= target else 'MISSED'})"
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_s"].items())
    how = " (nodes run as pyln-testing runs them: bitcoind polled each second, trace logs)"
    return (
        f"  {r['clients']:3d} clients: {r['wall_s']:6.2f} s{verdict}{how if r['as'] else ''}\n"
        f"      phases (s): {phases}\n"
        f"      CPU during it (s): {cpu}\n"
        f"      plugin RSS: LSP {r['lsp_plugin_rss_mb']:.1f} MB, a client at most"
        f" {r['client_plugin_rss_mb']:.1f} MB (target < {CLIENT_RSS_TARGET_MB:g} MB)"
    )


def run(
    sizes: Sequence[int] | None = None, profile: Path | None = None, keep: Path | None = None
) -> list[dict[str, Any]]:
    reason = skip_reason()
    if reason is not None:
        print(f"\nfactory-create on real lightningd: skipped: {reason}")
        return []
    if sizes is None:
        sizes = (*SIZES, LARGE) if os.environ.get("SUPERSCALAR_BENCH_128") else SIZES
    print("\nfactory-create on real lightningd v26.06.6 (LSP + N client nodes, loopback):")
    out = []
    for n in sizes:
        if keep is not None:
            r = measure(n, keep / f"create-{n}", profile)
        else:
            with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
                r = measure(n, Path(tmp), profile)
        print(_line(r), flush=True)
        if n in PYLN_SIZES:  # as a pyln-testing test runs its nodes
            with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
                r_pyln = measure(n, Path(tmp), None, PYLN_OPTIONS)
            print(_line(r_pyln), flush=True)
            out.append(r_pyln)
        if os.environ.get("SUPERSCALAR_BENCH_FLOOR") and n >= FLOOR_FROM:
            for measured in (r, r_pyln) if n in PYLN_SIZES else (r,):
                with tempfile.TemporaryDirectory(prefix="superscalar-floor-") as tmp:
                    [f] = floor(n, Path(tmp), node_options=PYLN_OPTIONS if measured["as"] else ())
                measured["floor"] = f
                print(_floor_line(measured), flush=True)
        out.append(r)
    return out


def _floor_line(r: dict[str, Any]) -> str:
    f, t = r["floor"], r["timings"]
    return (
        f"      lightningd's floor{' (nodes as pyln-testing runs them)' if r['as'] else ''}"
        f" (same calls, no plugin; separate nodes, {f['parallel']} at"
        f" once): fundchannel_start {f['fundchannel_start']:.2f} s"
        f" (creation {t.get('fundchannel_start', 0) / f['fundchannel_start']:.2f}x),"
        f" fundchannel_complete {f['fundchannel_complete']:.2f} s"
        f" (creation {t.get('fundchannel_complete', 0) / f['fundchannel_complete']:.2f}x),"
        f" then every channel CHANNELD_NORMAL {f['lockin']:.2f} s;\n"
        f"      all three {_floor_total(f):.2f} s: the whole creation took"
        f" {r['wall_s'] / _floor_total(f):.2f}x lightningd's own opens\n"
        f"      the floor's CPU (s): {_cpu_of(f)}"
    )


def _cpu_of(f: dict[str, Any]) -> str:
    return ", ".join(f"{k[4:]} {v:.2f}" for k, v in f.items() if k.startswith("cpu_"))


def _floor_total(f: dict[str, float]) -> float:
    return f["fundchannel_start"] + f["fundchannel_complete"] + f["lockin"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sizes", type=int, nargs="*")
    ap.add_argument("--profile", type=Path, help="py-spy the LSP's plugin into DIR/lsp-N.txt")
    ap.add_argument("--floor", action="store_true", help="lightningd's floor, no factory")
    ap.add_argument(
        "--dir", type=Path, help="run the nodes in DIR (kept: logs) instead of a temp dir"
    )
    ap.add_argument(
        "--parallel", default="8", help="--floor: calls in flight, one round per value: 8,32,8"
    )
    ap.add_argument("--pyln", action="store_true", help="--floor: nodes as pyln-testing runs them")
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.floor:
        reason = skip_reason()
        if reason is not None:
            raise SystemExit(reason)
        for n in args.sizes or SIZES:
            parallel = [int(x) for x in args.parallel.split(",")]
            with tempfile.TemporaryDirectory(prefix="superscalar-floor-") as tmp:
                rounds = floor(n, Path(tmp), parallel, PYLN_OPTIONS if args.pyln else ())
            for f in rounds:
                print(
                    f"  floor {n:3d} clients, {f['parallel']:3.0f} at once: fundchannel_start"
                    f" {f['fundchannel_start']:.2f} s, fundchannel_complete"
                    f" {f['fundchannel_complete']:.2f} s, lock-in {f['lockin']:.2f} s"
                    f" (total {_floor_total(f):.2f} s); CPU (s): {_cpu_of(f)}",
                    flush=True,
                )
        return
    run(args.sizes or None, args.profile, args.dir)


if __name__ == "__main__":
    main()
