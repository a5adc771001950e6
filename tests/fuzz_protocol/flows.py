"""The honest flows a seed plays, each a step that returns a short outcome for the trace and keeps
the honest clients' ledgers: creation, confirmation, the LSP paying a client, a gift sale
(factory-sell), a purchase (factory-buy), a migration (factory-migrate) and a cooperative close
(factory-close). A step never fails the run: a hostile action may make it fail, and the
invariant, not the step, decides whether a client was harmed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .invariant import MOVE_FEE_CAP_MSAT
from .world import World
from harness.errors import RpcCallError
from harness.node import FakeNode

CHANNEL_SAT = 100_000
PAY_MSAT = 30_000_000
SALE_SAT = 20_000
MAX_BUY_FEE_SAT = 2_000
RPC_TIMEOUT = 20.0


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def status(node: FakeNode, instance: str) -> dict[str, Any] | None:
    try:
        found = node.rpc_call("factory-status", {"instance": instance})["factories"]
    except RpcCallError:
        return None
    return dict(found[0]) if found else None


def _call(node: FakeNode, method: str, params: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        return node.rpc_call(method, params, timeout=RPC_TIMEOUT), None
    except RpcCallError as e:
        return None, e.message[:120]
    except TimeoutError:
        return None, "timed out"


def create(world: World) -> str:
    params = {"clients": [c.node_id for c in world.clients], "channel_sat": CHANNEL_SAT}
    for _ in range(40):  # until every client's handshake arrived
        res, err = _call(world.lsp, "factory-create", params)
        if err is None or "has not announced SuperScalar support" not in err:
            break
        time.sleep(0.1)
    if err is not None:
        return f"create failed: {err}"
    world.instance = str(res["instance"])
    return f"created {world.instance[:16]}"


def _funding_txid(world: World) -> str | None:
    view = status(world.lsp, world.instance) if world.instance else None
    funding = (view or {}).get("funding") or {}
    txid = funding.get("txid")
    return str(txid) if txid else None


def confirm(world: World) -> str:
    world.mine(1)
    txid = _funding_txid(world)
    if txid is None:
        return "nothing to confirm"
    return f"funding confirmations {world.net.chain.confirmations(txid)}"


@dataclass(frozen=True)
class Pay:
    client: int

    def describe(self) -> str:
        return f"lsp pays client {self.client} {PAY_MSAT} msat"

    def __call__(self, world: World) -> str:
        honest = world.honest
        c = honest[self.client % len(honest)]
        txid = _funding_txid(world)
        if txid is None or world.net.chain.confirmations(txid) < 1:
            return "skipped: funding not confirmed"
        chan = _channel_of(world, c)
        if chan is None:
            return "skipped: no channel"
        err = _pay(world.lsp, c, chan)
        if err is None:
            world.ledgers[c.name].owed_msat += PAY_MSAT
        return err or "paid"


def _channel_of(world: World, c: FakeNode) -> str | None:
    """The LSP's alias of its channel with `c` in the live factory (c's leaf)."""
    view = status(c, world.instance) if world.instance else None
    if not view or not view.get("exit_path"):
        return None
    leaf = view["exit_path"][-1]["txid"]
    chans = world.lsp.rpc_call("listpeerchannels", {"id": c.node_id})["channels"]
    found = [ch for ch in chans if ch.get("funding_txid") == leaf and "alias" in ch]
    return str(found[0]["alias"]["local"]) if found else None


def _pay(lsp: FakeNode, c: FakeNode, alias: str) -> str | None:
    inv, err = _call(
        c, "invoice", {"amount_msat": PAY_MSAT, "label": os.urandom(4).hex(), "description": "fuzz"}
    )
    if err:
        return f"invoice failed: {err}"
    decoded = c.rpc_call("decode", {"string": inv["bolt11"]})
    route = [
        {
            "id": c.node_id,
            "channel": alias,
            "amount_msat": PAY_MSAT,
            "delay": int(decoded["min_final_cltv_expiry"]) + 3,
        }
    ]
    _, err = _call(
        lsp,
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": PAY_MSAT,
        },
    )
    if err:
        return f"sendpay failed: {err}"
    _, err = _call(lsp, "waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 10})
    return f"payment failed: {err}" if err else None


@dataclass(frozen=True)
class Sell:
    client: int

    def describe(self) -> str:
        return f"lsp gives client {self.client} {SALE_SAT} sat (factory-sell)"

    def __call__(self, world: World) -> str:
        if world.instance is None:
            return "skipped"
        c = world.honest[self.client % len(world.honest)]
        res, err = _call(
            world.lsp,
            "factory-sell",
            {"instance": world.instance, "client": c.node_id, "sat": SALE_SAT},
        )
        return f"sell failed: {err}" if err else f"sold ({res.get('kind')})"


@dataclass(frozen=True)
class Buy:
    client: int

    def describe(self) -> str:
        return f"client {self.client} buys {SALE_SAT} sat (max fee {MAX_BUY_FEE_SAT} sat)"

    def __call__(self, world: World) -> str:
        if world.instance is None:
            return "skipped"
        c = world.honest[self.client % len(world.honest)]
        world.ledgers[c.name].accepted_loss_msat += MAX_BUY_FEE_SAT * 1000
        res, err = _call(
            c,
            "factory-buy",
            {"instance": world.instance, "sat": SALE_SAT, "max_fee_sat": MAX_BUY_FEE_SAT},
        )
        return f"buy failed: {err}" if err else f"bought ({res.get('kind')})"


def _wait_handover(world: World, old: str) -> bool:
    """Mine up to 6 blocks, one at a time, until the LSP holds every key of `old`."""
    for _ in range(6):
        world.mine(1)
        if _wait(lambda: bool((status(world.lsp, old) or {}).get("handover_txid")), 1.5):
            return True
    return False


def _move_out(world: World, method: str) -> str:
    old = world.instance
    if old is None:
        return "skipped"
    for c in world.honest:
        world.ledgers[c.name].accepted_loss_msat += MOVE_FEE_CAP_MSAT
    res, err = _call(world.lsp, method, {"instance": old})
    if err:
        return f"{method} failed: {err}"
    if method == "factory-migrate":
        world.instance = str(res["instance"])
    done = _wait_handover(world, old)
    return f"{method}: " + ("every key handed over" if done else "not every key handed over")


def migrate(world: World) -> str:
    return _move_out(world, "factory-migrate")


def close(world: World) -> str:
    return _move_out(world, "factory-close")
