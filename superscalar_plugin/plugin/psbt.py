"""The two PSBT operations the plugin needs (BIP174), on the engine's transaction values.

- the txid of the funding PSBT lightningd built (`fundpsbt` + `addpsbtoutput`): its unsigned tx;
- the UNSIGNED leaf PSBT for `fundchannel_complete`, with `witness_utxo` on its input (lightningd
  refuses "non-segwit and unsigned" inputs otherwise, and cannot look up an unbroadcast parent).
  A finalized PSBT would make lightningd re-broadcast it on every restart.
"""

from __future__ import annotations

import base64
import binascii

from ..engine.errors import WireError
from ..engine.tree import UnsignedNodeTx
from ..engine.tx import Tx, TxOut, compact_size

MAGIC = b"psbt\xff"
GLOBAL_UNSIGNED_TX = 0x00
IN_WITNESS_UTXO = 0x01


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise WireError("PSBT truncated")
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def unsigned_tx(psbt_b64: str) -> Tx:
    """The global unsigned transaction of a PSBT (v0, as lightningd's RPCs return)."""
    try:
        data = base64.b64decode(psbt_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError("PSBT is not base64") from e
    if not data.startswith(MAGIC):
        raise WireError("not a PSBT")
    pos = len(MAGIC)
    while True:
        key_len, pos = _read_varint(data, pos)
        if key_len == 0:
            raise WireError("PSBT has no global unsigned transaction")
        key = data[pos : pos + key_len]
        pos += key_len
        value_len, pos = _read_varint(data, pos)
        value = data[pos : pos + value_len]
        pos += value_len
        if key == bytes([GLOBAL_UNSIGNED_TX]):
            return Tx.deserialize(value)


def unsigned_txid(psbt_b64: str) -> str:
    return unsigned_tx(psbt_b64).txid


def _pair(key: bytes, value: bytes) -> bytes:
    return compact_size(len(key)) + key + compact_size(len(value)) + value


def leaf_psbt(leaf: UnsignedNodeTx) -> str:
    tx = leaf.tx
    out = MAGIC + _pair(bytes([GLOBAL_UNSIGNED_TX]), tx.serialize(include_witness=False)) + b"\x00"
    utxo = TxOut(leaf.spent_amount, leaf.spent_script).serialize()
    out += _pair(bytes([IN_WITNESS_UTXO]), utxo) + b"\x00"
    out += b"\x00" * len(tx.outputs)
    return base64.b64encode(out).decode()
