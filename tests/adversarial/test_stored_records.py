"""Item 11: a stored record that is valid JSON but wrong in content is refused on load with an
error naming the field (`InvalidRecord`), so the plugin can quarantine it and serve the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from superscalar_plugin.engine import store
from superscalar_plugin.engine.errors import InvalidRecord

from .records import client_record, lsp_record

Mutation = Callable[[dict[str, Any]], None]


def _path0(key: str, value: Any) -> Mutation:
    return lambda d: d["path"][0].update({key: value})


CLIENT_MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "no clients": (lambda d: d.update(n_clients=0), "n_clients"),
    "index out of range": (lambda d: d.update(client_index=4), "client_index"),
    "negative index": (lambda d: d.update(client_index=-1), "client_index"),
    "raw not a tx": (_path0("raw", "00"), r"path\[0\]\.raw"),
    "node out of range": (_path0("node", 99), r"path\[0\]\.node"),
    "state out of range": (_path0("state", 9), r"path\[0\]\.state"),
    "path not ours": (lambda d: d["path"].pop(), "path"),
    "header not a header": (lambda d: d.update(header="00"), "header"),
    "header of another shape": (lambda d: d.update(n_clients=8), "n_clients"),
    "ewt not the shape's": (lambda d: d.update(early_warning_time=1), "early_warning_time"),
    "tiny channel": (lambda d: d.update(channel_sat=1), "channel_sat"),
    "timeout not a height": (lambda d: d.update(timeout_height=0), "timeout_height"),
    "ready without a path": (lambda d: d.update(path=[]), "path"),
    "exit of a stranger": (
        lambda d: d.update(
            exit={
                "reason": "x",
                "started_height": 1,
                "clients": [7],
                "broadcast": [],
                "bumped": [],
                "closed": [],
                "done": False,
            }
        ),
        r"exit\.clients",
    ),
}

LSP_MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "no clients": (lambda d: d.update(clients=[]), "clients"),
    "tiny channel": (lambda d: d["clients"][0].update(channel_sat=1), r"clients\[0\]\.channel_sat"),
    "tree raw not a tx": (lambda d: d["tree"][0].update(raw="0011"), r"tree\[0\]\.raw"),
    "tree node out of range": (lambda d: d["tree"][0].update(node=50), r"tree\[0\]\.node"),
    "negative vout": (lambda d: d.update(funding_vout=-1), "funding_vout"),
    "negative height": (lambda d: d.update(created_height=-5), "created_height"),
}


def test_valid_records_still_load() -> None:
    for record in (client_record(), lsp_record()):
        assert store.from_json(store.to_json(record)) == record


@pytest.mark.parametrize("what", sorted(CLIENT_MUTATIONS))
def test_a_wrong_client_record_names_the_field(what: str) -> None:
    mutate, field = CLIENT_MUTATIONS[what]
    data = store.to_json(client_record())
    mutate(data)
    with pytest.raises(InvalidRecord, match=field):
        store.from_json(data)


@pytest.mark.parametrize("what", sorted(LSP_MUTATIONS))
def test_a_wrong_lsp_record_names_the_field(what: str) -> None:
    mutate, field = LSP_MUTATIONS[what]
    data = store.to_json(lsp_record())
    mutate(data)
    with pytest.raises(InvalidRecord, match=field):
        store.from_json(data)


def test_the_signed_header_is_what_the_plugin_acts_on() -> None:
    record = client_record()
    header = record.signed_header()
    assert header is not None
    keys = header.factory_keys()
    assert keys.n_clients == record.n_clients and keys.topology.ewt == record.early_warning_time


def test_the_shape_of_a_record_is_the_signed_one() -> None:
    record = client_record()
    header = record.signed_header()
    assert header is not None
    assert store.topology_of(record) == header.factory_keys().topology
    assert store.topology_of(lsp_record()).n_clients == 2
