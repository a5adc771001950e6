"""Scripted adversaries for the harness: a hostile LSP that runs the ceremony itself (engine
Coordinator in the test process, bytes through the fake network), and helpers to forge bLIP-56
piggyback messages from any node (a stranger, a co-client)."""

from __future__ import annotations

import hashlib
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from superscalar_plugin.engine import blip56, dw, musig2, protocol, store
from superscalar_plugin.engine.ceremony import Coordinator, CoordinatorState
from superscalar_plugin.engine.tree import ClientSlot, Factory, FactoryParams, Topology
from superscalar_plugin.plugin.creation import funding

from harness.network import Network
from harness.node import FakeNode


def lsp_with_clients(
    network_factory: Callable[..., Network], plugin: list[str], timeout: float, n: int = 2
) -> tuple[Network, FakeNode, list[FakeNode]]:
    """A network, an LSP and `n` clients that accept its factories, each connected to it."""
    net = network_factory(plugin=plugin, timeout=timeout)
    lsp = net.add_node("lsp")
    clients = [
        net.add_node(f"client{i}", options={"superscalar-accept-from": lsp.node_id})
        for i in range(n)
    ]
    for c in clients:
        net.connect(lsp, c)
    return net, lsp, clients


def htlc_request(scid: str, height: int) -> dict[str, Any]:
    """An htlc_accepted hook payload: 1,000 sat in over `scid`, expiring 300 blocks on."""
    return {
        "onion": {
            "payload": "00",
            "next_onion": "00" * 20,
            "shared_secret": "11" * 32,
            "forward_msat": 1_000_000,
            "outgoing_cltv_value": height + 300,
        },
        "htlc": {
            "short_channel_id": scid,
            "id": 0,
            "amount_msat": 1_000_000,
            "cltv_expiry": height + 300,
            "cltv_expiry_relative": 300,
            "payment_hash": "22" * 32,
        },
    }


def pig(payload: protocol.Payload) -> str:
    """A payload as the hex of a full factory message (what sendcustommsg carries)."""
    body = protocol.encode(payload)
    return blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, body).encode().hex()


def unpig(msg_hex: str) -> protocol.Payload | None:
    msg = bytes.fromhex(msg_hex)
    if int.from_bytes(msg[:2], "big") != blip56.FACTORY_MESSAGE_TYPE:
        return None
    parsed = blip56.decode_factory_message(msg)
    return protocol.decode(parsed.payload) if isinstance(parsed, blip56.Piggyback) else None


def status(node: FakeNode) -> list[dict[str, object]]:
    return list(node.rpc_call("factory-status")["factories"])


def wait(check: object, timeout: float = 20.0, what: str = "condition") -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in time"
        time.sleep(0.05)


