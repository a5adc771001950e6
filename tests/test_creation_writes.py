"""A creation's datastore writes on the LSP: a few per phase, not one per client (each write is
the whole record, so one per client event made a creation O(n^2) in bytes and round trips), and
still every write a message depends on comes before that message (issue 17)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from superscalar_plugin.engine import blip56, protocol, wire

from harness.errors import RpcCallError
from harness.network import SUPERSCALAR_PLUGIN, Network

N_CLIENTS = 6
MAX_WRITES = 6  # proposing, opening, channel ids, signing... whatever N: never one per client


def _payload(msg_hex: str) -> protocol.Payload | None:
    msg = bytes.fromhex(msg_hex)
    if int.from_bytes(msg[:2], "big") != blip56.FACTORY_MESSAGE_TYPE:
        return None
    parsed = blip56.decode_factory_message(msg)
    return protocol.decode(parsed.payload) if isinstance(parsed, blip56.Piggyback) else None


def _is_sign_request(p: protocol.Payload | None) -> bool:
    return isinstance(p, protocol.Ceremony) and p.message[0] == wire.MsgType.SIGN_REQUEST


def test_creation_writes_per_phase_and_before_what_depends_on_them(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN, timeout=60)
    lsp = net.add_node("lsp")
    clients = [
        net.add_node(f"c{i}", options={"superscalar-accept-from": lsp.node_id})
        for i in range(N_CLIENTS)
    ]
    for c in clients:
        net.connect(lsp, c)
    params = {"clients": [c.node_id for c in clients], "channel_sat": 100_000}
    for _ in range(100):  # until every bLIP-56 handshake arrived
        start = len(lsp.calls)
        try:
            created = lsp.rpc_call("factory-create", params, timeout=60)
            break
        except RpcCallError as e:
            assert "has not announced" in str(e)
            time.sleep(0.1)
    assert created["state"] == "funded"
    calls: list[dict[str, Any]] = lsp.calls[start:]
    writes = [
        (i, json.loads(c["params"]["string"]))
        for i, c in enumerate(calls)
        if c["method"] == "datastore" and c["params"]["key"][:2] == ["superscalar", "factories"]
    ]
    assert 3 <= len(writes) <= MAX_WRITES, [w["state"] for _, w in writes]

    def last_write_before(index: int) -> dict[str, Any]:
        return [w for i, w in writes if i < index][-1]

    sent = [
        (i, c["params"]["node_id"], _payload(c["params"]["msg"]))
        for i, c in enumerate(calls)
        if c["method"] == "sendcustommsg"
    ]
    requests = [(i, peer) for i, peer, p in sent if _is_sign_request(p)]
    assert len(requests) == N_CLIENTS
    ids = [c.node_id for c in clients]
    for i, peer in requests:  # a client's channel id is stored before it is asked to sign
        record = last_write_before(i)
        assert record["state"] == "signing"
        assert record["clients"][ids.index(peer)]["channel_id"]
    [broadcast] = [i for i, c in enumerate(calls) if c["method"] == "sendpsbt"]
    record = last_write_before(broadcast)  # the signed tree is stored before the funding leaves
    assert record["state"] == "completing" and record["tree"]
    funded = [i for i, _, p in sent if isinstance(p, protocol.Funded)]
    assert len(funded) == N_CLIENTS
    assert all(last_write_before(i)["state"] == "funded" for i in funded)


def test_send_all_tries_every_peer_and_names_each_failure() -> None:
    import pytest

    from superscalar_plugin.plugin.lightningd.peers import Peers

    class Rpc:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
            assert method == "sendcustommsg" and payload is not None
            if payload["node_id"] in ("p3", "p7"):
                raise RuntimeError("peer gone")
            self.sent.append(payload["node_id"])
            return {}

    rpc = Rpc()
    text = protocol.Text(protocol.PayloadType.ABORT, bytes(32), "x")
    peers = [f"p{i}" for i in range(20)]
    failed = Peers(rpc).send_all([(p, text) for p in peers])
    assert [p for p, _ in failed] == ["p3", "p7"] and "peer gone" in str(failed[0][1])
    assert sorted(rpc.sent) == sorted(set(peers) - {"p3", "p7"})
    with pytest.raises(ValueError):  # one peer's two messages would race each other
        Peers(rpc).send_all([("p1", text), ("p1", text)])


def test_per_client_hands_over_results_in_batches_while_others_run() -> None:
    import threading

    from superscalar_plugin.engine.store import ClientEntry
    from superscalar_plugin.plugin.creation import funding
    from superscalar_plugin.plugin.lightningd.runtime import RpcFailed

    clients = [ClientEntry(f"c{i}", 100_000) for i in range(40)]
    hang = threading.Event()

    def call(c: ClientEntry) -> str:
        i = int(c.node_id[1:])
        if i == 39:
            hang.wait(5)  # still out when the others are done: no batch waits for it
        if i == 7:
            raise RpcFailed("refused")
        time.sleep(0.002 * (i % 5))
        return f"id{i}"

    batches: list[dict[int, Any]] = []
    results = funding.per_client(clients, call, "x", 0.5, batches.append, 16)
    hang.set()
    sizes = [len(b) for b in batches]
    assert sizes[:2] == [16, 16] and sum(sizes) == 39  # the hung one never came
    assert sorted(i for b in batches for i in b) == list(range(39))
    assert all(b[i] == f"id{i}" for b in batches for i in b if i != 7)
    assert isinstance(results[7], RpcFailed) and isinstance(results[39], RpcFailed)
    assert "did not return within" in str(results[39])
    assert results[:7] == [f"id{i}" for i in range(7)]
