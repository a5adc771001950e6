"""The two PSBT operations the plugin needs (BIP174), on the engine's transaction values.

- the txid of the funding PSBT lightningd built (`fundpsbt` + `addpsbtoutput`): its unsigned tx;
- the UNSIGNED leaf PSBT for `fundchannel_complete`, with `witness_utxo` on its input (lightningd
  refuses "non-segwit and unsigned" inputs otherwise, and cannot look up an unbroadcast parent).
  A finalized PSBT would make lightningd re-broadcast it on every restart.
"""

from __future__ import annotations

import base64
import binascii

from ...engine.errors import WireError
from ...engine.tree import UnsignedNodeTx
from ...engine.tx import Tx, TxOut, compact_size

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
    glob, _, _ = parse(psbt_b64)
    return next(Tx.deserialize(v) for k, v in glob if k == bytes([GLOBAL_UNSIGNED_TX]))


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


IN_FINAL_SCRIPTWITNESS = 0x08

Map = list[tuple[bytes, bytes]]


def _read_map(data: bytes, pos: int) -> tuple[Map, int]:
    entries: Map = []
    while True:
        key_len, pos = _read_varint(data, pos)
        if key_len == 0:
            return entries, pos
        key = data[pos : pos + key_len]
        pos += key_len
        value_len, pos = _read_varint(data, pos)
        value = data[pos : pos + value_len]
        if len(key) != key_len or len(value) != value_len:
            raise WireError("PSBT truncated")
        pos += value_len
        entries.append((key, value))


def _write_map(entries: Map) -> bytes:
    return b"".join(_pair(k, v) for k, v in entries) + b"\x00"


