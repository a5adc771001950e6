"""SuperScalar's own payloads, carried inside bLIP-56 `factory_piggyback` (TLV 1024).

payload := u8 type | 32-byte factory_instance_id | body. Parsed strictly (see `wire.Reader`).

Creation: PROPOSE .. FUNDED; a factory's end: MOVE, KEY; liquidity sales: BUY, QUOTE (the price and
its invoice), OFFER, SALE (the sale and burn txs to check), SALE_STEP (nonces, partial and final
signatures, burn before sale, acks; each step's value of a fixed size).
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
    BUY = 11  # client -> LSP: I want this much inbound liquidity (factory-buy)
    QUOTE = 12  # LSP -> client: its price, and the invoice to pay it with
    OFFER = 13  # LSP -> buyer: a sale (or an on-chain channel) is about to be made for you
    SALE = 14  # LSP -> each co-signer of a leaf's stock: the sale and burn txs to check and sign
    SALE_STEP = 15  # either way: one step of a sale's signing (nonces, signatures, acks)
    UPDATE = 16  # LSP -> each client below a state node: a DW state update, its new channel
    UPDATE_STEP = 17  # client -> LSP: ready (old channels frozen) or stored (new state kept)
    UPDATE_SIG = 18  # LSP -> client: the moved node's final signature (again, until STORED)


class SaleStepKind(IntEnum):
    """The steps of a sale's signing, in order; each carries a value of a fixed size."""

    ACCEPT = 1  # buyer -> LSP: yes to the OFFER (its open may come)
    NONCES = 2  # co-signer -> LSP: public nonces for the burn, then the sale (66 + 66)
    AGG_NONCES = 3  # LSP -> co-signer: aggregate nonces, burn then sale (66 + 66)
    BURN_PSIG = 4  # co-signer -> LSP: partial signature of the burn
    BURN_SIG = 5  # LSP -> co-signer: the burn's final signature (before any sale signature)
    SALE_PSIG = 6  # co-signer -> LSP: partial signature of the sale (it holds the signed burn)
    SALE_SIG = 7  # LSP -> co-signer: the sale's final signature
    DONE = 8  # co-signer -> LSP: stored the signed sale


SALE_STEP_SIZE = {
    SaleStepKind.ACCEPT: 0,
    SaleStepKind.NONCES: 132,
    SaleStepKind.AGG_NONCES: 132,
    SaleStepKind.BURN_PSIG: 32,
    SaleStepKind.BURN_SIG: 64,
    SaleStepKind.SALE_PSIG: 32,
    SaleStepKind.SALE_SIG: 64,
    SaleStepKind.DONE: 0,
}


class OfferKind(IntEnum):
    FACTORY = 1  # a new channel inside the factory, on a sale of the leaf's stock
    ONCHAIN = 2  # the fallback: an ordinary channel funded from the LSP's wallet


MAX_INVOICE_CHARS = 2000
MAX_CHANNEL_SCRIPT = 80
MAX_SALE_TX = 1000  # bytes of an unsigned sale or burn tx (a sale is about 150)
MONEY_SAT = 21_000_000 * 100_000_000


class UpdateStepKind(IntEnum):
    READY = 1  # client -> LSP: our old channels take no HTLC and hold none; open the new one
    STORED = 2  # client -> LSP: we verified and stored the new state's signed path
    BELOW_STORED = 3  # client -> LSP: we stored the signed txs below the moved node


MAX_UPDATE_CHANNELS = 64  # old channels one client may have in a leaf (its own and its sales)


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
    # MuSig2 public nonces, one per node of the client's path (the proposal fixes the shape, so
    # the path is known): the LSP sends the aggregate nonces with the SIGN_REQUEST, a round
    # trip fewer. They commit to nothing; the client signs only after its checks.
    nonces: tuple[tuple[int, bytes], ...] = ()


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
class Update:
    """A DW update of state node `node` into state `state` (its shorter relative lock): the
    recipient's channels in this factory (`old_channels`, its leaf's and its sales') become one
    new channel of `channel_sat` on its new leaf, opened with `move_msat` (what it holds in the
    old ones) on its side; its leaf's stock becomes `leaf_stock`."""

    instance_id: bytes
    session: bytes  # the update's signing ceremony
    node: int
    state: int
    channel_sat: int
    move_msat: int
    leaf_stock: int
    old_channels: tuple[bytes, ...]  # 32-byte channel ids


@dataclass(frozen=True)
class UpdateStep:
    instance_id: bytes
    session: bytes
    kind: UpdateStepKind


