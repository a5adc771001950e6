"""Segwit addresses against BIP173/BIP350 examples and the BIP341 wallet vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from superscalar_plugin.engine.errors import InvalidParameter
from superscalar_plugin.plugin.lightningd import address

VECTORS = json.loads(
    (Path(__file__).parent / "vectors/bip341/wallet-test-vectors.json").read_text()
)


@pytest.mark.parametrize(
    "case", VECTORS["scriptPubKey"], ids=lambda c: c["expected"]["bip350Address"][:16]
)
def test_p2tr_addresses_of_the_bip341_vectors(case: dict[str, object]) -> None:
    expected = case["expected"]
    assert isinstance(expected, dict)
    script = bytes.fromhex(expected["scriptPubKey"])
    assert address.encode(script, "bitcoin") == expected["bip350Address"]
    assert address.decode(expected["bip350Address"]) == script


def test_bip173_p2wpkh_and_refusals() -> None:
    p2wpkh = bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
    assert address.decode("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4") == p2wpkh
    assert address.encode(p2wpkh, "bitcoin") == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    for bad in ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "nope", "bc1", ""):
        with pytest.raises(InvalidParameter):
            address.decode(bad)
