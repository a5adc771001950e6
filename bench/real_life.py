"""The whole life of a factory on real lightningd nodes (issue 17): an LSP and N clients (64 by
default), each step timed and broken into the phases it shows.

1. create: `factory-create` with every client (2 clients per leaf, 100,000 sat of stock per
   leaf; the LSP's options: states_per_layer 2, step 3 blocks, a 300-block life); the phases
   are the command's `timings`. The LSP then pays every client 50,000 sat (untimed: what the
   migration moves).
2. one sale: `factory-sell <instance> <client0> 50000`, from client0's leaf's stock (its `kind`
   must be "factory"); wall time (the result gives no phases).
3. routed payments: what the plugin's hooks on the LSP add to an ordinary payment it forwards.
   Two plain nodes A and B and a second router LSP0 (all three without the plugin:
   `--disable-plugin=superscalar`, with the LSP's lightningd options) have the channels
   A->LSP->B and A->LSP0->B. Per round an invoice of B is paid by A over a hand-built route (`sendpay`, then
   `waitsendpay`: no pathfinding) through the LSP, then through LSP0 (the order alternates);
   the figure is sendpay to complete, median per router (and the median of each round's
   ratio), while the factory (and its sale) is live on the LSP, so its `htlc_accepted` hook
   works on a realistic guard table.
4. factory-migrate into a successor, timed until the old factory is `closed` (its funding spent
   by key path), as bench/real_migrate.py does.
5. factory-close of the successor: each client gets an ordinary channel from the LSP's wallet,
   moves its balance there once it confirms, and hands over its key; timed until `closed`.
   Blocks are mined every 0.5 s from the moment the command returned.

Before the close (untimed) the LSP's wallet gets one coin per client: lightningd's `fundchannel`
spends confirmed coins only, and with a few coins the close opens a few channels per block.
Every node polls bitcoind each second (`--dev-bitcoind-poll=1`).

    .venv/bin/python bench/real_life.py [N] [--dir DIR]   # DIR keeps the nodes' logs

Runs when `lightningd` and `lightning-cli` are on PATH (Core Lightning v26.06.6), with the
project's bitcoind; otherwise prints why it is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_create import create, skip_reason, stack, wait_started
from real_migrate import (
    CHANNEL_SAT,
    LSP_OPTIONS,
    NODE_OPTIONS,
    alarm_kinds,
    give_balances,
    keypath_vbytes,
    log_alarms,
    mine_and_sync,
    normal,
    wait,
    wind_down,
)

SIZE = 64
SHAPE = {"clients_per_leaf": 2, "stock_sat": 100_000}  # 32 leaves of 100,000 sat at 64 clients
SOLD_SAT = 50_000
ROUNDS = 100  # payments through each router
WARM_UP = 3  # payments through each router before the rounds, not counted
PAYMENT_MSAT = 1_000_000
PATH_CHANNEL_SAT = 1_000_000  # each channel of A->LSP->B and A->LSP0->B
COIN_SAT = 300_000  # the LSP's coins for the close's channels (CHANNEL_SAT each, and fees)
TARGET_RATIO = 1.05  # issue 17: a payment through the LSP, with the plugin over without


def _rpc(node: Any) -> Any:
    from pyln.client import LightningRpc

    return LightningRpc(str(node.dir / "regtest" / "lightning-rpc"))


@contextlib.contextmanager
def plain_nodes(bitcoind: Any, base: Path, names: list[str]) -> Iterator[list[Any]]:
    """lightningd nodes without the plugin, stopped on the way out."""
    from start import Node  # contrib/regtest/start.py

    options = ["--disable-plugin=superscalar", *NODE_OPTIONS]
    nodes = [Node(name, base, bitcoind, options) for name in names]
    try:
        for node in nodes:
            node.launch()
        for node in nodes:
            wait_started(node)
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


def _confirmed(node: Any) -> int:
    return sum(1 for o in node.cli("listfunds")["outputs"] if o["status"] == "confirmed")


def _fund(bitcoind: Any, coins: dict[Any, list[int]]) -> None:
    """Each node gets its coins (sat) in one transaction; mined, and seen by every wallet."""
    outputs, expected = {}, {}
    for node, amounts in coins.items():
        expected[node] = _confirmed(node) + len(amounts)
        for sat in amounts:
            outputs[node.cli("newaddr", "bech32")["bech32"]] = sat / 100_000_000
    bitcoind.wallet.call("sendmany", "", outputs)
    bitcoind.mine(1)
    for node, n in expected.items():
        wait(lambda node=node, n=n: _confirmed(node) >= n, f"{node.name}'s coins")


def _node_id(node: Any) -> str:
    return str(node.cli("getinfo")["id"])


def _scid(node: Any, peer: Any) -> str:
    [ch] = node.cli("listpeerchannels", _node_id(peer))["channels"]
    return str(ch["short_channel_id"])


def open_paths(bitcoind: Any, alice: Any, routers: list[Any], bob: Any) -> None:
    """The channels alice->router->bob for each router, confirmed and usable both ends."""
    pairs = [(alice, r) for r in routers] + [(r, bob) for r in routers]
    for a, b in pairs:
        a.cli("connect", _node_id(b), "127.0.0.1", str(b.port))
        a.cli("fundchannel", _node_id(b), str(PATH_CHANNEL_SAT))
    bitcoind.mine(6)
    for a, b in pairs:
        wait(lambda a=a, b=b: normal(a, _node_id(b)) and normal(b, _node_id(a)), "paths open")


def _route(alice: Any, router: Any, bob: Any, final_cltv: int) -> list[dict[str, Any]]:
    """alice -> router -> bob for PAYMENT_MSAT, with the router's own fee and CLTV delta."""
    [out] = router.cli("listpeerchannels", _node_id(bob))["channels"]
    ours = out["updates"]["local"]
    fee = int(ours["fee_base_msat"]) + PAYMENT_MSAT * ours["fee_proportional_millionths"] // 10**6
    return [
        {
            "id": _node_id(router),
            "channel": _scid(alice, router),
            "amount_msat": PAYMENT_MSAT + fee,
            "delay": final_cltv + ours["cltv_expiry_delta"],
        },
        {
            "id": _node_id(bob),
            "channel": out["short_channel_id"],
            "amount_msat": PAYMENT_MSAT,
            "delay": final_cltv,
        },
    ]