@dataclass
class HostileLsp:
    """An LSP played by the test: `node` runs no factory logic of its own (whatever its plugin is,
    every message the clients send it is captured here and not delivered)."""

    net: Network
    node: FakeNode
    clients: list[FakeNode]
    params: FactoryParams = field(default_factory=lambda: FactoryParams(states_per_layer=2))
    channel_sat: int = 100_000
    instance: bytes = field(default_factory=lambda: hashlib.sha256(b"hostile").digest())
    inbox: queue.Queue[tuple[int, protocol.Payload]] = field(default_factory=queue.Queue)
    lsp_key: bytes = field(default_factory=lambda: hashlib.sha256(b"hostile lsp").digest())
    pubkeys: dict[int, bytes] = field(default_factory=dict)
    nonces: dict[int, dict[int, bytes]] = field(default_factory=dict)  # each ACCEPT's

    def __post_init__(self) -> None:
        index = {c.name: i for i, c in enumerate(self.clients)}

        def capture(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
            if dst is self.node and src.name in index:
                payload = unpig(msg_hex)
                if payload is not None:
                    self.inbox.put((index[src.name], payload))
                return None
            return msg_hex

        self.net.intercept = capture

    @property
    def lsp_pub(self) -> bytes:
        return musig2.pubkey_from_secret(self.lsp_key)

    def send(self, client: int, payload: protocol.Payload) -> None:
        self.clients[client].deliver_custommsg(self.node, pig(payload))

    def expect(self, kind: type, timeout: float = 15.0) -> tuple[int, protocol.Payload]:
        index, payload = self.inbox.get(timeout=timeout)
        assert isinstance(payload, kind), f"expected {kind.__name__}, got {payload}"
        return index, payload

    def propose_message(self, i: int) -> protocol.Propose:
        n = len(self.clients)
        topo = Topology.build(n, self.params)
        timeout = self.net.blockheight + 4320
        return protocol.Propose(
            self.instance, i, n, self.params, timeout, self.lsp_pub, self.channel_sat, topo.ewt
        )

    def propose_all(self) -> None:
        for i in range(len(self.clients)):
            self.send(i, self.propose_message(i))
        for _ in self.clients:
            i, accept = self.expect(protocol.Accept)
            assert isinstance(accept, protocol.Accept)
            self.pubkeys[i] = accept.client_pubkey
            self.nonces[i] = dict(accept.nonces)

    def coordinator(self, factory: Factory, outpoint: tuple[str, int]) -> Coordinator:
        """The ceremony as the honest LSP runs it: the requests carry the aggregates of the
        nonces the clients gave with their ACCEPTs."""
        return Coordinator(
            factory,
            self.lsp_key,
            outpoint,
            dw.initial_states(factory.topology),
            client_nonces=self.nonces,
        )

    def factory(self, scripts: list[bytes] | None = None) -> Factory:
        """The factory on the channels' scripts (stand-in P2WSH scripts when None)."""
        n = len(self.clients)
        if scripts is None:
            scripts = [b"\x00\x20" + hashlib.sha256(b"ch%d" % i).digest() for i in range(n)]
        slots = [ClientSlot(self.pubkeys[i], scripts[i], self.channel_sat) for i in range(n)]
        timeout = self.propose_message(0).timeout_height
        return Factory.create(self.params, self.lsp_pub, slots, timeout)

    def sign(self, factory: Factory, outpoint: tuple[str, int]) -> Coordinator:
        """Complete every channel on its unsigned leaf (as the honest LSP does: a client signs
        nothing before its node holds its channel), then run the ceremony with every client
        until each stored its path."""
        coord = self.coordinator(factory, outpoint)
        complete_channels(self, coord)
        pending = coord.start()
        while True:
            for c, data in pending.items():
                self.send(c, protocol.Ceremony(self.instance, data))
            if coord.state is CoordinatorState.DONE:
                break
            i, msg = self.expect(protocol.Ceremony)
            assert isinstance(msg, protocol.Ceremony)
            pending = coord.receive(i, msg.message)
        for _ in self.clients:
            self.expect(protocol.Stored)
        return coord


class _Rpc:
    """The plugin's `Rpc` protocol over a FakeNode (to reuse the LSP's own funding calls)."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def call(self, method: str, payload: dict[str, object] | None = None) -> object:
        return self.node.rpc_call(method, payload)


def open_channels(lsp: HostileLsp) -> list[bytes]:
    """fundchannel_start with every client, as the honest LSP does: the channels' scripts."""
    rpc = _Rpc(lsp.node)
    return [
        bytes.fromhex(funding.start_channel(rpc, store.ClientEntry(c.node_id, lsp.channel_sat)))
        for c in lsp.clients
    ]


def complete_channels(lsp: HostileLsp, coord: Coordinator) -> list[str]:
    """fundchannel_complete with every client on its unsigned leaf: the channel ids."""
    rpc = _Rpc(lsp.node)
    topo = coord.factory.topology
    return [
        funding.complete_channel(
            rpc, store.ClientEntry(c.node_id, lsp.channel_sat), coord.txs[topo.leaf_of_client[i]]
        )
        for i, c in enumerate(lsp.clients)
    ]
