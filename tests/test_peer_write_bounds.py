"""What a peer's message can make us write is bounded (issue 16): a client's endless REJECT texts
to its LSP reach the record at most WRITE_BURST times a minute, and a hostile LSP retrying a sale we already
recorded rewrites nothing."""

from __future__ import annotations

import json
from typing import Any

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.plugin.lifecycle.winddown import WindDown
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.node import Node
from superscalar_plugin.plugin.lightningd.ratelimit import WRITE_BURST, WriteLimiter
from superscalar_plugin.plugin.lightningd.records import Records

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


def test_endless_reject_texts_rewrite_the_lsp_record_a_few_times_a_minute() -> None:
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
    assert len(rpc.writes) - before == WRITE_BURST
    kept = json.loads(rpc.writes[-1])["clients"][0]["refusal"]
    assert kept.startswith(f"no {(WRITE_BURST - 1) % 2} ") and len(kept) == 200  # truncated
    clock.now += 61
    latest = records.get(record.instance_id)
    assert isinstance(latest, store.LspRecord)
    wind.on_payload(latest, peer, protocol.Text(protocol.PayloadType.REJECT, instance, "later"))
    assert len(rpc.writes) - before == WRITE_BURST + 1
    latest = records.get(record.instance_id)
    assert isinstance(latest, store.LspRecord)
    clock.now += 61
    wind.on_payload(latest, peer, protocol.Text(protocol.PayloadType.REJECT, instance, "later"))
    assert len(rpc.writes) - before == WRITE_BURST + 1  # the same text again: nothing to write