class Payer:
    """alice pays bob's invoices over fixed routes: the wall time of sendpay to complete."""

    def __init__(self, alice: Any, bob: Any) -> None:
        self.alice, self.bob = _rpc(alice), _rpc(bob)

    def invoice(self) -> dict[str, Any]:
        label = f"life-{os.urandom(6).hex()}"
        return dict(self.bob.call("invoice", [PAYMENT_MSAT, label, "life"]))

    def pay(self, route: list[dict[str, Any]]) -> float:
        inv = self.invoice()
        payment = {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": PAYMENT_MSAT,
        }
        t = time.perf_counter()
        self.alice.call("sendpay", payment)
        done = self.alice.call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 60})
        wall = time.perf_counter() - t
        if done.get("status") != "complete":
            raise SystemExit(f"payment failed: {done}")
        return wall


def routed_payments(alice: Any, lsp: Any, plain: Any, bob: Any) -> dict[str, Any]:
    """ROUNDS payments alice->LSP->bob and as many alice->LSP0->bob, interleaved: medians (ms)."""
    payer = Payer(alice, bob)
    final_cltv = int(
        payer.alice.call("decode", [payer.invoice()["bolt11"]])["min_final_cltv_expiry"]
    )
    routes = {
        "lsp": _route(alice, lsp, bob, final_cltv),
        "plain": _route(alice, plain, bob, final_cltv),
    }

    def first(route: list[dict[str, Any]]) -> None:  # the route is usable: retried a while
        deadline = time.monotonic() + 60
        while True:
            try:
                payer.pay(route)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    for route in routes.values():
        first(route)
        for _ in range(WARM_UP):
            payer.pay(route)
    walls: dict[str, list[float]] = {"lsp": [], "plain": []}
    for i in range(ROUNDS):
        for via in ("lsp", "plain") if i % 2 == 0 else ("plain", "lsp"):
            walls[via].append(payer.pay(routes[via]))
    with_ms = statistics.median(walls["lsp"]) * 1000
    without_ms = statistics.median(walls["plain"]) * 1000
    paired = [a / b for a, b in zip(walls["lsp"], walls["plain"], strict=True)]
    a_id, b_id = _node_id(alice), _node_id(bob)
    inside = {
        via: router_times(node.dir / "log", a_id, b_id)[-ROUNDS:]
        for via, node in (("lsp", lsp), ("plain", plain))
    }
    return {
        "hook_ms": statistics.median(w for w, _ in inside["lsp"]),
        "hook_ms_plain": statistics.median(w for w, _ in inside["plain"]),
        "router_ms": statistics.median(r for _, r in inside["lsp"]),
        "router_ms_plain": statistics.median(r for _, r in inside["plain"]),
        "rounds": ROUNDS,
        "with_plugin_ms": with_ms,
        "without_plugin_ms": without_ms,
        "ratio": with_ms / without_ms,
        "paired_ratio": statistics.median(paired),  # per round: the load moves both alike
        "with_plugin_ms_min": min(walls["lsp"]) * 1000,
        "without_plugin_ms_min": min(walls["plain"]) * 1000,
    }


