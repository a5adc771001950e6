"""SuperScalar's own payloads, carried inside bLIP-56 `factory_piggyback` (TLV 1024).

payload := u8 type | 32-byte factory_instance_id | body. Parsed strictly (see `wire.Reader`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from . import wire
from .blip56 import ChannelInFactory
from .errors import WireError
from .tree import FactoryParams


class PayloadType(IntEnum):
    PROPOSE = 1  # LSP -> client: join this factory in slot i on these terms
    ACCEPT = 2  # client -> LSP: yes, with my per-factory key
    REJECT = 3  # client -> LSP: no, and why
    CHANNEL_IN_FACTORY = 4  # LSP -> client: the 65600 record, just before fundchannel_start
    CEREMONY = 5  # either way: a signing-ceremony message (`wire`)
    STORED = 6  # client -> LSP: I verified and stored my signed exit path
    ABORT = 7  # either way: this factory is abandoned, and why
    FUNDED = 8  # LSP -> client: the funding tx was broadcast
    MOVE = 9  # LSP -> client: move your balance out of this funded factory into a target channel
    KEY = 10  # client -> LSP: my balance left this factory; here is my key of it (hand-over)


class MoveTarget(IntEnum):
    FACTORY = 1  # the client's channel in another factory of the same LSP (migration)
    CHANNEL = 2  # an ordinary, confirmed channel with the LSP (cooperative close)


@dataclass(frozen=True)
class Propose:
    instance_id: bytes
    client_index: int
    n_clients: int
    params: FactoryParams
    timeout_height: int
    lsp_pubkey: bytes
    channel_sat: int
    early_warning_time: int


@dataclass(frozen=True)
class Accept:
    instance_id: bytes
    client_pubkey: bytes


@dataclass(frozen=True)
class Text:
    """REJECT or ABORT: a reason in UTF-8."""

    type: PayloadType
    instance_id: bytes
    reason: str


@dataclass(frozen=True)
class InFactory:
    instance_id: bytes
    record: ChannelInFactory


@dataclass(frozen=True)
class Ceremony:
    instance_id: bytes
    message: bytes  # a `wire` message, parsed by the ceremony state machines


@dataclass(frozen=True)
class Stored:
    instance_id: bytes
    session: bytes


@dataclass(frozen=True)
class Funded:
    instance_id: bytes
    txid: str
    vout: int


@dataclass(frozen=True)
class Move:
    instance_id: bytes  # the factory to leave
    kind: MoveTarget
    target: bytes  # a factory instance id or a channel id (32 bytes)


@dataclass(frozen=True)
class Key:
    instance_id: bytes
    secret: bytes  # the client's per-factory private key, handed over once its balance left


Payload = Propose | Accept | Text | InFactory | Ceremony | Stored | Funded | Move | Key


def encode(p: Payload) -> bytes:
    if isinstance(p, Propose):
        body = b"".join(
            [
                struct.pack(">HH", p.client_index, p.n_clients),
                wire.encode_params(p.params),
                struct.pack(">I", p.timeout_height),
                p.lsp_pubkey,
                struct.pack(">QH", p.channel_sat, p.early_warning_time),
            ]
        )
        return bytes([PayloadType.PROPOSE]) + p.instance_id + body
    if isinstance(p, Accept):
        return bytes([PayloadType.ACCEPT]) + p.instance_id + p.client_pubkey
    if isinstance(p, Text):
        text = p.reason.encode()[:1000]
        return bytes([p.type]) + p.instance_id + struct.pack(">H", len(text)) + text
    if isinstance(p, InFactory):
        return bytes([PayloadType.CHANNEL_IN_FACTORY]) + p.instance_id + p.record.encode()
    if isinstance(p, Ceremony):
        return bytes([PayloadType.CEREMONY]) + p.instance_id + p.message
    if isinstance(p, Stored):
        return bytes([PayloadType.STORED]) + p.instance_id + p.session
    if isinstance(p, Move):
        return bytes([PayloadType.MOVE]) + p.instance_id + bytes([p.kind]) + p.target
    if isinstance(p, Key):
        return bytes([PayloadType.KEY]) + p.instance_id + p.secret
    return (
        bytes([PayloadType.FUNDED])
        + p.instance_id
        + bytes.fromhex(p.txid)[::-1]
        + struct.pack(">I", p.vout)
    )


def decode(data: bytes) -> Payload:
    r = wire.Reader(data)
    try:
        kind = PayloadType(r.u8())
    except ValueError as e:
        raise WireError(f"unknown SuperScalar payload type {data[:1].hex()}") from e
    instance = r.take(32)
    out: Payload
    if kind is PayloadType.PROPOSE:
        index, n = r.u16(), r.u16()
        params = wire.decode_params(r)
        timeout = r.u32()
        lsp = r.take(33)
        channel_sat = r.u64()
        ewt = r.u16()
        if not index < n:
            raise WireError(f"slot {index} is not below the client count {n}")
        wire.check_shape_on_wire(n, params)  # before anyone builds anything from it
        out = Propose(instance, index, n, params, timeout, lsp, channel_sat, ewt)
    elif kind is PayloadType.ACCEPT:
        out = Accept(instance, r.take(33))
    elif kind in (PayloadType.REJECT, PayloadType.ABORT):
        try:
            out = Text(kind, instance, r.take(r.u16()).decode())
        except UnicodeDecodeError as e:
            raise WireError("reason is not UTF-8") from e
    elif kind is PayloadType.CHANNEL_IN_FACTORY:
        out = InFactory(instance, ChannelInFactory.decode(r.take(66)))
    elif kind is PayloadType.CEREMONY:
        out = Ceremony(instance, r.take(len(data) - r.pos))
    elif kind is PayloadType.STORED:
        out = Stored(instance, r.take(32))
    elif kind is PayloadType.MOVE:
        try:
            target_kind = MoveTarget(r.u8())
        except ValueError as e:
            raise WireError("unknown move target kind") from e
        out = Move(instance, target_kind, r.take(32))
    elif kind is PayloadType.KEY:
        out = Key(instance, r.take(32))
    else:
        out = Funded(instance, r.take(32)[::-1].hex(), r.u32())
    r.end()
    return out
