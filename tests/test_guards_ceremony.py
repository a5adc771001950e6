"""A client that just accepted a proposal: the LSP may complete its channel at any moment, and
an HTLC on it must be mapped (and failed: the channel is unbound until the tree is signed) by the
hook itself, not wait for the worker's next refresh. `Guards.ceremony_started` arms that without
listing every channel (a loaded CI run once let such an HTLC through before the refresh)."""

from __future__ import annotations

from typing import Any

from superscalar_plugin.engine import store
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.guards import Guards
from superscalar_plugin.plugin.lightningd.node import Node

from adversarial.records import client_record

ALIAS = "1x2x3"


class Lightningd:
    """listpeerchannels answers what `channels` holds now; every call is counted."""

    def __init__(self) -> None:
        self.channels: list[dict[str, Any]] = []
        self.listings = 0

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        assert method == "listpeerchannels", method
        self.listings += 1
        return {"channels": self.channels}


class Records:
    def __init__(self) -> None:
        self.records: list[store.Record] = []

    def all(self) -> list[store.Record]:
        return list(self.records)


def _htlc() -> dict[str, Any]:
    return {"short_channel_id": ALIAS, "cltv_expiry": 1_000, "amount_msat": 1_000}


def _setup() -> tuple[Lightningd, Records, Guards, store.ClientRecord]:
    rpc, records = Lightningd(), Records()
    guards = Guards(Node(rpc, Config()), records)  # type: ignore[arg-type]
    guards.refresh()  # start-up: no factory yet
    accepted = client_record().replace(state=store.ClientState.ACCEPTED, path=(), header=None)
    return rpc, records, guards, accepted


def _lsp_completes_our_channel(rpc: Lightningd, record: store.ClientRecord) -> None:
    rpc.channels.append(
        {
            "channel_id": "77" * 32,
            "peer_id": record.lsp_node_id,
            "funding_txid": "88" * 32,
            "alias": {"local": ALIAS, "remote": "9x9x9"},
            "state": "CHANNELD_NORMAL",
        }
    )


def test_an_htlc_on_a_channel_completed_during_our_ceremony_is_failed_by_the_hook() -> None:
    rpc, records, guards, accepted = _setup()
    records.records.append(accepted)  # persisted before our ACCEPT leaves
    guards.ceremony_started()
    listed = rpc.listings
    _lsp_completes_our_channel(rpc, accepted)
    verdict = guards.htlc_verdict(_htlc(), {})
    assert verdict["result"] == "fail", verdict
    assert rpc.listings == listed + 1  # the hook mapped it on the spot


def test_without_a_ceremony_an_unknown_channel_costs_the_hook_no_listing() -> None:
    """An ordinary channel the guards do not know (a forward through an LSP) lists nothing: the
    hook stays dictionary lookups."""
    rpc, _records, guards, accepted = _setup()
    _lsp_completes_our_channel(rpc, accepted)  # not ours to guard: no ceremony, no record
    listed = rpc.listings
    assert guards.htlc_verdict(_htlc(), {})["result"] == "continue"
    assert rpc.listings == listed