@dataclass(frozen=True)
class UpdateSig:
    instance_id: bytes
    session: bytes
    node: int  # the moved state node
    signature: bytes  # its final BIP340 signature (64 bytes)


@dataclass(frozen=True)
class Key:
    instance_id: bytes
    secret: bytes  # the client's per-factory private key, handed over once its balance left


@dataclass(frozen=True)
class Buy:
    instance_id: bytes
    sold_sat: int  # the inbound liquidity asked for


@dataclass(frozen=True)
class Quote:
    instance_id: bytes
    sold_sat: int
    fee_sat: int  # the LSP's price
    invoice: str  # bolt11 of `fee_sat`, held by the LSP until the liquidity is delivered


@dataclass(frozen=True)
class Offer:
    instance_id: bytes
    session: bytes  # 32 bytes: names this sale in every later step
    kind: OfferKind
    sold_sat: int
    fee_sat: int  # 0: the LSP gives it (factory-sell); else the price the buyer is paying


@dataclass(frozen=True)
class SaleProposal:
    """The sale as the LSP built it: the stock output it spends, the buyer (client index), the
    new channel, and the two unsigned txs every co-signer checks against its own."""

    instance_id: bytes
    session: bytes
    stock_txid: str
    stock_vout: int
    stock_amount: int
    buyer: int
    sold_sat: int
    fee_rate_kvb: int
    channel_script: bytes
    sale_tx: bytes  # unsigned, serialized without witness
    burn_tx: bytes


@dataclass(frozen=True)
class SaleStep:
    instance_id: bytes
    session: bytes
    kind: SaleStepKind
    value: bytes  # SALE_STEP_SIZE[kind] bytes


Payload = (
    Propose
    | Accept
    | Text
    | InFactory
    | Ceremony
    | Stored
    | Funded
    | Move
    | Key
    | Buy
    | Quote
    | Offer
    | SaleProposal
    | SaleStep
    | Update
    | UpdateStep
    | UpdateSig
)


def _encode_sale(p: Buy | Quote | Offer | SaleProposal | SaleStep) -> bytes:
    if isinstance(p, Buy):
        return bytes([PayloadType.BUY]) + p.instance_id + struct.pack(">Q", p.sold_sat)
    if isinstance(p, Quote):
        text = p.invoice.encode()
        head = bytes([PayloadType.QUOTE]) + p.instance_id
        return head + struct.pack(">QQH", p.sold_sat, p.fee_sat, len(text)) + text
    if isinstance(p, Offer):
        body = bytes([p.kind]) + struct.pack(">QQ", p.sold_sat, p.fee_sat)
        return bytes([PayloadType.OFFER]) + p.instance_id + p.session + body
    if isinstance(p, SaleProposal):
        return b"".join(
            [
                bytes([PayloadType.SALE]),
                p.instance_id,
                p.session,
                bytes.fromhex(p.stock_txid)[::-1],
                struct.pack(
                    ">IQHQI", p.stock_vout, p.stock_amount, p.buyer, p.sold_sat, p.fee_rate_kvb
                ),
                bytes([len(p.channel_script)]) + p.channel_script,
                struct.pack(">H", len(p.sale_tx)) + p.sale_tx,
                struct.pack(">H", len(p.burn_tx)) + p.burn_tx,
            ]
        )
    head = bytes([PayloadType.SALE_STEP]) + p.instance_id + p.session
    return head + bytes([p.kind]) + p.value


def encode(p: Payload) -> bytes:
    if isinstance(p, Buy | Quote | Offer | SaleProposal | SaleStep):
        return _encode_sale(p)
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
        nonces = wire.encode_nonces(p.nonces, "nonce") if p.nonces else b""
        return bytes([PayloadType.ACCEPT]) + p.instance_id + p.client_pubkey + nonces
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
    if isinstance(p, Update):
        return b"".join(
            [
                bytes([PayloadType.UPDATE]),
                p.instance_id,
                p.session,
                struct.pack(
                    ">HBQQQB",
                    p.node,
                    p.state,
                    p.channel_sat,
                    p.move_msat,
                    p.leaf_stock,
                    len(p.old_channels),
                ),
                *p.old_channels,
            ]
        )
    if isinstance(p, UpdateSig):
        head = bytes([PayloadType.UPDATE_SIG]) + p.instance_id + p.session
        return head + struct.pack(">H", p.node) + p.signature
    if isinstance(p, UpdateStep):
        return bytes([PayloadType.UPDATE_STEP]) + p.instance_id + p.session + bytes([p.kind])
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
        key = r.take(33)
        out = Accept(instance, key, wire.decode_nonces(r, "nonce") if r.pos < len(data) else ())
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
    elif kind in SALE_PAYLOADS:
        out = _decode_sale(kind, instance, r)
    elif kind is PayloadType.UPDATE:
        out = _decode_update(instance, r)
    elif kind is PayloadType.UPDATE_SIG:
        out = UpdateSig(instance, r.take(32), r.u16(), r.take(64))
    elif kind is PayloadType.UPDATE_STEP:
        session = r.take(32)
        try:
            out = UpdateStep(instance, session, UpdateStepKind(r.u8()))
        except ValueError as e:
            raise WireError("unknown update step") from e
    else:
        out = Funded(instance, r.take(32)[::-1].hex(), r.u32())
    r.end()
    return out


