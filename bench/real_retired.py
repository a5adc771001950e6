"""What retired channels cost a real lightningd: the channels every migration leaves behind.

Each migration closes one channel per client cooperatively; its funding is a leaf output of the
old factory, which never goes on chain, so lightningd keeps it as CLOSINGD_COMPLETE on both nodes
and sends its closing transaction again at every block and every 30-60 s (bitcoind refuses it:
its input never existed). A year of monthly ladders with 64 clients leaves 768 such channels on
the LSP (12 on each client).

Here retired channels are made as the plugin makes them, cheaply: the LSP opens a zero-conf,
unannounced channel to a client on an output of a transaction that is never broadcast (an
unsigned PSBT, `fundchannel_complete` without `withhold`), pushing 1 sat (the client has a stake,
as in a factory), then `close`s it cooperatively. The clients run a small plugin that accepts
zero-conf opens (`openchannel` hook: mindepth 0); the LSP runs the superscalar plugin.

At each count of retired channels on the LSP the bench prints:
- `listpeerchannels` on the LSP: the size of its JSON and its time (best of 3), and the time the
  plugin's `Node.channels()` takes (the same call through pyln-client, parsed into a dict);
- per block: how many closing transactions lightningd sends (its bcli plugin runs `bitcoin-cli
  sendrawtransaction` once per channel, one after the other), how long after the block the last
  of them is sent, and the CPU seconds of lightningd with its plugins and their children, and of
  bitcoind, per block (mean over `BLOCKS` blocks mined `BLOCK_GAP_S` apart: the 30-60 s timer
  rounds in between are counted too);
- lightningd's resident memory, its database's size, its channeld processes (a retired
  channel has none), and the time `lightningd` takes to restart and answer;
- then, per retired channel, those costs, and what they make at mainnet's pace (a rebroadcast
  round every 30-60 s and after every block).

Every node polls bitcoind each second (`--dev-bitcoind-poll=1`, a developer option: without it a
block is seen up to 30 s late), else stock options. Runs when `lightningd` and `lightning-cli`
are on PATH (Core Lightning v26.06.6) with the project's bitcoind; otherwise prints why not.

    .venv/bin/python bench/real_retired.py [--retired 768] [--clients 4] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_create import ROOT, skip_reason

sys.path.insert(0, str(ROOT / "contrib" / "regtest"))

CHANNEL_SAT = 100_000
PUSH_MSAT = 1_000  # what a creation pushes to each client: the client has a stake
STAGES = (0, 192, 768)
MAINNET_ROUNDS_PER_MIN = 60 / 45 + 0.1  # the 30-60 s timer, and one round per 10-min block
BLOCKS = 3
BLOCK_GAP_S = 15.0
ZERO_CONF_PLUGIN = """
from pyln.client import Plugin
plugin = Plugin()

@plugin.hook("openchannel")
def on_openchannel(openchannel, plugin, **kwargs):
    return {"result": "continue", "mindepth": 0}

plugin.run()
"""
SENDRAWTX = re.compile(r"sendrawtx exit")
ADDING_BLOCK = re.compile(r"Adding block (\d+):")


def _rpc(node: Any) -> Any:
    from pyln.client import LightningRpc

    return LightningRpc(str(node.dir / "regtest" / "lightning-rpc"))


def _cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, with its reaped children (cutime + cstime), and of every live
    descendant the same way: lightningd, its subdaemons and plugins, and bcli's bitcoin-cli runs."""
    total = 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total + sum(_cpu_ticks(int(c)) for c in children)


