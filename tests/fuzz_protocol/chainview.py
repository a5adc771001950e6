"""What the chain lets a client do, decided without the code under test: transactions parsed with
python-bitcointx, every input's script checked by Bitcoin Core's own consensus engine
(py-bitcoinkernel, `pbk`), outpoints looked up in the harness's chain."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pbk

from harness.bitcoin import CTransaction, b2lx
from harness.chain import Chain

FLAGS = pbk.ScriptVerificationFlags.ALL


@dataclass(frozen=True)
class Output:
    script: bytes
    amount: int


def parse(raw: bytes) -> CTransaction:
    return CTransaction.deserialize(raw)


def txid(tx: CTransaction) -> str:
    return b2lx(tx.GetTxid())


def outpoints(tx: CTransaction) -> list[tuple[str, int]]:
    return [(b2lx(i.prevout.hash), i.prevout.n) for i in tx.vin]


def output_of(tx: CTransaction, vout: int) -> Output | None:
    if vout >= len(tx.vout):
        return None
    o = tx.vout[vout]
    return Output(bytes(o.scriptPubKey), int(o.nValue))


def verify_inputs(tx: CTransaction, spent: list[Output]) -> bool:
    """Every input of `tx` valid against the outputs it spends (consensus rules, taproot too)."""
    ktx = pbk.Transaction(tx.serialize())
    outs = [pbk.TransactionOutput(pbk.ScriptPubkey(o.script), o.amount) for o in spent]
    pre = pbk.script.PrecomputedTransactionData(ktx, outs)
    try:
        return all(
            pbk.ScriptPubkey(o.script).verify(o.amount, ktx, pre, i, FLAGS)
            for i, o in enumerate(spent)
        )
    except pbk.ScriptVerifyException:
        return False


def p2wsh_2of2(key_a: bytes, key_b: bytes) -> bytes:
    """BOLT #3 funding script: P2WSH of `2 <k1> <k2> 2 CHECKMULTISIG`, keys sorted."""
    k1, k2 = sorted((key_a, key_b))
    witness_script = b"\x52\x21" + k1 + b"\x21" + k2 + b"\x52\xae"
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


class ChainView:
    """Read-only questions about the harness chain (its lock held for each)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def confirmed_output(self, op: tuple[str, int]) -> Output | None:
        with self.chain.cond:
            rec = self.chain.txs.get(op[0])
            if rec is None or rec.height is None:
                return None
            return output_of(rec.tx, op[1])

    def spender(self, op: tuple[str, int]) -> str | None:
        with self.chain.cond:
            return self.chain.spent.get(op)

    def confirmed(self, tx_id: str) -> bool:
        return self.chain.confirmations(tx_id) > 0
