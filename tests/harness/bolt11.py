"""BOLT #11 invoices as Core Lightning v26.06.6 writes and decodes them (common/bolt11.c,
common/bolt11_json.c): real, signed bech32 strings, so any decoder reads the fake's invoices and
the fake's `decode` reads a real node's (a self-test decodes one captured from a real node).

Field order as lightningd writes it: `s`, `p`, `d` (or `h`), `x` (if not 3600), `c` (always),
`r` (route hints), `9` (features). The signature is a recoverable ECDSA signature by the node key
over sha256(hrp || data), so `payee` is recovered, never written (`n` is not used).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import coincurve

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
MSAT_PER_BTC = 100_000_000_000
# letter, msat * 10 per unit (lightningd's `multipliers`)
MULTIPLIERS = (
    ("m", 10 * MSAT_PER_BTC // 1000),
    ("u", 10 * MSAT_PER_BTC // 10**6),
    ("n", 10 * MSAT_PER_BTC // 10**9),
    ("p", 10 * MSAT_PER_BTC // 10**12),
)
CURRENCIES = ("bcrt", "bc", "tbs", "tb", "sb")  # longest first: "bcrt" before "bc"
DEFAULT_EXPIRY = 3600
DEFAULT_MIN_FINAL_CLTV = 18


class Bolt11Error(ValueError):
    """Not a valid BOLT #11 invoice (the message is lightningd's reason where known)."""


# -- bech32 (without BIP 173's 90-character limit, as BOLT #11 requires) ---------------------
def _polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: list[int]) -> str:
    values = _hrp_expand(hrp) + data
    poly = _polymod(values + [0] * 6) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum)