def _subdaemons(pid: int, name: str) -> int:
    """Live processes called `name` among `pid`'s children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return 0
    count = 0
    for c in children:
        with suppress(FileNotFoundError):
            count += Path(f"/proc/{c}/comm").read_text().strip() == name[:15]
    return count


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def retire(lsp: Any, client: Any, count: int) -> None:
    """`count` retired channels from `lsp` to `client`: open on a never-broadcast output, close."""
    from superscalar_plugin.engine.tree import UnsignedNodeTx
    from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
    from superscalar_plugin.plugin.lightningd.psbt import leaf_psbt

    l_rpc, peer = _rpc(lsp), _rpc(client).getinfo()["id"]
    for _ in range(count):
        start = l_rpc.call(
            "fundchannel_start",
            {
                "id": peer,
                "amount": CHANNEL_SAT,
                "mindepth": 0,
                "announce": False,
                "channel_type": [12, 46, 50],
                "push_msat": PUSH_MSAT,
            },
        )
        script = bytes.fromhex(start["scriptpubkey"])
        tx = Tx(2, (TxIn(os.urandom(32).hex(), 0, 0xFFFFFFFD),), (TxOut(CHANNEL_SAT, script),), 0)
        parent = bytes.fromhex("5120") + os.urandom(32)
        psbt = leaf_psbt(UnsignedNodeTx(0, tx, CHANNEL_SAT + 1_000, parent))
        done = l_rpc.call("fundchannel_complete", {"id": peer, "psbt": psbt})
        cid = done["channel_id"]
        deadline = time.monotonic() + 60
        while True:  # `close` once channeld runs the channel (right after the open)
            try:
                closed = l_rpc.call("close", {"id": cid})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert closed["type"] == "mutual", closed


def _states(rpc: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in rpc.listpeerchannels()["channels"]:
        out[c["state"]] = out.get(c["state"], 0) + 1
    return out


def listpeerchannels_figures(lsp: Any) -> dict[str, float]:
    from superscalar_plugin.plugin.lightningd.config import Config
    from superscalar_plugin.plugin.lightningd.node import Node

    rpc = _rpc(lsp)
    best = plugin_best = float("inf")
    size = 0
    for _ in range(3):
        t = time.perf_counter()
        result = rpc.listpeerchannels()
        best = min(best, time.perf_counter() - t)
        size = len(json.dumps(result))
        node = Node(rpc, Config())
        t = time.perf_counter()
        node.channels()
        plugin_best = min(plugin_best, time.perf_counter() - t)
    return {"bytes": size, "s": best, "plugin_s": plugin_best}


def _log_size(node: Any) -> int:
    return (node.dir / "log").stat().st_size


def _sends_since(node: Any, offset: int) -> int:
    """`sendrawtransaction` runs bcli logged after byte `offset` of the node's log."""
    with (node.dir / "log").open("rb") as f:
        f.seek(offset)
        return sum(1 for line in f if SENDRAWTX.search(line.decode(errors="replace")))


def block_figures(bitcoind: Any, lsp: Any, expect: int) -> dict[str, float]:
    """Mine BLOCKS blocks BLOCK_GAP_S apart: per block, the closing transactions sent after it,
    how long after the block the last one went, and the CPU spent."""
    rpc = _rpc(lsp)
    pid = int(rpc.getinfo().get("pid", 0) or lsp.proc.pid)
    mark = _log_size(lsp)
    ticks0, btc0 = _cpu_ticks(lsp.proc.pid), _cpu_ticks(bitcoind.pid)
    sent_after: list[int] = []
    lag: list[float] = []
    for _ in range(BLOCKS):
        height = bitcoind.rpc.call("getblockcount") + 1
        before = _log_size(lsp)
        t0 = time.monotonic()
        bitcoind.mine(1)
        while rpc.getinfo()["blockheight"] < height:
            time.sleep(0.05)
        seen = time.monotonic() - t0
        # Wait for the round after this block (bcli may still be busy with an earlier one), then
        # until it is over: no new sendrawtx line for 2 s.
        count, last_change, last_t = 0, time.monotonic(), seen
        first_by = time.monotonic() + (30.0 if expect else 2.0)
        while (count == 0 and time.monotonic() < first_by) or time.monotonic() - last_change < 2.0:
            n = _sends_since(lsp, before)
            if n != count:
                count, last_change = n, time.monotonic()
                last_t = last_change - t0
            time.sleep(0.2)
        sent_after.append(count)
        lag.append(last_t if count > 0 else seen)
        rest = BLOCK_GAP_S - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
    window = BLOCKS * BLOCK_GAP_S
    ticks = (_cpu_ticks(lsp.proc.pid) - ticks0) / os.sysconf("SC_CLK_TCK")
    btc = (_cpu_ticks(bitcoind.pid) - btc0) / os.sysconf("SC_CLK_TCK")
    total_sent = _sends_since(lsp, mark)
    return {
        "sent_per_block": max(sent_after),
        "sent_per_minute": total_sent * 60 / window,
        "round_s": max(lag),
        "cpu_per_min": ticks * 60 / window,
        "bitcoind_cpu_per_min": btc * 60 / window,
        "rss_mb": _rss_mb(pid),
        "channelds": _subdaemons(lsp.proc.pid, "lightning_channeld"),
        "db_mb": (lsp.dir / "regtest" / "lightningd.sqlite3").stat().st_size / 1e6,
    }


@contextmanager
def nodes(base: Path, n_clients: int) -> Iterator[tuple[Any, Any, list[Any]]]:
    from start import PLUGIN, Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    zero_conf = base / "zero_conf.py"
    zero_conf.write_text(f"#!{sys.executable}\n{ZERO_CONF_PLUGIN}")
    zero_conf.chmod(0o755)
    bitcoind = BitcoindProcess(datadir=base / "bitcoind").start()
    started: list[Any] = []
    try:
        bitcoind.mine(101)
        poll = ["--developer", "--dev-bitcoind-poll=1"]
        lsp = Node("lsp", base, bitcoind, poll)
        lsp.start()
        started.append(lsp)
        for i in range(n_clients):
            c = Node(f"client{i}", base, bitcoind, [*poll, f"--plugin={zero_conf}"])
            c.options.remove(f"--plugin={PLUGIN}")
            c.start()
            started.append(c)
            lsp.cli("connect", c.cli("getinfo")["id"], "127.0.0.1", str(c.port))
        yield bitcoind, lsp, started[1:]
    finally:
        for node in reversed(started):
            node.stop()
        bitcoind.stop()


