"""The world one seed plays in: a harness network (an LSP and 2-3 clients running the real plugin,
one client possibly hostile), the messages between them, the chain, and the powers a hostile
LSP or co-client has over them. The honest flows are in `flows`, the catalogue in `actions`."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

from superscalar_plugin.engine import protocol

from .invariant import Ledger
from adversarial.plugin_hostile import pig, unpig
from harness.errors import RpcCallError
from harness.network import Network
from harness.node import FakeNode

HISTORY = 200  # messages kept per sender for replays
DOUBLE_SPEND_SCRIPT = b"\x00\x20" + hashlib.sha256(b"the lsp's own wallet").digest()


def label(payload: protocol.Payload | None) -> str:
    """A payload's kind as the catalogue names it."""
    if payload is None:
        return "?"
    name = type(payload).__name__
    if isinstance(payload, protocol.SaleStep):
        return f"{name}.{payload.kind.name}"
    if isinstance(payload, protocol.Text):
        return f"{name}.{payload.type.name}"
    return name


@dataclass
class World:
    net: Network
    lsp: FakeNode
    clients: list[FakeNode]  # every client of the factory, the hostile one ("co") last
    co: FakeNode | None
    instance: str | None = None
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    filters: list[tuple[str, str, bool]] = field(default_factory=list)  # (who, kind, hold)
    held: list[tuple[FakeNode, FakeNode, str]] = field(default_factory=list)
    history: dict[str, list[tuple[FakeNode, FakeNode, str]]] = field(default_factory=dict)
    stalled: list[str] = field(default_factory=list)
    double_spend_next: bool = False
    fee_ppm: int | None = None  # the LSP's fee on every channel with a client, set before MOVEs
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.driver = threading.current_thread()
        self.net.intercept = self._intercept
        for c in self.honest:
            self.ledgers.setdefault(c.name, Ledger())

    @property
    def honest(self) -> list[FakeNode]:
        return [c for c in self.clients if c is not self.co]

    def node(self, who: str) -> FakeNode:
        if who == "co" and self.co is not None:
            return self.co
        return self.lsp

    def note(self, text: str) -> None:
        self.notes.append(text)

    # --- messages ---------------------------------------------------------------------------

    def _role(self, node: FakeNode) -> str | None:
        return "lsp" if node is self.lsp else "co" if node is self.co else None

    def _intercept(self, src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        if threading.current_thread() is self.driver:
            return msg_hex  # the driver's own replays and late deliveries
        who = self._role(src)
        if who is None:
            return msg_hex
        kind = label(unpig(msg_hex))
        if who == "lsp" and kind == "Move" and self.fee_ppm is not None:
            self.set_lsp_fee(self.fee_ppm)  # on the target too, which did not exist before
        with self.lock:
            self.history.setdefault(who, []).append((src, dst, msg_hex))
            del self.history[who][:-HISTORY]
            for f_who, f_kind, hold in self.filters:
                if f_who == who and f_kind == kind:
                    if hold:
                        self.held.append((src, dst, msg_hex))
                    return None
        return msg_hex

    def arm_filter(self, who: str, kind: str, hold: bool) -> None:
        with self.lock:
            self.filters.append((who, kind, hold))

    def replay(self, who: str, pick: float) -> None:
        with self.lock:
            past = list(self.history.get(who, []))
        if not past:
            return
        src, dst, msg = past[min(len(past) - 1, int(pick * len(past)))]
        self.note(f"replayed {label(unpig(msg))} {src.name}->{dst.name}")
        self._deliver(src, dst, msg)

    def _deliver(self, src: FakeNode, dst: FakeNode, msg: str) -> None:
        if src.plugin_running and dst.connected_peer(src.node_id) is not None:
            dst.deliver_custommsg(src, msg)

    def end_step(self) -> None:
        """After an honest step: armed filters end, stalled peers return, held messages go."""
        with self.lock:
            self.filters.clear()
            held, self.held = self.held[::-1], []
        self._reconnect()
        for src, dst, msg in held:
            self._deliver(src, dst, msg)

    # --- peers --------------------------------------------------------------------------------

    def stall(self, who: str) -> None:
        me = self.node(who)
        for other in [self.lsp, *self.clients]:
            if other is not me and other.connected_peer(me.node_id) is not None:
                self.net.disconnect(me, other)
        self.stalled.append(who)

    def _reconnect(self) -> None:
        for who in self.stalled:
            me = self.node(who)
            others = self.honest if me is self.lsp else [self.lsp]
            for other in others:
                if other.connected_peer(me.node_id) is None:
                    self.net.connect(me, other)
        self.stalled.clear()

    def restart(self, who: str) -> None:
        self.node(who).restart(reconnect=True)

    def set_lsp_fee(self, ppm: int) -> None:
        self.fee_ppm = ppm
        for c in self.honest:
            try:
                self.lsp.rpc_call("setchannel", {"id": c.node_id, "feeppm": ppm})
            except RpcCallError as e:
                self.note(f"setchannel failed: {e.message}")

    def bad_keys(self, who: str) -> None:
        if self.instance is None:
            return
        inst = bytes.fromhex(self.instance)
        me = self.node(who)
        sends = [
            (c, protocol.Move(inst, protocol.MoveTarget.FACTORY, os.urandom(32)))
            for c in self.honest
        ]
        sends.append((self.lsp, protocol.Key(inst, os.urandom(32))))
        for dst, payload in sends:
            if dst is not me:
                self._deliver(me, dst, pig(payload))

    def publish_leaf(self, client: int) -> None:
        if self.instance is None:
            return
        target = self.clients[client % len(self.clients)]
        try:
            self.lsp.rpc_call("factory-exit", {"instance": self.instance, "client": target.node_id})
        except RpcCallError as e:
            self.note(f"factory-exit refused: {e.message}")

    # --- chain --------------------------------------------------------------------------------

    def mine(self, blocks: int = 1) -> None:
        if self.double_spend_next:
            self._double_spend_lsp_mempool()
        self.net.mine(blocks)
        time.sleep(0.15)

    def _double_spend_lsp_mempool(self) -> None:
        chain = self.net.chain
        with chain.cond:
            mine = [t for t in chain.mempool if chain.txs[t].broadcast_by == self.lsp.name]
        for txid in mine:
            try:
                chain.double_spend(txid, DOUBLE_SPEND_SCRIPT)
            except ValueError:
                continue  # already gone with its parent
            self.note(f"double-spent {txid}")
            self.double_spend_next = False

    def reorg(self, depth: int) -> None:
        if self.net.chain.height > depth:
            self.net.reorg(depth)
            time.sleep(0.15)
