"""factory-close adopts an ordinary channel it opened earlier as a client's target, never a
channel inside a factory: a sale's channel (funded by a tree transaction, so never given a short
channel id) once left its buyer waiting for a MOVE until its last move height (found by
bench/real_life.py: a sale, a migration, then the successor's close)."""

from __future__ import annotations

import dataclasses
from typing import Any

from superscalar_plugin.engine import store
from superscalar_plugin.plugin.lifecycle.winddown import WindDown
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.node import Node

from adversarial.records import lsp_record, sold_records

SALE_CHANNEL = "5a" * 32
OPENED = "77" * 32


class Channels:
    def __init__(self, channels: list[dict[str, Any]]) -> None:
        self.channels = channels

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        assert method == "listpeerchannels", method
        return {"channels": self.channels}


class OneRecord:
    def __init__(self, record: store.LspRecord) -> None:
        self.record = record

    def all(self) -> list[store.Record]:
        return [self.record]


def test_a_sale_channel_is_never_taken_for_a_close_channel_opened_before() -> None:
    client, _ = sold_records()
    sales = tuple(dataclasses.replace(e, channel_id=SALE_CHANNEL) for e in client.sales[:1])
    record = lsp_record().replace(sales=sales, retired=("66" * 32,))
    buyer = record.clients[sales[0].buyer].node_id
    other = next(c.node_id for c in record.clients if c.node_id != buyer)
    normal, lockin = "CHANNELD_NORMAL", "CHANNELD_AWAITING_LOCKIN"
    rpc = Channels(
        [
            {"channel_id": SALE_CHANNEL, "peer_id": buyer, "opener": "local", "state": normal},
            {"channel_id": "66" * 32, "peer_id": buyer, "opener": "local", "state": normal},
            {"channel_id": OPENED, "peer_id": other, "opener": "local", "state": lockin},
        ]
    )
    wind = WindDown(Node(rpc, Config()), OneRecord(record), None, None, None)  # type: ignore[arg-type]
    index = {c.node_id: i for i, c in enumerate(record.clients)}
    assert wind._opened_before(record, [0, 1]) == {index[other]: OPENED}
