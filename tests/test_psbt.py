"""The plugin's PSBT helpers agree with python-bitcointx's BIP174 implementation."""

from __future__ import annotations

from superscalar_plugin.chain.btx import CTransaction
from superscalar_plugin.engine import dw
from superscalar_plugin.plugin.lightningd import psbt

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


def test_an_anchor_input_is_added_and_finalized_with_an_empty_witness() -> None:
    from bitcointx.core.psbt import PartiallySignedTransaction

    from superscalar_plugin.engine.taproot import P2A_SCRIPT

    f = participants(4).factory
    leaf = f.transactions(OUTPOINT, dw.initial_states(f.topology))[f.topology.leaf_of_client[0]]
    base = psbt.leaf_psbt(leaf)  # stands in for what fundpsbt returns: inputs + a change output
    change = 0
    bumped = psbt.add_anchor_input(base, ("ab" * 32, 3), 240, change)
    tx = psbt.unsigned_tx(bumped)
    assert (tx.inputs[-1].txid, tx.inputs[-1].vout) == ("ab" * 32, 3)
    assert tx.outputs[change].amount == leaf.tx.outputs[change].amount + 240
    final = psbt.finalize_anchor(bumped, len(tx.inputs) - 1)
    parsed = PartiallySignedTransaction.from_base64(final)
    anchor_in = parsed.inputs[-1]
    assert bytes(anchor_in.witness_utxo.scriptPubKey) == P2A_SCRIPT
    assert anchor_in.witness_utxo.nValue == 240
    assert anchor_in.final_script_witness is not None
    assert len(anchor_in.final_script_witness.stack) == 0
    assert psbt.parse(final)[1][0] == psbt.parse(base)[1][0]  # the other inputs are untouched
