"""What a peer's message can make us write is bounded (issue 16): a client's endless REJECT texts
to its LSP reach the record at most once a minute, and a hostile LSP retrying a sale we already
recorded rewrites nothing."""

from __future__ import annotations

import json
from typing import Any

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.plugin.config import Config
from superscalar_plugin.plugin.node import Node
from superscalar_plugin.plugin.ratelimit import WriteLimiter
from superscalar_plugin.plugin.records import Records
from superscalar_plugin.plugin.winddown import WindDown

from adversarial.records import lsp_record


class CountingRpc:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        p = payload or {}
        if method == "datastore":
            self.writes.append(p["string"])
            return {}
        if method == "listdatastore":
            return {"datastore": []}
        raise AssertionError(f"unexpected {method}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_endless_reject_texts_rewrite_the_lsp_record_at_most_once_a_minute() -> None:
    rpc = CountingRpc()
    records = Records(rpc)  # type: ignore[arg-type]
    record = lsp_record()
    records.persist(record)
    wind = WindDown(Node(rpc, Config()), records, None, None, None)  # type: ignore[arg-type]
    clock = Clock()
    wind._refusal_writes = WriteLimiter(clock=clock)
    peer = record.clients[0].node_id
    instance = bytes.fromhex(record.instance_id)
    before = len(rpc.writes)
    for i in range(500):  # alternating texts: "only when it changes" alone would write each
        text = protocol.Text(protocol.PayloadType.REJECT, instance, f"no {i % 2} " + "x" * 10_000)
        latest = records.get(record.instance_id)
        assert isinstance(latest, store.LspRecord)
        wind.on_payload(latest, peer, text)
    assert len(rpc.writes) - before == 1
    kept = json.loads(rpc.writes[-1])["clients"][0]["refusal"]
    assert kept.startswith("no 0 ") and len(kept) == 200  # truncated
    clock.now += 61
    latest = records.get(record.instance_id)
    assert isinstance(latest, store.LspRecord)
    wind.on_payload(latest, peer, protocol.Text(protocol.PayloadType.REJECT, instance, "later"))
    assert len(rpc.writes) - before == 2
    latest = records.get(record.instance_id)
    assert isinstance(latest, store.LspRecord)
    clock.now += 61
    wind.on_payload(latest, peer, protocol.Text(protocol.PayloadType.REJECT, instance, "later"))
    assert len(rpc.writes) - before == 2  # the same text again: nothing to write
