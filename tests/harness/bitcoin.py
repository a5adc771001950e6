"""Bitcoin helpers for the fake node: keys, scripts, regtest addresses, PSBT parsing, feature bits.

python-bitcointx is imported after `superscalar_plugin.chain.btx`, which points it at coincurve's
bundled libsecp256k1.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from superscalar_plugin.chain import btx as _btx

_ = _btx  # imported for its side effect: bitcointx's libsecp256k1 path

import bitcointx  # noqa: E402
import bitcointx.segwit_addr as segwit_addr  # noqa: E402
import coincurve  # noqa: E402
from bitcointx.core import (  # noqa: E402
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    CTxOut,
    b2lx,
    lx,
)
from bitcointx.core.psbt import PartiallySignedTransaction  # noqa: E402
from bitcointx.core.script import CScript, CScriptWitness  # noqa: E402

__all__ = [
    "CMutableTransaction",
    "CMutableTxIn",
    "CMutableTxOut",
    "COutPoint",
    "CScript",
    "CScriptWitness",
    "CTransaction",
    "CTxOut",
    "PartiallySignedTransaction",
    "b2lx",
    "lx",
]

HRP = "bcrt"


def regtest() -> Any:
    """python-bitcointx's chain parameters are thread-local and only the main thread has a
    default: every harness thread that builds or parses transactions runs inside this."""
    return bitcointx.ChainParams("bitcoin/regtest")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", sha256(data)).digest()


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def privkey_from_seed(seed: bytes, *labels: bytes | str) -> bytes:
    """A valid secp256k1 secret derived from `seed` and labels."""
    data = seed + b"".join(x.encode() if isinstance(x, str) else x for x in labels)
    counter = 0
    while True:
        candidate = sha256(data + counter.to_bytes(4, "big"))
        try:
            coincurve.PrivateKey(candidate)
            return candidate
        except ValueError:
            counter += 1


def pubkey_of(secret: bytes) -> bytes:
    return bytes(coincurve.PrivateKey(secret).public_key.format(compressed=True))


def p2wpkh_script(pubkey: bytes) -> bytes:
    return bytes([0x00, 0x14]) + hash160(pubkey)


def p2tr_script(xonly: bytes) -> bytes:
    return bytes([0x51, 0x20]) + xonly


def multisig_2of2(k1: bytes, k2: bytes) -> bytes:
    """BOLT #3 funding witness script: keys in lexicographic order."""
    a, b = sorted([k1, k2])
    return bytes([0x52, 0x21]) + a + bytes([0x21]) + b + bytes([0x52, 0xAE])


def p2wsh_script(witness_script: bytes) -> bytes:
    return bytes([0x00, 0x20]) + sha256(witness_script)


def script_to_address(script: bytes) -> str | None:
    """Regtest segwit address of a v0/v1 witness program, or None."""
    if len(script) >= 4 and script[0] in (0x00, 0x51) and script[1] == len(script) - 2:
        version = 0 if script[0] == 0 else 1
        addr = segwit_addr.encode(HRP, version, script[2:])
        return str(addr) if addr else None
    return None


def address_to_script(address: str) -> bytes | None:
    version, program = segwit_addr.decode(HRP, address)
    if version is None or program is None:
        return None
    return bytes([0x00 if version == 0 else 0x50 + version, len(program)]) + bytes(program)


def txid_hex(tx: CTransaction) -> str:
    return str(b2lx(tx.GetTxid()))


def channel_id_from(txid: str, outnum: int) -> str:
    """BOLT #2: funding txid (internal byte order) XOR the output index in the last 2 bytes."""
    raw = bytearray(bytes.fromhex(txid)[::-1])
    raw[30] ^= (outnum >> 8) & 0xFF
    raw[31] ^= outnum & 0xFF
    return bytes(raw).hex()


def parse_psbt(value: object) -> PartiallySignedTransaction:
    if not isinstance(value, str):
        raise ValueError("should be a PSBT string")
    try:
        return PartiallySignedTransaction.from_base64(value)
    except Exception as e:  # bitcointx raises many kinds
        raise ValueError(f"should be a PSBT: {e}") from e


# -- feature bits ---------------------------------------------------------------------------
def features_to_bits(hexstr: str) -> set[int]:
    if not hexstr:
        return set()
    value = int(hexstr, 16)
    return {i for i in range(value.bit_length()) if value >> i & 1}


def bits_to_features(bits: set[int] | list[int]) -> str:
    """Big-endian, minimal length (as lightningd prints feature bits)."""
    value = 0
    for b in bits:
        value |= 1 << b
    if value == 0:
        return ""
    return value.to_bytes((value.bit_length() + 7) // 8, "big").hex()


def features_or(a: str, b: str) -> str:
    return bits_to_features(features_to_bits(a) | features_to_bits(b))


def has_feature(hexstr: str, bit: int) -> bool:
    """True if `bit` or its even/odd pair is set."""
    bits = features_to_bits(hexstr)
    return bit in bits or (bit ^ 1) in bits
