"""A tree transaction with its MuSig2 key-path signature, and the check of a final signature."""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import musig2
from .errors import CeremonyError
from .tree import UnsignedNodeTx
from .tx import Tx


@dataclass(frozen=True)
class SignedNodeTx:
    """A tree tx with its MuSig2 key-path signature."""

    unsigned: UnsignedNodeTx
    signature: bytes

    @property
    def node(self) -> int:
        return self.unsigned.node

    @property
    def txid(self) -> str:
        return self.unsigned.txid

    def raw(self) -> bytes:
        return self.unsigned.tx.with_witnesses([[self.signature]]).serialize()

    @staticmethod
    def from_raw(node: int, raw: bytes, spent_amount: int, spent_script: bytes) -> SignedNodeTx:
        tx = Tx.deserialize(raw)
        if len(tx.witnesses) != 1 or len(tx.witnesses[0]) != 1 or len(tx.witnesses[0][0]) != 64:
            raise CeremonyError(f"node {node}: not a key-path signed tree transaction")
        unsigned = UnsignedNodeTx(node, replace(tx, witnesses=()), spent_amount, spent_script)
        return SignedNodeTx(unsigned, tx.witnesses[0][0])


def verify_final(utx: UnsignedNodeTx, keyagg: musig2.KeyAggContext, sig: bytes) -> bool:
    return musig2.schnorr_verify(sig, utx.sighash, keyagg.xonly_pubkey)
