"""`Network`: fake nodes, the connections between them, the shared chain, and the findings.

net = Network(tmp_path, plugin=[sys.executable, "-m", "superscalar_plugin.plugin"])
lsp, c1 = net.add_node("lsp"), net.add_node("c1")
net.connect(lsp, c1)             # peer_connected hooks + connect notifications, both sides
lsp.rpc_call("factory-create", {"clients": [c1.node_id], "channel_sat": 100_000})
net.mine(1)                      # block_added on every node
net.intercept = lambda src, dst, msg: None if ... else msg   # drop / tamper custom messages
net.stop(); assert not net.take_errors()
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bitcoin import CTransaction, regtest, txid_hex
from .chain import Block, Chain, TxRecord
from .errors import HarnessError, HarnessTimeout
from .node import FakeNode
from .plugin_process import kill_leftovers
from .schemas import DEFAULT_SCHEMA_DIR, SchemaSet
from .state import Peer

DUMMY_PLUGIN = [sys.executable, str(Path(__file__).resolve().parent / "dummy_plugin.py")]
# The plugin as an operator installs it: the `superscalar` executable beside this interpreter,
# started by lightningd with no arguments of ours.
SUPERSCALAR_PLUGIN = [str(Path(sys.executable).parent / "superscalar")]
Intercept = Callable[[FakeNode, FakeNode, str], str | None]


class PeerRefused(HarnessError):
    """A peer_connected hook answered "disconnect" (not recorded as a finding)."""


@dataclass
class RelayedMessage:
    src: str
    dst: str
    sent: str
    delivered: str | None  # None: dropped by the intercept
    time: float = field(default_factory=time.time)


class Network:
    def __init__(
        self,
        base_dir: Path,
        *,
        plugin: Sequence[str] | None = None,
        timeout: float = 30.0,
        start_height: int = 110,
        schema_dir: Path = DEFAULT_SCHEMA_DIR,
        allowed_unknown_calls: Sequence[str] = (),
        developer: bool = True,
    ) -> None:
        self.base_dir = Path(base_dir)
        # lightningd's --developer (pyln-testing always sets it): plugins then get `--developer`.
        self.developer = developer
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.plugin = list(plugin) if plugin is not None else list(DUMMY_PLUGIN)
        self.timeout = timeout
        self.chain = Chain(start_height)
        self.schemas = SchemaSet(schema_dir)
        self.allowed_unknown_calls: set[str] = set(allowed_unknown_calls)
        self.nodes: list[FakeNode] = []
        self.state_lock = threading.RLock()  # peers and channels of every node
        self.peer_cond = threading.Condition(self.state_lock)
        self.intercept: Intercept | None = None
        self.messages: list[RelayedMessage] = []
        self.errors: list[HarnessError] = []
        self._errors_lock = threading.Lock()

    # ------------------------------------------------------------------ nodes
    def add_node(
        self,
        name: str | None = None,
        *,
        plugin: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        utxos: int = 10,
        utxo_sat: int = 10_000_000,
        start: bool = True,
        config: dict[str, int] | None = None,
    ) -> FakeNode:
        """A node with `utxos` confirmed P2WPKH UTXOs of `utxo_sat` each (default 10 x 0.1 BTC),
        running `plugin` (default: the network's) with lightningd `options` for it, and
        lightningd's own `config` (fee-base, cltv-delta, funding-confirms...: see
        `lightningd_rpcs.DEFAULT_CONFIG` and `REGTEST_DEFAULTS`)."""
        index = len(self.nodes)
        node = FakeNode(
            self,
            name or f"node{index}",
            index,
            plugin=plugin if plugin is not None else self.plugin,
            options=options,
            env=env,
            utxos=utxos,
            utxo_sat=utxo_sat,
            config=config,
        )
        if any(n.name == node.name for n in self.nodes):
            raise ValueError(f"duplicate node name {node.name}")
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def add_nodes(self, names: Sequence[str] | int, **kwargs: Any) -> list[FakeNode]:
        """Several nodes (same keyword arguments as `add_node`), their plugins started in
        parallel."""
        if isinstance(names, int):
            names = [f"node{len(self.nodes) + i}" for i in range(names)]
        start = kwargs.pop("start", True)
        nodes = [self.add_node(n, start=False, **kwargs) for n in names]
        if start:
            with ThreadPoolExecutor(max_workers=min(16, len(nodes) or 1)) as ex:
                list(ex.map(lambda n: n.start(), nodes))
        return nodes

    def node_by_id(self, node_id: str) -> FakeNode | None:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        return None

    # ------------------------------------------------------------------ connections
    def connect(self, a: FakeNode, b: FakeNode, timeout: float | None = None) -> None:
        """`a` connects to `b`: both peer_connected hooks run (in parallel), then both get the
        `connect` notification, then the connection carries messages."""
        timeout = self.timeout if timeout is None else timeout
        if a is b:
            raise ValueError("a node cannot connect to itself")
        if not (a.up and b.up):
            raise HarnessError(f"cannot connect {a.name} and {b.name}: a node is stopped")
        with self.state_lock:
            pa, pb = a.peers.get(b.node_id), b.peers.get(a.node_id)
            if pa is not None and pa.state != "disconnected":
                return
            a.peers[b.node_id] = Peer(
                b.node_id, "out", b.our_features["init"], f"127.0.0.1:{b.port}"
            )
            b.peers[a.node_id] = Peer(
                a.node_id, "in", a.our_features["init"], f"127.0.0.1:{40_000 + a.index}"
            )
            del pb
        hooks = [
            (
                x,
                x.call_hook_async(
                    "peer_connected",
                    {
                        "peer": {
                            "id": y.node_id,
                            "direction": x.peers[y.node_id].direction,
                            "addr": x.peers[y.node_id].addr,
                            "features": x.peers[y.node_id].features,
                        }
                    },
                ),
            )
            for x, y in ((a, b), (b, a))
        ]
        refused: list[str] = []
        for x, fut in hooks:
            try:
                res = fut.result(timeout=timeout)
            except FutureTimeout as e:
                self._drop(a, b)
                err = HarnessTimeout(f"{x.name} did not answer peer_connected", node=x.name)
                self.record_error(err)
                raise err from e
            except HarnessError:
                res = {"result": "continue"}  # already recorded (invalid result)
            if res.get("result") == "disconnect":
                refused.append(f"{x.name}: {res.get('error_message', '')}")
        if refused:
            self._drop(a, b)
            raise PeerRefused("peer_connected hook disconnected: " + "; ".join(refused))
        for x, y in ((a, b), (b, a)):
            p = x.peers[y.node_id]
            host, _, port = p.addr.partition(":")
            x.notify(
                "connect",
                {
                    "id": y.node_id,
                    "direction": p.direction,
                    "address": {"type": "ipv4", "address": host, "port": int(port)},
                },
            )
        with self.peer_cond:
            for x, y in ((a, b), (b, a)):
                x.peers[y.node_id].state = "connected"
            self.peer_cond.notify_all()
        a.log(f"connected to {b.name} (out)")
        b.log(f"connected to {a.name} (in)")
        from .closing import on_reconnect

        on_reconnect(a, b)  # channels waiting to close negotiate now

    def _drop(self, a: FakeNode, b: FakeNode) -> list[tuple[FakeNode, FakeNode]]:
        """Mark both sides disconnected, forget uncommitted channels; returns who to notify."""
        out = []
        with self.peer_cond:
            for x, y in ((a, b), (b, a)):
                p = x.peers.get(y.node_id)
                if p is None or p.state == "disconnected":
                    continue
                was_connected = p.state == "connected"
                p.state = "disconnected"
                x.pending_opens.pop(y.node_id, None)
                if was_connected:
                    out.append((x, y))
            self.peer_cond.notify_all()
        return out

    def disconnect(self, a: FakeNode, b: FakeNode, *, quiet: FakeNode | None = None) -> None:
        """Both sides get the `disconnect` notification (except `quiet`, a node shutting down);
        uncommitted channels are forgotten."""
        for x, y in self._drop(a, b):
            if x is not quiet:
                x.notify("disconnect", {"id": y.node_id})
            x.log(f"disconnected from {y.name}")

    def disconnect_all(self, node: FakeNode) -> None:
        """`node` goes down: its peers see it disconnect."""
        for peer_id in list(node.peers):
            other = self.node_by_id(peer_id)
            if other is not None:
                self.disconnect(node, other, quiet=node)

    # ------------------------------------------------------------------ messages
    def relay(self, src: FakeNode, dst: FakeNode, msg_hex: str) -> None:
        """A custom message leaves `src`: it reaches `dst`'s connectd queue (in order)."""
        dst.enqueue_inbound(lambda: dst.deliver_custommsg(src, msg_hex))

    def note_message(self, src: FakeNode, dst: FakeNode, sent: str, delivered: str | None) -> None:
        self.messages.append(RelayedMessage(src.name, dst.name, sent, delivered))

    # ------------------------------------------------------------------ chain
    @property
    def blockheight(self) -> int:
        return self.chain.height

    def broadcast(self, tx: CTransaction, by: FakeNode | None = None) -> TxRecord:
        with regtest():
            rec = self.chain.broadcast(tx, by.name if by else None)
            for n in self.nodes:
                n.wallet.on_broadcast(tx)
        if by is not None:
            by.log(f"broadcast {txid_hex(tx)}")
        return rec

    def mine(self, n: int = 1) -> list[str]:
        """Mine `n` blocks (confirming the mempool in the first); every node's plugin gets
        `block_added` for each. Returns the block hashes."""
        return self._announce(self.chain.mine(n))

    def reorg(
        self,
        depth: int,
        drop: set[str] | frozenset[str] = frozenset(),
        new_blocks: int | None = None,
    ) -> list[str]:
        """Replace the top `depth` blocks (see `Chain.reorg`); every node's plugin gets
        `block_added` for each new block, from the fork height up, as lightningd sends them."""
        return self._announce(self.chain.reorg(depth, drop, new_blocks))

    def _announce(self, blocks: list[Block]) -> list[str]:
        for block in blocks:
            for node in self.nodes:
                node.wallet.on_block(block.height, block.txids)
                if node.up:
                    node.on_block(block.height, block.hash)
        return [b.hash for b in blocks]

    # ------------------------------------------------------------------ findings
    def record_error(self, err: HarnessError) -> None:
        with self._errors_lock:
            self.errors.append(err)

    def take_errors(self, kind: type[HarnessError] | None = None) -> list[HarnessError]:
        """Remove and return the recorded findings (only those of `kind` if given)."""
        with self._errors_lock:
            taken = [e for e in self.errors if kind is None or isinstance(e, kind)]
            self.errors = [e for e in self.errors if e not in taken]
        return taken

    def check(self) -> None:
        """Raise AssertionError listing every finding not taken yet."""
        errors = self.take_errors()
        if errors:
            raise AssertionError(
                f"{len(errors)} harness finding(s):\n"
                + "\n".join(f"- {type(e).__name__}: {e}" for e in errors)
            )

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        """Stop every node (plugins shut down gracefully, then killed)."""

        def stop_one(node: FakeNode) -> None:
            try:
                node.stop()
            except Exception as e:  # keep stopping the others
                self.record_error(HarnessError(f"stopping {node.name}: {e!r}"))

        if self.nodes:
            with ThreadPoolExecutor(max_workers=min(16, len(self.nodes))) as ex:
                list(ex.map(stop_one, self.nodes))
        for node in self.nodes:
            node.close_log()
        # Only this network's processes: another network of the same test may still be running.
        kill_leftovers([n.process.pid for n in self.nodes if n.process is not None])
