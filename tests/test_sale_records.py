"""Sale records: stored and read back exactly, refused by the field at fault, and a record written
before sales existed still loads (with no sales)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from superscalar_plugin.engine import sale_store, store
from superscalar_plugin.engine.errors import InvalidRecord, StoreError

from adversarial.records import client_record, lsp_record, sold_records


def _round_trip(record: store.Record) -> store.Record:
    return store.from_json(json.loads(json.dumps(store.to_json(record))))


def test_sales_orders_and_fallback_channels_round_trip() -> None:
    client, lsp = sold_records()
    assert _round_trip(client) == client and len(client.sales) == 2
    assert _round_trip(lsp) == lsp and lsp.orders[0].state.value == "delivered"


def test_records_written_before_sales_load_with_none() -> None:
    for record in (client_record(), lsp_record()):
        data = store.to_json(record)
        for key in ("sales", "orders", "jit", "jit_channels"):
            data.pop(key, None)
        loaded = store.from_json(data)
        assert loaded.sales == ()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda e: dataclasses.replace(e, buyer=3), "sales[0].buyer"),  # not a client of the leaf
        (lambda e: dataclasses.replace(e, leaf=0), "sales"),  # not our leaf's stock
        (lambda e: dataclasses.replace(e, sale_tx="00"), "sales[0].sale_tx"),
        (lambda e: dataclasses.replace(e, stock_vout=7), "sales[0]"),  # its txs spend another
    ],
)
def test_a_bad_sale_entry_is_refused_naming_it(change: object, field: str) -> None:
    client, _ = sold_records()
    bad = client.replace(sales=(change(client.sales[0]), *client.sales[1:]))  # type: ignore[operator]
    with pytest.raises(InvalidRecord) as e:
        store.from_json(json.loads(json.dumps(store.to_json(bad))))
    assert e.value.field == field


def test_a_sale_chain_with_a_gap_is_refused() -> None:
    client, _ = sold_records()
    with pytest.raises(InvalidRecord, match="does not spend the change"):
        store.from_json(store.to_json(client.replace(sales=(client.sales[1], client.sales[0]))))


def test_malformed_sale_json_is_refused() -> None:
    client, _ = sold_records()
    data = store.to_json(client)
    data["sales"][0]["burn_sig"] = "zz"
    with pytest.raises(StoreError):
        store.from_json(data)
    data = store.to_json(client)
    data["sales"] = {"not": "a list"}
    with pytest.raises(StoreError):
        store.from_json(data)


def test_a_buyers_payment_and_the_lsps_sent_burns_round_trip() -> None:
    client, lsp = sold_records()
    paid = dataclasses.replace(
        client.sales[0], payment=sale_store.Payment.FAILED, payment_hash="ab" * 32
    )
    client = client.replace(sales=(paid, *client.sales[1:]))
    lsp = lsp.replace(burn_sent=(client.sales[0].stock_txid,))
    assert _round_trip(client) == client and _round_trip(lsp) == lsp


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("payment", "maybe", "'payment': 'maybe' is not one of"),
        ("payment", 1, "'payment' must be str"),
        ("payment_hash", "abcd", "'payment_hash' must be 32 bytes"),
    ],
)
def test_a_bad_payment_of_a_sale_is_refused_naming_it(
    key: str, value: object, message: str
) -> None:
    client, _ = sold_records()
    data = store.to_json(client)
    data["sales"][0][key] = value
    with pytest.raises(StoreError, match=message):
        store.from_json(data)


def test_a_bad_sent_burn_of_the_lsp_is_refused_naming_it() -> None:
    _, lsp = sold_records()
    data = store.to_json(lsp)
    data["burn_sent"] = ["00"]
    with pytest.raises(StoreError, match="'burn_sent'"):
        store.from_json(data)