def _stamp(line: str) -> float:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def router_times(log: Path, a_id: str, b_id: str) -> list[tuple[float, float]]:
    """Per payment a->router->b, from the router's log (its clock, no load of the payer in it):
    (ms from a's revoke_and_ack, which commits the HTLC, to the update_add_htlc out to b: the
    window of the htlc_accepted hooks; ms from a's update_add_htlc in to the
    update_fulfill_htlc out to a: the router's whole part of the payment)."""
    out: list[tuple[float, float]] = []
    added = committed = hooked = None
    for line in log.read_text(errors="replace").splitlines():
        if "WIRE_" not in line:
            continue
        if "peer_in WIRE_UPDATE_ADD_HTLC" in line and a_id in line:
            added, committed, hooked = _stamp(line), None, None
        elif "peer_in WIRE_REVOKE_AND_ACK" in line and a_id in line and added and not hooked:
            committed = _stamp(line)
        elif "peer_out WIRE_UPDATE_ADD_HTLC" in line and b_id in line and committed:
            hooked = _stamp(line) - committed
        elif "peer_out WIRE_UPDATE_FULFILL_HTLC" in line and a_id in line and added and hooked:
            out.append((hooked * 1000, (_stamp(line) - added) * 1000))
            added = None
    return out


def sell(lsp: Any, instance: str, client: Any) -> dict[str, Any]:
    t = time.perf_counter()
    sold = lsp.cli("factory-sell", instance, _node_id(client), str(SOLD_SAT))
    wall = time.perf_counter() - t
    assert sold["kind"] == "factory", sold
    return {"wall_s": wall, "kind": sold["kind"], "stock_left_sat": sold.get("stock_left_sat")}


def measure(n_clients: int, base: Path) -> dict[str, Any]:
    """Every step, its row printed as soon as it is done."""
    r: dict[str, Any] = {"clients": n_clients}
    print(HEADER, flush=True)
    with (
        stack(n_clients, base, LSP_OPTIONS, True, NODE_OPTIONS) as (bitcoind, lsp, clients),
        plain_nodes(bitcoind, base, ["alice", "bob", "lsp0"]) as (alice, bob, plain),
    ):
        _fund(bitcoind, {alice: [2 * PATH_CHANNEL_SAT] * 2, plain: [2 * PATH_CHANNEL_SAT]})
        open_paths(bitcoind, alice, [lsp, plain], bob)

        created, create_s = create(lsp, clients, CHANNEL_SAT, **SHAPE)
        r["create"] = {"wall_s": create_s, "timings": created.get("timings", {})}
        _say(_create_row(r["create"]))
        instance = created["instance"]
        give_balances(lsp, clients)  # before the sale: no payment may take the sold channel
        r["sale"] = sell(lsp, instance, clients[0])
        _say(_sale_row(r["sale"]))
        r["payments"] = routed_payments(alice, lsp, plain, bob)
        _say(_payments_row(r["payments"]))

        mine_and_sync(bitcoind, lsp, clients)
        for step, command in (("migrate", "factory-migrate"), ("close", "factory-close")):
            if step == "close":  # a coin per channel the close opens (untimed)
                _fund(bitcoind, {lsp: [COIN_SAT] * n_clients})
            w = wind_down(bitcoind, lsp, instance, command)
            w["keypath_vb"] = keypath_vbytes(bitcoind, w["handover_txid"], w["funding_txid"])
            r[step] = w
            _say(_wind_down_rows(step, w, n_clients))
            if step == "migrate":
                [instance] = lsp.cli("factory-status", instance)["factories"][0]["successors"]
    r["alarms"] = log_alarms(base)
    return r


def _say(text: str) -> None:
    print(text, flush=True)


