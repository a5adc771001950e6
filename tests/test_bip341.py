"""BIP341 wallet vectors: output construction, control blocks, key-path sighashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from superscalar_plugin.engine.taproot import (
    ScriptTree,
    TapLeaf,
    TaprootOutput,
    taproot_sighash,
    taproot_tweak,
)
from superscalar_plugin.engine.tx import Tx

VECTORS = json.loads(
    (Path(__file__).parent / "vectors/bip341/wallet-test-vectors.json").read_text()
)


def _tree(node: Any) -> ScriptTree | None:
    if node is None:
        return None
    if isinstance(node, dict):
        return TapLeaf(bytes.fromhex(node["script"]), node["leafVersion"])
    left, right = (_tree(n) for n in node)
    assert left is not None and right is not None
    return (left, right)


def _leaves_in_order(node: Any) -> list[TapLeaf]:
    if node is None:
        return []
    if isinstance(node, dict):
        return [TapLeaf(bytes.fromhex(node["script"]), node["leafVersion"])]
    return _leaves_in_order(node[0]) + _leaves_in_order(node[1])


@pytest.mark.parametrize(
    "case", VECTORS["scriptPubKey"], ids=lambda c: str(c["expected"]["bip350Address"])
)
def test_script_pubkey_vectors(case: dict[str, Any]) -> None:
    given, inter, expected = case["given"], case["intermediary"], case["expected"]
    out = TaprootOutput(bytes.fromhex(given["internalPubkey"]), _tree(given["scriptTree"]))
    assert (out.merkle_root.hex() if out.merkle_root else None) == inter["merkleRoot"]
    assert out.tweak.hex() == inter["tweak"]
    assert out.output_key.hex() == inter["tweakedPubkey"]
    assert out.script_pubkey.hex() == expected["scriptPubKey"]
    leaves = _leaves_in_order(given["scriptTree"])
    assert [leaf.leaf_hash.hex() for leaf in leaves] == inter.get("leafHashes", [])
    blocks = [out.control_block(leaf).hex() for leaf in leaves]
    assert blocks == expected.get("scriptPathControlBlocks", [])


def _spending_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(c, i) for c in VECTORS["keyPathSpending"] for i in c["inputSpending"]]


@pytest.mark.parametrize("case,inp", _spending_cases())
def test_keypath_sighash_vectors(case: dict[str, Any], inp: dict[str, Any]) -> None:
    tx = Tx.deserialize(bytes.fromhex(case["given"]["rawUnsignedTx"]))
    spent = [
        (u["amountSats"], bytes.fromhex(u["scriptPubKey"])) for u in case["given"]["utxosSpent"]
    ]
    given, inter = inp["given"], inp["intermediary"]
    root = bytes.fromhex(given["merkleRoot"]) if given["merkleRoot"] else None
    assert taproot_tweak(bytes.fromhex(inter["internalPubkey"]), root).hex() == inter["tweak"]
    digest = taproot_sighash(tx, given["txinIndex"], spent, given["hashType"])
    assert digest.hex() == inter["sigHash"]
