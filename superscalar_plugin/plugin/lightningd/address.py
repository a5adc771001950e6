"""Segwit addresses (BIP173 bech32, BIP350 bech32m) <-> scriptPubKeys, for lightningd's RPCs
that speak addresses (`addpsbtoutput` destination, `newaddr`)."""

from __future__ import annotations

from ...engine.errors import InvalidParameter

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32, _BECH32M = 1, 0x2BC830A3
HRP = {"bitcoin": "bc", "testnet": "tb", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}


def _polymod(values: list[int]) -> int:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: list[int], frm: int, to: int, pad: bool) -> list[int] | None:
    acc, bits, out, maxv = 0, 0, [], (1 << to) - 1
    for v in data:
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to - bits)) & maxv)
    elif not pad and (bits >= frm or (acc << (to - bits)) & maxv):
        return None
    return out


def encode(script_pubkey: bytes, network: str) -> str:
    """The address of a segwit v0/v1 scriptPubKey."""
    version = 0 if script_pubkey[0] == 0 else script_pubkey[0] - 0x50
    hrp = HRP.get(network, "bcrt")
    data = [version, *(_convert(list(script_pubkey[2:]), 8, 5, True) or [])]
    const = _BECH32 if version == 0 else _BECH32M
    mod = _polymod([*_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ const
    return (
        hrp
        + "1"
        + "".join(_CHARSET[d] for d in data + [(mod >> 5 * (5 - i)) & 31 for i in range(6)])
    )


def decode(address: str) -> bytes:
    """The scriptPubKey of a segwit address; InvalidParameter if it is not one."""
    addr = address.lower()
    hrp, _, rest = addr.rpartition("1")
    if not hrp or len(rest) < 6 or any(c not in _CHARSET for c in rest):
        raise InvalidParameter(f"not a segwit address: {address}")
    data = [_CHARSET.index(c) for c in rest]
    const = _polymod([*_expand(hrp), *data])
    if const not in (_BECH32, _BECH32M) or not data[:-6]:
        raise InvalidParameter(f"bad checksum in address {address}")
    version, program = data[0], _convert(data[1:-6], 5, 8, False)
    if program is None or not 2 <= len(program) <= 40 or version > 16:
        raise InvalidParameter(f"bad witness program in address {address}")
    if (version == 0) != (const == _BECH32):
        raise InvalidParameter(f"wrong checksum variant in address {address}")
    return bytes([version + 0x50 if version else 0, len(program), *program])