HEADER = f"{'step':<28} {'wall_s':>7}  phases (s from the command)"
WIND_DOWN_MARKS = [
    ("successor_s", "successor funded"),
    ("returned_s", "command returned"),
    ("targets_s", "every client has a target"),
    ("targets_normal_s", "targets usable"),
    ("first_key_s", "first key"),
    ("keys_s", "all keys"),
    ("closed_s", "closed"),
]
# What a forwarded HTLC meets of the plugin on the LSP (superscalar_plugin/plugin/main.py): one
# hook. Its rpc_command hook is filtered to `invoice`, custommsg to type 32800, openchannel sees
# opens only; a forward's notifications (forward_event, coin_movement) are not subscribed to.
HOOKS = (
    f"{'':<38}a forward meets one hook of the plugin on the LSP: htlc_accepted (async, answered"
    f"\n{'':<38}from the guard table); the built-in keysend plugin's htlc_accepted runs on both"
    f" routers.\n{'':<38}LSP0 has none of the factory's channels and peers: the ratio holds"
    " their cost to lightningd too"
)


def _create_row(c: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in c["timings"].items())
    return f"{'1 create':<28} {c['wall_s']:>7.2f}  {phases}"


def _sale_row(s: dict[str, Any]) -> str:
    return (
        f"{f'2 sale ({SOLD_SAT:,} sat)':<28} {s['wall_s']:>7.2f}  kind {s['kind']}, stock left"
        f" {s['stock_left_sat']:,} sat (the result reports no phases: wall time)"
    )


def _payments_row(p: dict[str, Any]) -> str:
    verdict = "met" if p["ratio"] <= TARGET_RATIO else "MISSED"
    return (
        f"{'3 payment A->LSP->B':<28} {p['with_plugin_ms'] / 1000:>7.3f}  median of"
        f" {p['rounds']}: with the plugin {p['with_plugin_ms']:.1f} ms (best"
        f" {p['with_plugin_ms_min']:.1f}), without it (A->LSP0->B)"
        f" {p['without_plugin_ms']:.1f} ms (best {p['without_plugin_ms_min']:.1f}):"
        f" {p['ratio']:.3f}x (target <= {TARGET_RATIO}x: {verdict}); median of the rounds'"
        f" own ratios {p['paired_ratio']:.3f}x\n"
        f"{'':>38}inside the router, from its own log (medians): A's HTLC committed to the add"
        f" out to B (the hooks' window)\n{'':>38}{p['hook_ms']:.1f} ms with the plugin,"
        f" {p['hook_ms_plain']:.1f} ms without; A's add in to the fulfill out to A"
        f" {p['router_ms']:.1f} ms with, {p['router_ms_plain']:.1f} ms without:"
        f" {p['router_ms'] / p['router_ms_plain']:.3f}x\n{HOOKS}"
    )


def _wind_down_rows(step: str, w: dict[str, Any], n: int) -> str:
    number = {"migrate": 4, "close": 5}[step]
    seen = sorted((w[k], label) for k, label in WIND_DOWN_MARKS if w.get(k) is not None)
    marks = ", ".join(f"{label} {t:.2f}" for t, label in seen)
    lines = [
        f"{f'{number} {step}':<28} {w['closed_s']:>7.2f}  {marks} ({w['blocks']} blocks mined);"
        f" {w['closed_s'] / n:.2f} s per client; key-path spend {w['keypath_vb']} vB"
    ]
    if w["timings"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in w["timings"].items())
        lines.append(f"{'':<38}the successor's creation: {phases}")
    return "\n".join(lines)


def run(n_clients: int = SIZE, keep: Path | None = None) -> dict[str, Any]:
    reason = skip_reason()
    if reason is not None:
        print(f"\nthe whole life of a factory on real lightningd: skipped: {reason}")
        return {}
    print(
        f"\nthe whole life of a factory on real lightningd v26.06.6: LSP + {n_clients} clients"
        f"\n(2 per leaf, {SHAPE['stock_sat']:,} sat of stock per leaf; states_per_layer 2, step 3,"
        " 300-block life; from the migration on, a block every 0.5 s once the command returned)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
        base = keep / f"life-{n_clients}" if keep else Path(tmp)
        r = measure(n_clients, base)
    for count, line in alarm_kinds(r["alarms"]):
        print(f"  log, {count} line(s) like: {line}")
    sys.stdout.flush()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("clients", type=int, nargs="?", default=SIZE)
    ap.add_argument("--dir", type=Path, help="run the nodes in DIR (kept: logs)")
    args = ap.parse_args()
    run(args.clients, args.dir)


if __name__ == "__main__":
    main()