def parse(psbt_b64: str) -> tuple[Map, list[Map], list[Map]]:
    """A v0 PSBT as (global map, input maps, output maps), keys and values as raw bytes."""
    try:
        data = base64.b64decode(psbt_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError("PSBT is not base64") from e
    if not data.startswith(MAGIC):
        raise WireError("not a PSBT")
    glob, pos = _read_map(data, len(MAGIC))
    tx = next((Tx.deserialize(v) for k, v in glob if k == bytes([GLOBAL_UNSIGNED_TX])), None)
    if tx is None:
        raise WireError("PSBT has no global unsigned transaction")
    inputs, outputs = [], []
    for _ in tx.inputs:
        m, pos = _read_map(data, pos)
        inputs.append(m)
    for _ in tx.outputs:
        m, pos = _read_map(data, pos)
        outputs.append(m)
    if pos != len(data):
        raise WireError("trailing bytes after the PSBT")
    return glob, inputs, outputs


def serialize(glob: Map, inputs: list[Map], outputs: list[Map]) -> str:
    body = MAGIC + _write_map(glob) + b"".join(_write_map(m) for m in inputs)
    return base64.b64encode(body + b"".join(_write_map(m) for m in outputs)).decode()


def add_anchor_input(psbt_b64: str, anchor: tuple[str, int], anchor_sat: int, change: int) -> str:
    """Add a P2A anchor as the last input (its 240 sat go to output `change`): a CPFP child
    built around the inputs lightningd's wallet selected with `fundpsbt`."""
    from ...engine.taproot import P2A_SCRIPT
    from ...engine.tx import TxIn

    glob, inputs, outputs = parse(psbt_b64)
    tx = unsigned_tx(psbt_b64)
    outs = list(tx.outputs)
    outs[change] = TxOut(outs[change].amount + anchor_sat, outs[change].script_pubkey)
    new_tx = Tx(
        tx.version, (*tx.inputs, TxIn(anchor[0], anchor[1], 0xFFFFFFFD)), tuple(outs), tx.locktime
    )
    glob = [
        (k, new_tx.serialize(include_witness=False) if k == bytes([GLOBAL_UNSIGNED_TX]) else v)
        for k, v in glob
    ]
    inputs.append([(bytes([IN_WITNESS_UTXO]), TxOut(anchor_sat, P2A_SCRIPT).serialize())])
    return serialize(glob, inputs, outputs)


def finalize_anchor(psbt_b64: str, index: int) -> str:
    """A P2A spend needs no signature: its final witness is the empty stack."""
    glob, inputs, outputs = parse(psbt_b64)
    inputs[index] = [(k, v) for k, v in inputs[index] if k[:1] != bytes([IN_FINAL_SCRIPTWITNESS])]
    inputs[index].append((bytes([IN_FINAL_SCRIPTWITNESS]), b"\x00"))
    return serialize(glob, inputs, outputs)


# --- CPFP children: their real size, an exact fee, and the raw tx for a package -----------------

IN_PARTIAL_SIG = 0x02
IN_FINAL_SCRIPTSIG = 0x07
IN_TAP_KEY_SIG = 0x13
P2A_WITNESS_WU = 1  # an empty witness stack: its count byte
# Witness weight of a wallet input once signed, by its script's shape (lightningd's wallet:
# P2WPKH, P2TR key path, and P2SH-wrapped P2WPKH from old wallets).
P2WPKH_WITNESS_WU = 1 + 1 + 72 + 1 + 33
P2TR_WITNESS_WU = 1 + 1 + 65
P2SH_P2WPKH_SCRIPTSIG = 23


def input_utxos(psbt_b64: str) -> list[TxOut]:
    """The `witness_utxo` of every input (what it spends); an input without one is refused."""
    _, inputs, _ = parse(psbt_b64)
    out = []
    for i, m in enumerate(inputs):
        raw = next((v for k, v in m if k == bytes([IN_WITNESS_UTXO])), None)
        if raw is None:
            raise WireError(f"PSBT input {i} has no witness_utxo")
        length, pos = _read_varint(raw, 8)
        out.append(TxOut(int.from_bytes(raw[:8], "little"), raw[pos : pos + length]))
    return out


def signed_vsize(psbt_b64: str) -> int:
    """The vsize the PSBT's tx will have once every input is signed (before signing)."""
    tx = unsigned_tx(psbt_b64)
    base = len(tx.serialize(include_witness=False))
    witness = 2  # segwit marker and flag
    for utxo in input_utxos(psbt_b64):
        script = utxo.script_pubkey
        if len(script) == 22 and script[:2] == b"\x00\x14":
            witness += P2WPKH_WITNESS_WU
        elif len(script) == 34 and script[:2] == b"\x51\x20":
            witness += P2TR_WITNESS_WU
        elif len(script) == 23 and script[:2] == b"\xa9\x14":
            base += P2SH_P2WPKH_SCRIPTSIG
            witness += P2WPKH_WITNESS_WU
        else:  # the P2A anchor (or any script that needs no signature)
            witness += P2A_WITNESS_WU
    return (base * 4 + witness + 3) // 4


def with_output_amount(psbt_b64: str, index: int, amount: int) -> str:
    """The same PSBT with output `index` paying `amount` (set before anything is signed)."""
    glob, inputs, outputs = parse(psbt_b64)
    tx = unsigned_tx(psbt_b64)
    outs = list(tx.outputs)
    outs[index] = TxOut(amount, outs[index].script_pubkey)
    new_tx = Tx(tx.version, tx.inputs, tuple(outs), tx.locktime)
    glob = [
        (k, new_tx.serialize(include_witness=False) if k == bytes([GLOBAL_UNSIGNED_TX]) else v)
        for k, v in glob
    ]
    return serialize(glob, inputs, outputs)


def _witness_items(data: bytes) -> list[bytes]:
    count, pos = _read_varint(data, 0)
    items = []
    for _ in range(count):
        length, pos = _read_varint(data, pos)
        items.append(data[pos : pos + length])
        pos += length
    return items


def extract(psbt_b64: str) -> bytes:
    """The signed tx of a PSBT whose inputs are final or carry one P2WPKH / P2TR key-path
    signature (what lightningd's `signpsbt` leaves): the raw tx to submit in a package."""
    _, inputs, _ = parse(psbt_b64)
    witnesses = []
    for i, m in enumerate(inputs):
        final = next((v for k, v in m if k == bytes([IN_FINAL_SCRIPTWITNESS])), None)
        partial = [(k[1:], v) for k, v in m if k[:1] == bytes([IN_PARTIAL_SIG])]
        tap = next((v for k, v in m if k == bytes([IN_TAP_KEY_SIG])), None)
        if any(k == bytes([IN_FINAL_SCRIPTSIG]) for k, _ in m):
            raise WireError(f"PSBT input {i} needs a scriptSig: not supported in a package")
        if final is not None:
            witnesses.append(_witness_items(final))
        elif len(partial) == 1:
            witnesses.append([partial[0][1], partial[0][0]])
        elif tap is not None:
            witnesses.append([tap])
        else:
            raise WireError(f"PSBT input {i} is not signed")
    return unsigned_tx(psbt_b64).with_witnesses(witnesses).serialize()
