"""Bitcoin transactions as small immutable values, and the BIP341 signature message.

A factory signs thousands of one-input transactions per ceremony; python-bitcointx's generic
class-dispatch machinery cost over 10x the MuSig2 work itself, so the engine uses these plain
values. Tests check them against python-bitcointx and the BIP341 vectors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from .errors import WireError

SIGHASH_DEFAULT = 0x00
SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


_TAG_PREFIXES: dict[str, bytes] = {}


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash."""
    prefix = _TAG_PREFIXES.get(tag)
    if prefix is None:  # a handful of tags, each hashed once
        t = _sha256(tag.encode())
        prefix = _TAG_PREFIXES[tag] = t + t
    return _sha256(prefix + data)


@dataclass(frozen=True)
class TxIn:
    txid: str  # display (big-endian) hex
    vout: int
    sequence: int

    def outpoint(self) -> bytes:
        return bytes.fromhex(self.txid)[::-1] + struct.pack("<I", self.vout)


@dataclass(frozen=True)
class TxOut:
    amount: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return (
            struct.pack("<q", self.amount)
            + compact_size(len(self.script_pubkey))
            + self.script_pubkey
        )


@dataclass(frozen=True)
class Tx:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int
    witnesses: tuple[tuple[bytes, ...], ...] = ()  # one stack per input, or () when unsigned

    def _body(self) -> tuple[bytes, bytes]:
        ins = compact_size(len(self.inputs)) + b"".join(
            i.outpoint() + b"\x00" + struct.pack("<I", i.sequence) for i in self.inputs
        )
        outs = compact_size(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
        return ins, outs

    def serialize(self, include_witness: bool = True) -> bytes:
        ins, outs = self._body()
        version, locktime = struct.pack("<i", self.version), struct.pack("<I", self.locktime)
        if not include_witness or not any(self.witnesses):
            return version + ins + outs + locktime
        wit = b"".join(
            compact_size(len(stack)) + b"".join(compact_size(len(item)) + item for item in stack)
            for stack in self.witnesses
        )
        return version + b"\x00\x01" + ins + outs + wit + locktime

    @cached_property
    def txid(self) -> str:
        return _sha256d(self.serialize(include_witness=False))[::-1].hex()

    @property
    def vsize(self) -> int:
        stripped = len(self.serialize(include_witness=False))
        return (stripped * 3 + len(self.serialize()) + 3) // 4

    def with_witnesses(self, witnesses: Sequence[Sequence[bytes]]) -> Tx:
        if len(witnesses) != len(self.inputs):
            raise ValueError("one witness stack per input")
        return replace(self, witnesses=tuple(tuple(w) for w in witnesses))

    @staticmethod
    def deserialize(raw: bytes) -> Tx:
        return _Parser(raw).tx()


class _Parser:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.raw):
            raise WireError("transaction truncated")
        out = self.raw[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        return int.from_bytes(self.take({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")

    def tx(self) -> Tx:
        version = struct.unpack("<i", self.take(4))[0]
        segwit = self.raw[self.pos : self.pos + 2] == b"\x00\x01"
        if segwit:
            self.pos += 2
        inputs = []
        for _ in range(self.varint()):
            txid = self.take(32)[::-1].hex()
            vout = struct.unpack("<I", self.take(4))[0]
            if self.varint() != 0:
                raise WireError("scriptSig must be empty (segwit-only transactions here)")
            inputs.append(TxIn(txid, vout, struct.unpack("<I", self.take(4))[0]))
        outputs = []
        for _ in range(self.varint()):
            amount = struct.unpack("<q", self.take(8))[0]
            outputs.append(TxOut(amount, self.take(self.varint())))
        witnesses: tuple[tuple[bytes, ...], ...] = ()
        if segwit:
            witnesses = tuple(
                tuple(self.take(self.varint()) for _ in range(self.varint())) for _ in inputs
            )
        locktime = struct.unpack("<I", self.take(4))[0]
        if self.pos != len(self.raw):
            raise WireError("trailing bytes after transaction")
        return Tx(version, tuple(inputs), tuple(outputs), locktime, witnesses)


DUST_RELAY_FEE_KVB = 3000  # Bitcoin Core's default -dustrelayfee, sat per 1000 vB
MAX_SCRIPT_SIZE = 10_000


def is_witness_program(script: bytes) -> bool:
    """BIP141: a version opcode (OP_0, OP_1..OP_16) then one push of 2..40 bytes."""
    return (
        4 <= len(script) <= 42
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
    )


def dust_threshold(script_pubkey: bytes) -> int:
    """The smallest amount Bitcoin Core relays in an output of this script (its
    `GetDustThreshold` at the default dust relay fee): 330 sat for P2TR and P2WSH, 294 for
    P2WPKH, 546 for P2PKH; 0 for an unspendable (OP_RETURN) output."""
    if script_pubkey[:1] == b"\x6a" or len(script_pubkey) > MAX_SCRIPT_SIZE:
        return 0
    size = len(TxOut(0, script_pubkey).serialize())
    # What spending it costs: outpoint, scriptSig length, sequence, and a typical signature.
    size += 32 + 4 + 1 + (107 // 4 if is_witness_program(script_pubkey) else 107) + 4
    return -(-size * DUST_RELAY_FEE_KVB // 1000)


def block_txids(raw_block: bytes) -> list[str]:
    """The txids of a serialized block, in order (what a plugin gets from getrawblockbyheight)."""
    return [txid for txid, _ in block_txs(raw_block)]


def block_txs(raw_block: bytes) -> list[tuple[str, bytes]]:
    """Each transaction of a serialized block, in order: its txid and its whole serialization.

    Any transaction form is accepted here (coinbase scriptSigs, legacy inputs): only the bytes that
    make up each txid are located and hashed."""
    p = _Parser(raw_block)
    p.take(80)  # header
    txids: list[tuple[str, bytes]] = []
    for _ in range(p.varint()):
        start = p.pos
        p.take(4)
        segwit = p.raw[p.pos : p.pos + 2] == b"\x00\x01"
        if segwit:
            p.take(2)
        body_start = p.pos
        n_in = p.varint()
        for _ in range(n_in):
            p.take(36)
            p.take(p.varint())
            p.take(4)
        for _ in range(p.varint()):
            p.take(8)
            p.take(p.varint())
        body_end = p.pos
        if segwit:
            for _ in range(n_in):
                for _ in range(p.varint()):
                    p.take(p.varint())
        locktime = p.take(4)
        stripped = p.raw[start : start + 4] + p.raw[body_start:body_end] + locktime
        txids.append((_sha256d(stripped)[::-1].hex(), p.raw[start : p.pos]))
    if p.pos != len(p.raw):
        raise WireError("trailing bytes after the block's transactions")
    return txids


def taproot_sighash(
    tx: Tx,
    input_index: int,
    spent: Sequence[TxOut],
    hash_type: int = SIGHASH_DEFAULT,
    leaf_hash: bytes | None = None,
    annex: bytes | None = None,
) -> bytes:
    """BIP341 SigMsg hashed with tag TapSighash; `leaf_hash` given for tapscript (BIP342) spends."""
    if hash_type not in (0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83):
        raise ValueError(f"invalid hash type {hash_type:#x}")
    if len(spent) != len(tx.inputs):
        raise ValueError("one spent output per input")
    out_type = SIGHASH_ALL if hash_type == SIGHASH_DEFAULT else hash_type & 0x03
    anyone = bool(hash_type & SIGHASH_ANYONECANPAY)
    msg = bytes([hash_type]) + struct.pack("<i", tx.version) + struct.pack("<I", tx.locktime)
    if not anyone:
        msg += _sha256(b"".join(i.outpoint() for i in tx.inputs))
        msg += _sha256(b"".join(struct.pack("<q", o.amount) for o in spent))
        msg += _sha256(
            b"".join(compact_size(len(o.script_pubkey)) + o.script_pubkey for o in spent)
        )
        msg += _sha256(b"".join(struct.pack("<I", i.sequence) for i in tx.inputs))
    if out_type == SIGHASH_ALL:
        msg += _sha256(b"".join(o.serialize() for o in tx.outputs))
    msg += bytes([(2 if leaf_hash is not None else 0) + (1 if annex is not None else 0)])
    if anyone:
        txin, prev = tx.inputs[input_index], spent[input_index]
        msg += txin.outpoint() + prev.serialize() + struct.pack("<I", txin.sequence)
    else:
        msg += struct.pack("<I", input_index)
    if annex is not None:
        msg += _sha256(compact_size(len(annex)) + annex)
    if out_type == SIGHASH_SINGLE:
        if input_index >= len(tx.outputs):
            raise ValueError("SIGHASH_SINGLE without a matching output")
        msg += _sha256(tx.outputs[input_index].serialize())
    if leaf_hash is not None:
        msg += leaf_hash + b"\x00" + b"\xff\xff\xff\xff"
    return tagged_hash("TapSighash", b"\x00" + msg)