def bech32_decode(text: str) -> tuple[str, list[int]]:
    if text.lower() != text and text.upper() != text:
        raise Bolt11Error("Bad bech32 string")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise Bolt11Error("Bad bech32 string")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(c not in CHARSET for c in rest):
        raise Bolt11Error("Bad bech32 string")
    data = [CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise Bolt11Error("Bad bech32 string")
    return hrp, data[:-6]


def _to_u5(data: bytes) -> list[int]:
    """8-bit to 5-bit words, zero-padded."""
    acc = bits = 0
    out: list[int] = []
    for b in data:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def _from_u5(words: list[int], nbytes: int | None = None, pad: bool = False) -> bytes:
    """5-bit words to bytes, dropping the leftover bits (or zero-padding them into a last byte,
    as lightningd's hash_u5 does for the signed data), keeping `nbytes` if given."""
    acc = bits = 0
    out = bytearray()
    for w in words:
        acc = (acc << 5) | w
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if pad and bits:
        out.append((acc << (8 - bits)) & 0xFF)
    return bytes(out if nbytes is None else out[:nbytes])


def _uint_u5(value: int, nwords: int) -> list[int]:
    return [(value >> 5 * (nwords - 1 - i)) & 31 for i in range(nwords)]


def _u5_uint(words: list[int]) -> int:
    value = 0
    for w in words:
        value = value << 5 | w
    return value


# -- the invoice ------------------------------------------------------------------------------
@dataclass
class RouteHop:
    pubkey: str
    short_channel_id: str
    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int

    def to_bytes(self) -> bytes:
        block, txi, out = (int(x) for x in self.short_channel_id.split("x"))
        scid = (block << 40 | txi << 16 | out).to_bytes(8, "big")
        return (
            bytes.fromhex(self.pubkey)
            + scid
            + self.fee_base_msat.to_bytes(4, "big")
            + self.fee_proportional_millionths.to_bytes(4, "big")
            + self.cltv_expiry_delta.to_bytes(2, "big")
        )

    @classmethod
    def from_bytes(cls, b: bytes) -> RouteHop:
        scid = int.from_bytes(b[33:41], "big")
        return cls(
            b[:33].hex(),
            f"{scid >> 40}x{scid >> 16 & 0xFFFFFF}x{scid & 0xFFFF}",
            int.from_bytes(b[41:45], "big"),
            int.from_bytes(b[45:49], "big"),
            int.from_bytes(b[49:51], "big"),
        )

    def json(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "short_channel_id": self.short_channel_id,
            "fee_base_msat": self.fee_base_msat,
            "fee_proportional_millionths": self.fee_proportional_millionths,
            "cltv_expiry_delta": self.cltv_expiry_delta,
        }


@dataclass
class Bolt11:
    payment_hash: bytes
    timestamp: int
    currency: str = "bcrt"
    amount_msat: int | None = None
    payment_secret: bytes | None = None
    description: str | None = None
    description_hash: bytes | None = None
    expiry: int = DEFAULT_EXPIRY
    min_final_cltv_expiry: int = DEFAULT_MIN_FINAL_CLTV
    features: set[int] = field(default_factory=set)
    routes: list[list[RouteHop]] = field(default_factory=list)
    payee: str = ""  # set by encode/decode
    signature: bytes = b""  # 65 bytes: r || s || recovery id

    def hrp(self) -> str:
        if self.amount_msat is None:
            return f"ln{self.currency}"
        msat = self.amount_msat
        if msat % MSAT_PER_BTC == 0:
            return f"ln{self.currency}{msat // MSAT_PER_BTC}"
        for letter, m10 in MULTIPLIERS:
            if msat * 10 % m10 == 0:
                return f"ln{self.currency}{msat * 10 // m10}{letter}"
        raise AssertionError("unreachable: p divides everything")

    def _data(self) -> list[int]:
        data = _uint_u5(self.timestamp, 7)

        def push(tag: str, words: list[int]) -> None:
            data.extend([CHARSET.index(tag), len(words) >> 5, len(words) & 31, *words])

        def push_varlen(tag: str, value: int) -> None:
            n = 1
            while value >> 5 * n:
                n += 1
            push(tag, _uint_u5(value, n))

        if self.payment_secret is not None:
            push("s", _to_u5(self.payment_secret))
        push("p", _to_u5(self.payment_hash))
        if self.description_hash is not None:
            push("h", _to_u5(self.description_hash))
        elif self.description is not None:
            push("d", _to_u5(self.description.encode()))
        if self.expiry != DEFAULT_EXPIRY:
            push_varlen("x", self.expiry)
        push_varlen("c", self.min_final_cltv_expiry)
        for route in self.routes:
            push("r", _to_u5(b"".join(h.to_bytes() for h in route)))
        # option_payment_metadata (48/49) only with metadata, which the fake never writes
        bits = {b for b in self.features if b not in (48, 49)}
        if bits:
            nwords = max(bits) // 5 + 1
            value = sum(1 << b for b in bits)
            push("9", _uint_u5(value, nwords))
        return data

    def encode(self, node_secret: bytes) -> str:
        hrp, data = self.hrp(), self._data()
        key = coincurve.PrivateKey(node_secret)
        self.signature = key.sign_recoverable(hrp.encode() + _from_u5(data, pad=True))
        self.payee = key.public_key.format(compressed=True).hex()
        return bech32_encode(hrp, data + _to_u5(self.signature))

    def json(self) -> dict[str, Any]:
        """lightningd's `decode` of a bolt11 (json_add_bolt11: fields and their order)."""
        out: dict[str, Any] = {
            "type": "bolt11 invoice",
            "currency": self.currency,
            "created_at": self.timestamp,
            "expiry": self.expiry,
            "payee": self.payee,
        }
        if self.amount_msat is not None:
            out["amount_msat"] = self.amount_msat
        if self.description is not None:
            out["description"] = self.description
        if self.description_hash is not None:
            out["description_hash"] = self.description_hash.hex()
        out["min_final_cltv_expiry"] = self.min_final_cltv_expiry
        if self.payment_secret is not None:
            out["payment_secret"] = self.payment_secret.hex()
        if self.features:
            value = sum(1 << b for b in self.features)
            out["features"] = value.to_bytes((value.bit_length() + 7) // 8, "big").hex()
        if self.routes:
            out["routes"] = [[h.json() for h in r] for r in self.routes]
        out["payment_hash"] = self.payment_hash.hex()
        out["signature"] = der_signature(self.signature[:64]).hex()
        out["valid"] = True
        return out


def der_signature(compact: bytes) -> bytes:
    def der_int(b: bytes) -> bytes:
        b = b.lstrip(b"\x00") or b"\x00"
        if b[0] & 0x80:
            b = b"\x00" + b
        return bytes([0x02, len(b)]) + b

    body = der_int(compact[:32]) + der_int(compact[32:64])
    return bytes([0x30, len(body)]) + body


def _parse_amount(text: str) -> int | None:
    if not text:
        return None
    letter = text[-1] if text[-1] in "munp" else ""
    digits = text[:-1] if letter else text
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        raise Bolt11Error(f"Invalid amount '{text}'")
    value = int(digits)
    if not letter:
        return value * MSAT_PER_BTC
    m10 = dict(MULTIPLIERS)[letter]
    if value * m10 % 10:
        raise Bolt11Error(f"Invalid sub-millisatoshi amount '{text}'")
    return value * m10 // 10


def decode(text: str, currency: str | None = "bcrt") -> Bolt11:
    """Parse and check a bolt11 (signature recovered as the payee). `currency` None accepts any
    network; otherwise an invoice for another one is refused, as lightningd refuses it."""
    if text.lower().startswith("lightning:"):
        text = text[10:]
    hrp, data = bech32_decode(text)
    if not hrp.startswith("ln"):
        raise Bolt11Error("Prefix ln not found")
    rest = hrp[2:]
    cur = next((c for c in CURRENCIES if rest.startswith(c)), None)
    if cur is None:
        raise Bolt11Error(f"Unknown chain for {hrp}")
    if currency is not None and cur != currency:
        raise Bolt11Error(f"Invoice is for another network {cur}")
    amount = _parse_amount(rest[len(cur) :])
    if len(data) < 7 + 104:
        raise Bolt11Error("Too short to contain signature")
    body, sig_words = data[:-104], data[-104:]
    sig = _from_u5(sig_words, 65)
    try:
        payee = (
            coincurve.PublicKey.from_signature_and_message(
                sig, hrp.encode() + _from_u5(body, pad=True)
            )
            .format(compressed=True)
            .hex()
        )
    except Exception as e:
        raise Bolt11Error("signature recovery failed") from e
    inv = Bolt11(
        payment_hash=b"",
        timestamp=_u5_uint(body[:7]),
        currency=cur,
        amount_msat=amount,
        payee=payee,
        signature=sig,
    )
    have_hash = False
    i = 7
    while i < len(body):
        if i + 3 > len(body):
            raise Bolt11Error("Truncated tagged field")
        tag, length = CHARSET[body[i]], body[i + 1] << 5 | body[i + 2]
        words = body[i + 3 : i + 3 + length]
        if len(words) != length:
            raise Bolt11Error(f"{tag}: truncated")
        i += 3 + length
        if tag == "p" and length == 52 and not have_hash:
            inv.payment_hash, have_hash = _from_u5(words, 32), True
        elif tag == "s" and length == 52 and inv.payment_secret is None:
            inv.payment_secret = _from_u5(words, 32)
        elif tag == "d":
            inv.description = _from_u5(words).decode("utf-8", errors="replace")
        elif tag == "h" and length == 52:
            inv.description_hash = _from_u5(words, 32)
        elif tag == "x":
            inv.expiry = _u5_uint(words)
        elif tag == "c":
            inv.min_final_cltv_expiry = _u5_uint(words)
        elif tag == "r":
            raw = _from_u5(words)
            inv.routes.append(
                [RouteHop.from_bytes(raw[k : k + 51]) for k in range(0, len(raw) - 50, 51)]
            )
        elif tag == "9":
            value = _u5_uint(words)
            inv.features = {b for b in range(value.bit_length()) if value >> b & 1}
    if not have_hash:
        raise Bolt11Error("No valid 'p' field found")
    if inv.description is None and inv.description_hash is None:
        raise Bolt11Error("No description")
    return inv


def payment_secret_for(preimage: bytes) -> bytes:
    """lightningd's invoice_secret: sha256 of the preimage with its first bit flipped."""
    return hashlib.sha256(bytes([preimage[0] ^ 1]) + preimage[1:]).digest()
