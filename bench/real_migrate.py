"""`factory-migrate` on real lightningd nodes: how long an operator waits for a factory of 4 and
8 clients to move into its successor, per client, and what its end costs on chain.

A factory is created (states_per_layer 2, step 3 blocks, a 300-block life: the LSP's options),
the LSP pays every client 50,000 sat, a block is mined, then `factory-migrate <instance>` is
timed until the old factory's `factory-status` shows `closed` (the key-path spend of its funding
output confirmed). From the moment the command returned (the successor funded) a block is
mined every 0.5 s: a client moves only into a successor whose funding is 3 blocks deep (its
`superscalar-move-min-depth`), and every node polls bitcoind each second (lightningd's default
is 30 s).
Phases seen from the old factory's status: `successors` non-empty (the successor funded; its
creation's own `timings` come with the command's result), every client `handed_over`
(balances moved, old channels closing, keys in), `closed`. The key-path spend's vsize is read
from bitcoind, beside the engine's figures of bench/handover_size.py for the same shape. Each
node's log is scanned for UNUSUAL/BROKEN lines of the plugin.

Runs when `lightningd` and `lightning-cli` are on PATH (Core Lightning v26.06.6), with the
project's bitcoind; otherwise prints why it is skipped.

    .venv/bin/python bench/real_migrate.py [--dir DIR]   # DIR keeps the nodes' logs
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_create import create, skip_reason, stack

SIZES = (4, 8)
LSP_OPTIONS = (
    "--superscalar-lifetime-blocks=300",
    "--superscalar-states-per-layer=2",
    "--superscalar-step-blocks=3",
)
# lightningd looks for new blocks every 30 s by default: the wait for `closed` would be that
# poll, not the plugin's work. Every node polls each second instead (a developer option).
NODE_OPTIONS = ("--developer", "--dev-bitcoind-poll=1")
CHANNEL_SAT = 200_000
PAY_MSAT = 50_000_000  # what the LSP pays each client before the migration
POLL_S = 0.2  # how often the old factory's status is read
MINE_EVERY_S = 0.5  # a block this often once the command returned
TIMEOUT_S = 300.0
LOG_ALARM = re.compile(r"(UNUSUAL|BROKEN).*plugin-superscalar")


def wait(done: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def status(node: Any, instance: str) -> dict[str, Any]:
    return dict(node.cli("factory-status", instance)["factories"][0])


def normal(node: Any, peer_id: str) -> bool:
    chans = node.cli("listpeerchannels", peer_id)["channels"]
    return any(c["state"] == "CHANNELD_NORMAL" for c in chans)


def _no_htlcs(node: Any) -> bool:
    return all(not c.get("htlcs") for c in node.cli("listpeerchannels")["channels"])


def give_balances(lsp: Any, clients: list[Any]) -> None:
    """Every factory channel open on both sides, then the LSP pays each client PAY_MSAT."""
    lsp_id = lsp.cli("getinfo")["id"]
    for c in clients:
        cid = c.cli("getinfo")["id"]
        wait(lambda c=c, cid=cid: normal(lsp, cid) and normal(c, lsp_id), "channels open")
        label = f"bench-{os.urandom(4).hex()}"
        bolt11 = c.cli("invoice", str(PAY_MSAT), label, "bench")["bolt11"]
        paid = lsp.cli("--notifications=none", "pay", bolt11)  # only the JSON result
        if paid.get("status") != "complete":
            raise SystemExit(f"paying {cid} failed: {paid}")
    for n in [lsp, *clients]:
        wait(lambda n=n: _no_htlcs(n), "no HTLC in flight")


def mine_and_sync(bitcoind: Any, lsp: Any, clients: list[Any]) -> None:
    """One block, seen by every node; the LSP's change is then a confirmed, spendable coin."""
    bitcoind.mine(1)
    height = bitcoind.height()
    for n in [lsp, *clients]:
        wait(lambda n=n: n.cli("getinfo")["blockheight"] >= height, f"{n.name} at {height}")

    def spendable() -> bool:
        outs = lsp.cli("listfunds")["outputs"]
        return any(o["status"] == "confirmed" and not o.get("reserved") for o in outs)

    wait(spendable, "the LSP's confirmed change")


