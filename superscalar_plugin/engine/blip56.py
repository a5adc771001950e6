"""bLIP-56 pluggable channel factories: the factory message envelope and its records.

Message 32800 = `[u16 submessage][tlv_stream]` (BOLT #1 TLVs with BigSize types and lengths).
Parsing is strict: types must increase, lengths must fit, unknown even types are refused, unknown
odd types are skipped ("it's okay to be odd").
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .errors import WireError

FACTORY_MESSAGE_TYPE = 32800
FEATURE_BIT = 271  # optional `pluggable_channel_factories`
SUPPORTED_FACTORY_PROTOCOLS = 0x0002
FACTORY_PIGGYBACK = 0x0004

TLV_PROTOCOL_IDS = 512
TLV_PROTOCOL_ID = 0
TLV_PAYLOAD = 1024

PROTOCOL_NAME = "superscalar_v1"
SUPERSCALAR_PROTOCOL_ID = hashlib.sha256(PROTOCOL_NAME.encode()).digest()

MAX_MESSAGE = 65533  # a Lightning message body, without its 2-byte type


def encode_bigsize(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    return b"\xff" + n.to_bytes(8, "big")


def decode_bigsize(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise WireError("bigsize truncated")
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    if pos + 1 + size > len(data):
        raise WireError("bigsize truncated")
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
    minimum = {2: 0xFD, 4: 0x10000, 8: 0x100000000}[size]
    if value < minimum:
        raise WireError("non-canonical bigsize")
    return value, pos + 1 + size


def encode_tlvs(records: dict[int, bytes]) -> bytes:
    return b"".join(
        encode_bigsize(t) + encode_bigsize(len(v)) + v for t, v in sorted(records.items())
    )


def decode_tlvs(data: bytes, known: frozenset[int]) -> dict[int, bytes]:
    """A BOLT #1 TLV stream; unknown odd types are skipped, unknown even types refused."""
    out: dict[int, bytes] = {}
    pos, last = 0, -1
    while pos < len(data):
        t, pos = decode_bigsize(data, pos)
        length, pos = decode_bigsize(data, pos)
        if t <= last:
            raise WireError(f"TLV types not strictly increasing at type {t}")
        if pos + length > len(data):
            raise WireError(f"TLV {t} length {length} overruns the message")
        value = data[pos : pos + length]
        pos += length
        last = t
        if t in known:
            out[t] = value
        elif t % 2 == 0:
            raise WireError(f"unknown even TLV type {t}")
    return out


@dataclass(frozen=True)
class SupportedProtocols:
    """0x0002: the factory protocols a node supports (sent right after connecting)."""

    protocol_ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        body = encode_tlvs({TLV_PROTOCOL_IDS: b"".join(self.protocol_ids)})
        return struct.pack(">HH", FACTORY_MESSAGE_TYPE, SUPPORTED_FACTORY_PROTOCOLS) + body


@dataclass(frozen=True)
class Piggyback:
    """0x0004: an opaque payload of one factory protocol."""

    protocol_id: bytes
    payload: bytes

    def encode(self) -> bytes:
        body = encode_tlvs({TLV_PROTOCOL_ID: self.protocol_id, TLV_PAYLOAD: self.payload})
        return struct.pack(">HH", FACTORY_MESSAGE_TYPE, FACTORY_PIGGYBACK) + body


FactoryMessage = SupportedProtocols | Piggyback


def decode_factory_message(msg: bytes) -> FactoryMessage:
    """Parse a whole custom message (with its 2-byte type) of type 32800."""
    if len(msg) < 4:
        raise WireError("factory message too short")
    if len(msg) - 2 > MAX_MESSAGE:
        raise WireError("factory message too long")
    msg_type, sub = struct.unpack(">HH", msg[:4])
    if msg_type != FACTORY_MESSAGE_TYPE:
        raise WireError(f"not a factory message (type {msg_type})")
    body = msg[4:]
    if sub == SUPPORTED_FACTORY_PROTOCOLS:
        ids = decode_tlvs(body, frozenset({TLV_PROTOCOL_IDS})).get(TLV_PROTOCOL_IDS, b"")
        if len(ids) % 32:
            raise WireError("supported_factory_protocols: length is not a multiple of 32")
        return SupportedProtocols(tuple(ids[i : i + 32] for i in range(0, len(ids), 32)))
    if sub == FACTORY_PIGGYBACK:
        tlvs = decode_tlvs(body, frozenset({TLV_PROTOCOL_ID, TLV_PAYLOAD}))
        if TLV_PROTOCOL_ID not in tlvs or len(tlvs[TLV_PROTOCOL_ID]) != 32:
            raise WireError("factory_piggyback: missing or malformed protocol id")
        if TLV_PAYLOAD not in tlvs:
            raise WireError("factory_piggyback: missing payload")
        return Piggyback(tlvs[TLV_PROTOCOL_ID], tlvs[TLV_PAYLOAD])
    raise WireError(f"unsupported factory submessage {sub:#06x}")


@dataclass(frozen=True)
class ChannelInFactory:
    """The `channel_in_factory` record (open_channel TLV 65600 in bLIP-56).

    lightningd's openchannel hook does not pass open_channel TLVs, so the opener sends these exact
    bytes in a piggyback just before `fundchannel_start`; moving them into open_channel later is a
    one-line change."""

    protocol_id: bytes
    instance_id: bytes
    early_warning_time: int

    def encode(self) -> bytes:
        return self.protocol_id + self.instance_id + struct.pack(">H", self.early_warning_time)

    @staticmethod
    def decode(data: bytes) -> ChannelInFactory:
        if len(data) != 66:
            raise WireError(f"channel_in_factory must be 66 bytes, got {len(data)}")
        return ChannelInFactory(data[:32], data[32:64], struct.unpack(">H", data[64:])[0])