def _restart(lsp: Any) -> float:
    lsp.stop()
    t = time.perf_counter()
    lsp.start()
    return time.perf_counter() - t


def measure(base: Path, retired: int, n_clients: int) -> list[dict[str, Any]]:
    stages = [s for s in STAGES if s < retired] + [retired]
    out = []
    with nodes(base, n_clients) as (bitcoind, lsp, clients):
        made = 0
        for stage in stages:
            per = (stage - made) // n_clients
            t = time.perf_counter()
            threads = [
                threading.Thread(
                    target=retire, args=(lsp, c, per + (i < (stage - made) % n_clients))
                )
                for i, c in enumerate(clients)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            make_s = time.perf_counter() - t
            made = stage
            states = _states(_rpc(lsp))
            assert states.get("CLOSINGD_COMPLETE", 0) == stage, states
            row: dict[str, Any] = {"retired": stage, "make_s": make_s}
            row.update(listpeerchannels_figures(lsp))
            row.update(block_figures(bitcoind, lsp, stage))
            out.append(row)
            _print(row)
        restart_s = _restart(lsp)
        for c in clients:
            lsp.cli("connect", c.cli("getinfo")["id"], "127.0.0.1", str(c.port))
        after = _states(_rpc(lsp))
        print(
            f"  restart with {retired} retired: lightningd answers after {restart_s:.1f} s;"
            f" still listed after the restart: {after}"
        )
        client_states = _states(_rpc(clients[0]))
        print(f"  client0 lists {client_states}")
    summary(out)
    return out


def _print(r: dict[str, Any]) -> None:
    print(
        f"  {r['retired']:5d} retired (made in {r['make_s']:.0f} s): listpeerchannels {r['bytes'] / 1e6:6.2f} MB"
        f" {r['s'] * 1000:7.1f} ms (plugin's Node.channels {r['plugin_s'] * 1000:7.1f} ms);"
        f" per block: {r['sent_per_block']:4d} closing txs sent, last {r['round_s']:5.1f} s"
        f" after the block; {r['sent_per_minute']:6.0f} sends/min;"
        f" CPU lightningd+plugins {r['cpu_per_min']:5.2f} s/min, bitcoind"
        f" {r['bitcoind_cpu_per_min']:5.2f} s/min; RSS {r['rss_mb']:.0f} MB,"
        f" database {r['db_mb']:.1f} MB, channeld processes {r['channelds']}",
        flush=True,
    )


def summary(rows: list[dict[str, Any]]) -> None:
    """Per retired channel, from the first and last rows, and what that makes on mainnet."""
    first, last = rows[0], rows[-1]
    n = last["retired"] - first["retired"]
    if n <= 0 or last["sent_per_minute"] <= first["sent_per_minute"]:
        return
    sends = last["sent_per_minute"] - first["sent_per_minute"]
    cpu_ms = (last["cpu_per_min"] - first["cpu_per_min"]) / sends * 1000
    btc_ms = (last["bitcoind_cpu_per_min"] - first["bitcoind_cpu_per_min"]) / sends * 1000
    kb = (last["bytes"] - first["bytes"]) / n / 1000
    lpc_ms = (last["s"] - first["s"]) / n * 1000
    rss_kb = (last["rss_mb"] - first["rss_mb"]) / n * 1000
    mainnet = last["retired"] * MAINNET_ROUNDS_PER_MIN * (cpu_ms + btc_ms) / 1000
    print(
        f"  per retired channel: {kb:.1f} KB and {lpc_ms:.3f} ms of listpeerchannels,"
        f" {rss_kb:.0f} KB of lightningd memory, and per rebroadcast round one send costing"
        f" {cpu_ms:.2f} ms CPU in lightningd/bcli/bitcoin-cli + {btc_ms:.2f} ms in bitcoind."
        f"\n  on mainnet (about {MAINNET_ROUNDS_PER_MIN:.2f} rounds a minute) {last['retired']}"
        f" retired channels cost {mainnet:.1f} s CPU a minute"
        f" ({mainnet / 60 * 100:.1f}% of one core), growing linearly with every migration."
    )


def run(retired: int = 768, n_clients: int = 4, keep: Path | None = None) -> list[dict[str, Any]]:
    reason = skip_reason()
    if reason is not None:
        print(f"\nretired channels on real lightningd: skipped: {reason}")
        return []
    print(
        f"\nretired channels (CLOSINGD_COMPLETE, funding never on chain) on a real lightningd"
        f" v26.06.6 LSP with {n_clients} client nodes:"
    )
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return measure(keep, retired, n_clients)
    with tempfile.TemporaryDirectory(prefix="superscalar-retired-") as tmp:
        return measure(Path(tmp), retired, n_clients)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--retired", type=int, default=768)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    run(args.retired, args.clients, args.dir)