def _call(lsp: Any, command: str, instance: str, box: dict[str, Any]) -> None:
    t = time.perf_counter()
    try:
        box["result"] = lsp.cli(command, instance)
    except subprocess.CalledProcessError as e:
        box["error"] = e.stdout or e.stderr
    box["returned_s"] = time.perf_counter() - t


def _targets_normal(lsp: Any, s: dict[str, Any]) -> bool:
    """Every client's target channel (`moved_to`) is in CHANNELD_NORMAL on the LSP."""
    states = {c["channel_id"]: c["state"] for c in lsp.cli("listpeerchannels")["channels"]}
    return all(
        c["handed_over"] or states.get(c.get("moved_to", "")) == "CHANNELD_NORMAL"
        for c in s["clients"]
    )


def wind_down(
    bitcoind: Any, lsp: Any, instance: str, command: str = "factory-migrate"
) -> dict[str, Any]:
    """Time `command instance` (`factory-migrate` or `factory-close`) until the factory's status
    is `closed`; the phases as they show (seconds from the command): `successor_s` (a successor
    funded), `targets_s` (every client has a channel to move into), `targets_normal_s` (all of
    them usable), `first_key_s`, `keys_s` (every key in), `closed_s`. From the moment the
    command returned, a block every MINE_EVERY_S: what a client moves into must be confirmed
    (a successor's funding 3 deep, a close's channel locked in)."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=_call, args=(lsp, command, instance, box), daemon=True)
    t0 = time.perf_counter()
    thread.start()
    marks: dict[str, float] = {}
    mined_at, blocks = -MINE_EVERY_S, 0
    while True:
        s = status(lsp, instance)
        now = time.perf_counter() - t0
        if s["successors"]:
            marks.setdefault("successor_s", now)
        if all(c["handed_over"] or c.get("moved_to") for c in s["clients"]):
            marks.setdefault("targets_s", now)
        if "targets_s" in marks and "targets_normal_s" not in marks and _targets_normal(lsp, s):
            marks["targets_normal_s"] = now
        if any(c["handed_over"] for c in s["clients"]):
            marks.setdefault("first_key_s", now)
        if all(c["handed_over"] for c in s["clients"]):
            marks.setdefault("keys_s", now)
        if s["state"] == "closed":
            marks["closed_s"] = now
            break
        if "error" in box:
            raise SystemExit(f"{command} failed: {box['error']}")
        if "recovery" in s:  # past the last move height: what is left exits on its own
            raise SystemExit(f"{command} at {now:.0f} s: {s['recovery']}: {json.dumps(s)}")
        if now > TIMEOUT_S:
            raise SystemExit(f"{command} not done in {TIMEOUT_S:g} s: {json.dumps(s)}")
        if "returned_s" in box and now - mined_at >= MINE_EVERY_S:
            bitcoind.mine(1)
            mined_at, blocks = now, blocks + 1
        time.sleep(POLL_S)
    thread.join(timeout=TIMEOUT_S)
    result = box.get("result") or {}
    return {
        **marks,
        "returned_s": box.get("returned_s"),
        "blocks": blocks,
        "timings": result.get("timings", {}),
        "handover_txid": s["handover_txid"],
        "funding_txid": s["funding"]["txid"],
    }


def keypath_vbytes(bitcoind: Any, txid: str, funding_txid: str) -> int:
    tx = bitcoind.rpc.call("getrawtransaction", txid, True)
    [vin] = tx["vin"]
    assert vin["txid"] == funding_txid and len(vin["txinwitness"]) == 1, "not a key-path spend"
    return int(tx["vsize"])


def log_alarms(base: Path) -> list[str]:
    """UNUSUAL/BROKEN lines of the plugin in every node's log under `base`."""
    out = []
    for log in sorted(base.glob("*/log")):
        for line in log.read_text(errors="replace").splitlines():
            if LOG_ALARM.search(line):
                out.append(f"{log.parent.name}: {line.strip()}")
    return out


