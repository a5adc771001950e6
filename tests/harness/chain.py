"""The shared fake chain: a block height, block hashes, a mempool of broadcast transactions and
where each one confirmed. It never validates scripts: it only tracks outpoints so a double spend
between broadcast transactions is refused ("bad-txns-inputs-missingorspent")."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from .bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    CScript,
    CTransaction,
    b2lx,
)


@dataclass
class TxRecord:
    txid: str
    tx: CTransaction
    hex: str
    broadcast_by: str | None
    height: int | None = None  # None while in the mempool
    index: int | None = None


@dataclass
class Block:
    height: int
    hash: str
    txids: list[str] = field(default_factory=list)


def _block_hash(height: int, prev: str, branch: int = 0) -> str:
    salt = f" branch {branch}" if branch else ""
    return hashlib.sha256(f"harness block {height} {prev}{salt}".encode()).digest()[::-1].hex()


class Chain:
    def __init__(self, start_height: int = 110) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.blocks: dict[int, Block] = {}
        prev = "00" * 32
        for h in range(start_height + 1):
            prev = _block_hash(h, prev)
            self.blocks[h] = Block(h, prev)
        self.height = start_height
        self.txs: dict[str, TxRecord] = {}
        self.mempool: list[str] = []
        self.spent: dict[tuple[str, int], str] = {}
        self.branches = 0  # reorgs so far: new blocks at a height get a new hash

    @property
    def tip_hash(self) -> str:
        with self.cond:
            return self.blocks[self.height].hash

    def broadcast(self, tx: CTransaction, by: str | None = None) -> TxRecord:
        """Add to the mempool. Raises ValueError on a conflict with another broadcast tx."""
        txid = b2lx(tx.GetTxid())
        with self.cond:
            if txid in self.txs:
                return self.txs[txid]
            for txin in tx.vin:
                op = (b2lx(txin.prevout.hash), txin.prevout.n)
                if op in self.spent:
                    raise ValueError(
                        f"bad-txns-inputs-missingorspent: {op[0]}:{op[1]} already spent by "
                        f"{self.spent[op]}"
                    )
            for txin in tx.vin:
                self.spent[(b2lx(txin.prevout.hash), txin.prevout.n)] = txid
            rec = TxRecord(txid, tx, tx.serialize().hex(), by)
            self.txs[txid] = rec
            self.mempool.append(txid)
            self.cond.notify_all()
            return rec

    def mine(self, n: int = 1) -> list[Block]:
        out: list[Block] = []
        with self.cond:
            for _ in range(n):
                h = self.height + 1
                block = Block(h, _block_hash(h, self.blocks[self.height].hash, self.branches))
                # index 0 is the (imaginary) coinbase
                for i, txid in enumerate(self.mempool, start=1):
                    rec = self.txs[txid]
                    rec.height, rec.index = h, i
                    block.txids.append(txid)
                self.mempool = []
                self.blocks[h] = block
                self.height = h
                out.append(block)
            self.cond.notify_all()
        return out

    def reorg(
        self,
        depth: int,
        drop: set[str] | frozenset[str] = frozenset(),
        new_blocks: int | None = None,
    ) -> list[Block]:
        """Replace the top `depth` blocks with `new_blocks` (default depth + 1) others, as a
        longer branch would. Their txs go back to the mempool (so the first new block holds them
        again), except those in `drop` and their descendants: those vanish (as if a conflict won
        on the other branch), their inputs unspent again. Wallets are not rolled back."""
        with self.cond:
            if not 0 < depth <= self.height:
                raise ValueError(f"reorg depth {depth} out of range (height {self.height})")
            fork = self.height - depth + 1
            orphaned = [t for h in range(fork, self.height + 1) for t in self.blocks.pop(h).txids]
            self.height = fork - 1
            gone = set(drop)
            for txid in [*orphaned, *self.mempool]:  # in block order: parents first
                rec = self.txs[txid]
                if any(b2lx(i.prevout.hash) in gone for i in rec.tx.vin):
                    gone.add(txid)
            for txid in gone & self.txs.keys():
                for txin in self.txs.pop(txid).tx.vin:
                    self.spent.pop((b2lx(txin.prevout.hash), txin.prevout.n), None)
            for txid in orphaned:
                if txid in self.txs:
                    self.txs[txid].height = self.txs[txid].index = None
            self.mempool = [t for t in [*orphaned, *self.mempool] if t not in gone]
            self.branches += 1
        return self.mine(depth + 1 if new_blocks is None else new_blocks)

    def double_spend(self, txid: str, script: bytes) -> TxRecord:
        """Replace the mempool tx `txid` (and its descendants) by a tx spending the same inputs
        to one output of `script`, as its owner's RBF replacement would: the original is gone
        for good, its inputs spent by the replacement. Raises ValueError if `txid` confirmed."""
        with self.cond:
            rec = self.txs.get(txid)
            if rec is None or rec.height is not None:
                raise ValueError(f"{txid} is not in the mempool")
            gone = {txid}
            for t in self.mempool:  # parents first
                if any(b2lx(i.prevout.hash) in gone for i in self.txs[t].tx.vin):
                    gone.add(t)
            for t in gone:
                for txin in self.txs.pop(t).tx.vin:
                    self.spent.pop((b2lx(txin.prevout.hash), txin.prevout.n), None)
            self.mempool = [t for t in self.mempool if t not in gone]
            value = sum(o.nValue for o in rec.tx.vout) - 1000
            repl = CMutableTransaction(
                [CMutableTxIn(i.prevout, nSequence=0xFFFFFFFD) for i in rec.tx.vin],
                [CMutableTxOut(max(value, 546), CScript(script))],
            )
            return self.broadcast(CTransaction.from_tx(repl), rec.broadcast_by)

    def confirmations(self, txid: str) -> int:
        with self.cond:
            rec = self.txs.get(txid)
            if rec is None or rec.height is None:
                return 0
            return self.height - rec.height + 1

    def wait_for_height(self, height: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.height >= height, timeout=timeout)
