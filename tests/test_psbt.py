"""The plugin's PSBT helpers agree with python-bitcointx's BIP174 implementation."""

from __future__ import annotations

from superscalar_plugin.chain.btx import CTransaction
from superscalar_plugin.engine import dw
from superscalar_plugin.plugin import psbt

from helpers import OUTPOINT, participants


def test_leaf_psbt_is_unsigned_with_witness_utxo_and_txid_round_trips() -> None:
    from bitcointx.core.psbt import PartiallySignedTransaction  # after btx set libsecp256k1

    f = participants(4).factory
    leaf = f.transactions(OUTPOINT, dw.initial_states(f.topology))[f.topology.leaf_of_client[0]]
    encoded = psbt.leaf_psbt(leaf)
    parsed = PartiallySignedTransaction.from_base64(encoded)
    assert parsed.unsigned_tx.GetTxid()[::-1].hex() == leaf.txid
    utxo = parsed.inputs[0].witness_utxo
    assert utxo.nValue == leaf.spent_amount and bytes(utxo.scriptPubKey) == leaf.spent_script
    assert not parsed.is_final()
    assert psbt.unsigned_txid(encoded) == leaf.txid
    other = PartiallySignedTransaction(unsigned_tx=CTransaction.deserialize(leaf.tx.serialize()))
    assert psbt.unsigned_txid(other.to_base64()) == leaf.txid