def alarm_kinds(alarms: list[str]) -> list[tuple[int, str]]:
    """The plugin's UNUSUAL/BROKEN lines counted by kind (node, time and ids left out), each
    with its first line."""
    kinds: dict[str, list[str]] = {}
    for line in alarms:
        text = line.split("plugin-superscalar: ", 1)[-1]
        kinds.setdefault(re.sub(r"[0-9a-f]{16,}", "<id>", text), []).append(line)
    return [(len(lines), lines[0]) for lines in kinds.values()]


def measure(n_clients: int, base: Path) -> dict[str, Any]:
    with stack(n_clients, base, LSP_OPTIONS, True, NODE_OPTIONS) as (bitcoind, lsp, clients):
        created, _ = create(lsp, clients, CHANNEL_SAT)
        instance = created["instance"]
        give_balances(lsp, clients)
        mine_and_sync(bitcoind, lsp, clients)
        r = wind_down(bitcoind, lsp, instance)
        r["keypath_vb"] = keypath_vbytes(bitcoind, r["handover_txid"], r["funding_txid"])
    return {"clients": n_clients, **r, "alarms": log_alarms(base)}


def _engine(n: int) -> dict[str, float]:
    """bench/handover_size.py's figures for the shape the LSP's options give (binary tree)."""
    from handover_size import SHAPES, one

    return one(n, SHAPES["binary"])


HEADER = (
    "clients  total_s /client_s  successor_funded_s  all_keys_s (first)  then_closed_s (blocks)"
    "  keypath_vB /client | engine: keypath_vB  all_exits_vB /client"
)


def _row(r: dict[str, Any], e: dict[str, float]) -> str:
    n = r["clients"]
    return (
        f"{n:>7} {r['closed_s']:>8.2f} {r['closed_s'] / n:>9.2f} {r['successor_s']:>19.2f}"
        f" {r['keys_s']:>11.2f} ({r['first_key_s']:.2f}) {r['closed_s'] - r['keys_s']:>14.2f}"
        f" ({r['blocks']:>3})"
        f" {r['keypath_vb']:>11} {r['keypath_vb'] / n:>7.1f} | {e['handover_vb']:>16}"
        f" {e['tree_vb']:>13} {e['tree_vb'] / n:>7.1f}"
    )


def run(keep: Path | None = None) -> list[dict[str, Any]]:
    reason = skip_reason()
    if reason is not None:
        print(f"\nfactory-migrate on real lightningd: skipped: {reason}")
        return []
    print(
        "\nfactory-migrate on real lightningd v26.06.6 (LSP + N clients holding 50,000 sat each;"
        "\nstates_per_layer 2, step 3, 300-block life): from the command to the old factory"
        "\n`closed`; from the command's return a block every 0.5 s (nodes poll"
        "\nbitcoind each second: --dev-bitcoind-poll=1)"
    )
    print(HEADER)
    out = []
    for n in SIZES:
        with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
            base = keep / f"migrate-{n}" if keep else Path(tmp)
            r = measure(n, base)
        print(_row(r, _engine(n)))
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r["timings"].items())
        print(f"{'':>9}successor creation ({phases}); command returned {r['returned_s']:.2f} s")
        for count, line in alarm_kinds(r["alarms"]):
            print(f"{'':>9}log, {count} line(s) like: {line}")
        sys.stdout.flush()
        out.append(r)
    return out


if __name__ == "__main__":
    keep = Path(sys.argv[2]) if len(sys.argv) == 3 and sys.argv[1] == "--dir" else None
    run(keep)