SALE_PAYLOADS = (
    PayloadType.BUY,
    PayloadType.QUOTE,
    PayloadType.OFFER,
    PayloadType.SALE,
    PayloadType.SALE_STEP,
)


def _amount(r: wire.Reader, what: str) -> int:
    value = r.u64()
    if not 0 < value <= MONEY_SAT:
        raise WireError(f"{what} {value} sat is not an amount")
    return value


def _decode_sale(kind: PayloadType, instance: bytes, r: wire.Reader) -> Payload:
    """BUY, QUOTE, OFFER, SALE, SALE_STEP: every length bounded, every amount a real one."""
    if kind is PayloadType.BUY:
        return Buy(instance, _amount(r, "sold_sat"))
    if kind is PayloadType.QUOTE:
        sold, fee = _amount(r, "sold_sat"), r.u64()
        if fee > MONEY_SAT:
            raise WireError(f"fee {fee} sat is not an amount")
        length = r.u16()
        if length > MAX_INVOICE_CHARS:
            raise WireError(f"invoice of {length} characters is too long")
        try:
            invoice = r.take(length).decode("ascii")
        except UnicodeDecodeError as e:
            raise WireError("invoice is not ASCII") from e
        return Quote(instance, sold, fee, invoice)
    session = r.take(32)
    if kind is PayloadType.OFFER:
        try:
            offer_kind = OfferKind(r.u8())
        except ValueError as e:
            raise WireError("unknown offer kind") from e
        sold, fee = _amount(r, "sold_sat"), r.u64()
        if fee > MONEY_SAT:
            raise WireError(f"fee {fee} sat is not an amount")
        return Offer(instance, session, offer_kind, sold, fee)
    if kind is PayloadType.SALE:
        return _decode_proposal(instance, session, r)
    try:
        step = SaleStepKind(r.u8())
    except ValueError as e:
        raise WireError("unknown sale step") from e
    return SaleStep(instance, session, step, r.take(SALE_STEP_SIZE[step]))


def _decode_proposal(instance: bytes, session: bytes, r: wire.Reader) -> SaleProposal:
    txid = r.take(32)[::-1].hex()
    vout = r.u32()
    stock = _amount(r, "stock_amount")
    buyer = r.u16()
    sold = _amount(r, "sold_sat")
    rate = r.u32()
    script_len = r.u8()
    if not 1 <= script_len <= MAX_CHANNEL_SCRIPT:
        raise WireError(f"channel script of {script_len} bytes")
    script = r.take(script_len)
    txs = []
    for what in ("sale", "burn"):
        length = r.u16()
        if not 1 <= length <= MAX_SALE_TX:
            raise WireError(f"{what} tx of {length} bytes")
        txs.append(r.take(length))
    return SaleProposal(instance, session, txid, vout, stock, buyer, sold, rate, script, *txs)


def _decode_update(instance: bytes, r: wire.Reader) -> Update:
    session, node, state = r.take(32), r.u16(), r.u8()
    channel_sat = _amount(r, "update channel")
    move_msat = r.u64()
    if move_msat > channel_sat * 1000:
        raise WireError(f"push of {move_msat} msat exceeds the {channel_sat}-sat channel")
    leaf_stock = _amount(r, "leaf stock")
    n = r.u8()
    if not 1 <= n <= MAX_UPDATE_CHANNELS:
        raise WireError(f"an update replaces 1..{MAX_UPDATE_CHANNELS} channels, not {n}")
    old = tuple(r.take(32) for _ in range(n))
    if len(set(old)) != n:
        raise WireError("an update names the same old channel twice")
    return Update(instance, session, node, state, channel_sat, move_msat, leaf_stock, old)
