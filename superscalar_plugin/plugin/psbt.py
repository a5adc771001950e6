"""PSBTs for lightningd: the funding tx's txid, and the unsigned leaf PSBT of a channel.

`fundchannel_complete` takes an UNSIGNED PSBT of the leaf tx with `witness_utxo` on its input
(lightningd refuses "non-segwit and unsigned" inputs otherwise; it cannot look up an unbroadcast
parent itself). A finalized PSBT would make lightningd re-broadcast it on every restart.
"""

from __future__ import annotations

from bitcointx.core import CTransaction, CTxOut
from bitcointx.core.psbt import PartiallySignedTransaction
from bitcointx.core.script import CScript

from ..chain import btx  # noqa: F401  (points bitcointx at coincurve's libsecp256k1 first)
from ..engine.tree import UnsignedNodeTx


def unsigned_txid(psbt_b64: str) -> str:
    psbt = PartiallySignedTransaction.from_base64(psbt_b64)
    return str(psbt.unsigned_tx.GetTxid()[::-1].hex())


def leaf_psbt(leaf: UnsignedNodeTx) -> str:
    tx = CTransaction.deserialize(leaf.tx.serialize(include_witness=False))
    psbt = PartiallySignedTransaction(unsigned_tx=tx)
    psbt.set_utxo(CTxOut(leaf.spent_amount, CScript(leaf.spent_script)), 0)
    return str(psbt.to_base64())
