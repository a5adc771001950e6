"""SuperScalar payloads: bytes in, typed values out, parsed strictly.

These are the messages of a signing ceremony between the LSP (coordinator) and a client (signer).
In the plugin they travel inside bLIP-56's `factory_piggyback`; here they are plain bytes. Every
parser rejects trailing bytes, truncation, unknown types and out-of-range values with `WireError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import InvalidParameter, WireError
from .tree import MAX_CLIENTS, FactoryKeys, FactoryParams, check_shape

WIRE_VERSION = 1
MAX_NODES_PER_MESSAGE = 4096
MAX_OUTPUTS = 256
MAX_CLIENTS_ON_WIRE = MAX_CLIENTS


class MsgType(IntEnum):
    SIGN_REQUEST = 1  # LSP -> client: factory header + the txs of its path to sign
    NONCES = 2  # client -> LSP
    AGG_NONCES = 3  # LSP -> client
    PARTIAL_SIGS = 4  # client -> LSP
    SIGNATURES = 5  # LSP -> client: final signatures of its path
    ABORT = 6  # either way: the ceremony is over, with a reason


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError(f"message truncated at byte {self.pos} (needs {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def end(self) -> None:
        if self.pos != len(self.data):
            raise WireError(f"{len(self.data) - self.pos} trailing bytes")


def _u8(n: int) -> bytes:
    return struct.pack(">B", n)


def _u16(n: int) -> bytes:
    return struct.pack(">H", n)


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


# --- factory header: what a client needs to rebuild its own path ------------------------------


def encode_params(p: FactoryParams) -> bytes:
    return b"".join(
        [
            _u8(p.clients_per_leaf),
            _u8(len(p.arity)),
            bytes(p.arity),
            # High bit: state_over_leaves (absent, i.e. 0, in headers signed before it).
            _u8(p.kickoff_only_top | (0x80 if p.state_over_leaves else 0)),
            _u8(p.states_per_layer),
            _u16(p.step_blocks),
            _u32(p.fee_rate_kvb),
            _u32(p.anchor_sat),
            _u64(p.stock_sat),
            _u16(p.stock_delay),
            _u16(p.ewt_margin),
            _u16(p.max_ewt),
        ]
    )


def decode_params(r: Reader) -> FactoryParams:
    clients_per_leaf = r.u8()
    arity = tuple(r.take(r.u8()))
    top = r.u8()
    p = FactoryParams(
        clients_per_leaf=clients_per_leaf,
        arity=arity,
        kickoff_only_top=top & 0x7F,
        state_over_leaves=bool(top & 0x80),
        states_per_layer=r.u8(),
        step_blocks=r.u16(),
        fee_rate_kvb=r.u32(),
        anchor_sat=r.u32(),
        stock_sat=r.u64(),
        stock_delay=r.u16(),
        ewt_margin=r.u16(),
        max_ewt=r.u16(),
    )
    try:
        p.validate()
    except InvalidParameter as e:
        raise WireError(f"bad factory parameters: {e}") from e
    return p


def check_shape_on_wire(n_clients: int, params: FactoryParams) -> None:
    """What a received shape would cost, bounded before anything is built (`tree.check_shape`)."""
    try:
        check_shape(n_clients, params)
    except InvalidParameter as e:
        raise WireError(f"refused factory shape: {e}") from e


@dataclass(frozen=True)
class FactoryHeader:
    params: FactoryParams
    timeout_height: int
    lsp_pubkey: bytes
    client_pubkeys: tuple[bytes, ...]
    client_index: int  # the recipient's slot
    funding_txid: str
    funding_vout: int
    funding_amount: int

    def factory_keys(self) -> FactoryKeys:
        """The factory this header describes: its shape, keys and timeout (not yet validated)."""
        return FactoryKeys(self.params, self.lsp_pubkey, self.client_pubkeys, self.timeout_height)

    @staticmethod
    def from_bytes(data: bytes) -> FactoryHeader:
        """A header on its own (as the client stores it), parsed strictly."""
        r = Reader(data)
        header = FactoryHeader.decode(r)
        r.end()
        return header

    def encode(self) -> bytes:
        return b"".join(
            [
                _u8(WIRE_VERSION),
                encode_params(self.params),
                _u32(self.timeout_height),
                self.lsp_pubkey,
                _u16(len(self.client_pubkeys)),
                b"".join(self.client_pubkeys),
                _u16(self.client_index),
                bytes.fromhex(self.funding_txid)[::-1],
                _u32(self.funding_vout),
                _u64(self.funding_amount),
            ]
        )

    @staticmethod
    def decode(r: Reader) -> FactoryHeader:
        version = r.u8()
        if version != WIRE_VERSION:
            raise WireError(f"unsupported wire version {version}")
        params = decode_params(r)
        timeout = r.u32()
        lsp = r.take(33)
        n = r.u16()
        if not 1 <= n <= MAX_CLIENTS_ON_WIRE:
            raise WireError(f"client count {n} out of range")
        check_shape_on_wire(n, params)
        keys = tuple(r.take(33) for _ in range(n))
        index = r.u16()
        if index >= n:
            raise WireError(f"client index {index} >= client count {n}")
        txid = r.take(32)[::-1].hex()
        return FactoryHeader(params, timeout, lsp, keys, index, txid, r.u32(), r.u64())


# --- path templates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeTemplate:
    """One tree tx as the LSP proposes it; the client rebuilds and checks it before signing."""

    node: int
    state: int
    nsequence: int
    outputs: tuple[tuple[int, bytes], ...]  # (amount sat, scriptPubKey)

    def encode(self) -> bytes:
        parts = [_u16(self.node), _u8(self.state), _u32(self.nsequence), _u16(len(self.outputs))]
        for amount, script in self.outputs:
            parts += [_u64(amount), _u8(len(script)), script]
        return b"".join(parts)

    @staticmethod
    def decode(r: Reader) -> NodeTemplate:
        node, state, nseq, n_out = r.u16(), r.u8(), r.u32(), r.u16()
        if not 1 <= n_out <= MAX_OUTPUTS:
            raise WireError(f"node {node}: output count {n_out} out of range")
        outputs = []
        for _ in range(n_out):
            amount = r.u64()
            if amount > 21_000_000 * 100_000_000:
                raise WireError(f"node {node}: output amount {amount} exceeds the money supply")
            outputs.append((amount, r.take(r.u8())))
        return NodeTemplate(node, state, nseq, tuple(outputs))


@dataclass(frozen=True)
class SignRequest:
    session: bytes  # 32-byte ceremony id
    header: FactoryHeader
    templates: tuple[NodeTemplate, ...]  # root-most first
    # A creation's request also carries the aggregate nonces of the nodes the client signs: its
    # own nonces came with its ACCEPT, so it answers with partial signatures at once. Empty for
    # a ceremony whose nonces are collected after the request (updates, sales).
    aggnonces: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        body = [
            _u8(MsgType.SIGN_REQUEST),
            self.session,
            self.header.encode(),
            _u16(len(self.templates)),
        ]
        body += [t.encode() for t in self.templates]
        if self.aggnonces:
            body.append(encode_nonces(self.aggnonces, "aggregate nonce"))
        return b"".join(body)


NONCE_SIZE = 66


def encode_nonces(values: tuple[tuple[int, bytes], ...], what: str) -> bytes:
    """(node, 66-byte nonce) pairs: a count, then each node and its nonce."""
    parts = [_u16(len(values))]
    for node, value in values:
        if len(value) != NONCE_SIZE:
            raise WireError(f"{what} for node {node} has the wrong size")
        parts += [_u16(node), value]
    return b"".join(parts)


def decode_nonces(r: Reader, what: str) -> tuple[tuple[int, bytes], ...]:
    count = r.u16()
    if not 1 <= count <= MAX_NODES_PER_MESSAGE:
        raise WireError(f"{what} count {count} out of range")
    values = tuple((r.u16(), r.take(NONCE_SIZE)) for _ in range(count))
    if len({n for n, _ in values}) != len(values):
        raise WireError(f"{what}s: a node appears twice")
    return values


@dataclass(frozen=True)
class NodeValues:
    """NONCES, AGG_NONCES, PARTIAL_SIGS or SIGNATURES: one fixed-size value per node."""

    type: MsgType
    session: bytes
    values: tuple[tuple[int, bytes], ...]  # (node, value)

    def encode(self) -> bytes:
        parts = [_u8(self.type), self.session, _u16(len(self.values))]
        for node, value in self.values:
            if len(value) != VALUE_SIZE[self.type]:
                raise WireError(f"{self.type.name}: value for node {node} has the wrong size")
            parts += [_u16(node), value]
        return b"".join(parts)


VALUE_SIZE = {
    MsgType.NONCES: 66,
    MsgType.AGG_NONCES: 66,
    MsgType.PARTIAL_SIGS: 32,
    MsgType.SIGNATURES: 64,
}


@dataclass(frozen=True)
class Abort:
    session: bytes
    reason: str

    def encode(self) -> bytes:
        text = self.reason.encode()[:1000]
        return _u8(MsgType.ABORT) + self.session + _u16(len(text)) + text


Message = SignRequest | NodeValues | Abort


def decode(data: bytes) -> Message:
    """Parse one ceremony message, strictly."""
    r = Reader(data)
    try:
        kind = MsgType(r.u8())
    except ValueError as e:
        raise WireError(f"unknown message type {data[:1].hex()}") from e
    session = r.take(32)
    msg: Message
    if kind is MsgType.SIGN_REQUEST:
        header = FactoryHeader.decode(r)
        count = r.u16()
        if not 1 <= count <= MAX_NODES_PER_MESSAGE:
            raise WireError(f"template count {count} out of range")
        templates = tuple(NodeTemplate.decode(r) for _ in range(count))
        aggnonces = decode_nonces(r, "aggregate nonce") if r.pos < len(data) else ()
        msg = SignRequest(session, header, templates, aggnonces)
    elif kind is MsgType.ABORT:
        try:
            reason = r.take(r.u16()).decode()
        except UnicodeDecodeError as e:
            raise WireError("abort reason is not UTF-8") from e
        msg = Abort(session, reason)
    else:
        count = r.u16()
        if not 1 <= count <= MAX_NODES_PER_MESSAGE:
            raise WireError(f"{kind.name}: value count {count} out of range")
        size = VALUE_SIZE[kind]
        values = tuple((r.u16(), r.take(size)) for _ in range(count))
        if len({n for n, _ in values}) != len(values):
            raise WireError(f"{kind.name}: a node appears twice")
        msg = NodeValues(kind, session, values)
    r.end()
    return msg
