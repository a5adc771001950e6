"""Invoices, `decode`, `sendpay`/`waitsendpay` and the HTLCs they move, as lightningd v26.06.6
does them (lightningd/invoice.c, pay.c, peer_htlcs.c, htlc_set.c, channeld/full_channel.c), over
the fake's channels.

A payment is one HTLC per route hop, run by a worker thread started by `sendpay` (which returns
`pending` at once, as lightningd does):

- The sender offers the HTLC on its channel to `route[0].id` (the channel is `route[0].channel`,
  its scid or our local alias). channeld's checks apply: the amount against what the sender can
  spend (its balance less the reserve its peer imposes, HTLCs in flight, and for the opener the
  commitment fee with lightningd's fee spike buffer), the recipient's htlc_minimum, 483 HTLCs.
- The HTLC enters the next node: `htlc_accepted` is called on that node's plugin with v26.06.6's
  payload (peer_id, onion {payload, type, short_channel_id, forward_msat, outgoing_cltv_value,
  total_msat, payment_secret, next_onion, shared_secret}, forward_to, htlc {...}), and its result
  honoured: `fail` (failure_message; a failure_onion comes back unparseable), `resolve` (the
  payment_key must hash to the payment hash, else 0x400f), `continue` with optional `payload`,
  `forward_to` and `invoice_msat` replacements. Only then does lightningd check the forward:
  the outgoing channel is the hook's `forward_to`, else the one lightningd picked *before* the
  hook: the onion's scid (for a scid_alias channel only its alias: the real scid is refused),
  then lightningd's best_channel, the channel to that peer with the largest spendable amount
  and the same fees (so a peer asked to forward back to you over channel Y may well use the
  channel X the HTLC came in on). Then fee (`fee_base_msat` + ppm of the outgoing channel),
  htlc min/max, cltv delta (the node's cltv-delta), expiry too soon / too far, the outgoing
  channel's state and peer, and channeld's checks again.
- At the final node: amount and cltv against the onion, cltv-final, then the invoice (unknown,
  paid or expired, payment_secret, amount, at most twice), then the `invoice_payment` hook;
  the invoice is paid and the preimage goes back.
- Balances move only when the preimage comes back (every hop settles); a failure anywhere leaves
  every balance as it was. The failure is reported to the payer as lightningd reports it
  (`waitsendpay` code 204 / 203 / 202 with `data`: erring_index, failcode, failcodename,
  erring_node, erring_channel, erring_direction, raw_message) and in `sendpay_failure`;
  `sendpay_success`, `invoice_creation`, `invoice_payment` and `forward_event` are sent too.

Onions are not encrypted: each hop's payload is a real TLV payload (what lightningd hands the
hook), `next_onion` and `shared_secret` are deterministic stand-ins of the right sizes. Not
modelled: MPP (a partial payment fails with mpp_timeout at once instead of waiting 60 s),
blinded paths, keysend, self-payments with an empty route, `sendonion`, `pay`/`xpay`, channel
updates in failure messages (lightningd sends none for private channels), HTLC timeouts on
chain, disconnections while an HTLC is in flight.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import bolt11
from .bitcoin import features_to_bits
from .errors import JSONRPC2_INVALID_PARAMS, LIGHTNINGD, HarnessError, HarnessTimeout, RpcFail
from .state import (
    Channel,
    Htlc,
    RawToken,
    can_add_htlc,
    commit_weight,
    parse_msat,
    receivable_msat,
    spendable_msat,
    untrimmed_htlcs,
)

if TYPE_CHECKING:
    from .node import FakeNode

DUST_SAT = 546
# JSON-RPC error codes (common/jsonrpc_errors.h)
PAY_IN_PROGRESS = 200
PAY_RHASH_ALREADY_USED = 201
PAY_UNPARSEABLE_ONION = 202
PAY_DESTINATION_PERM_FAIL = 203
PAY_TRY_OTHER_ROUTE = 204
PAY_NO_SUCH_PAYMENT = 208
INVOICE_LABEL_ALREADY_EXISTS = 900
INVOICE_PREIMAGE_ALREADY_EXISTS = 901
# BOLT #4 failure codes (wire/onion_wiregen.h)
BADONION, PERM, NODE, UPDATE = 0x8000, 0x4000, 0x2000, 0x1000
WIRE_NAMES = {
    NODE | 2: "WIRE_TEMPORARY_NODE_FAILURE",
    PERM | NODE | 2: "WIRE_PERMANENT_NODE_FAILURE",
    PERM | NODE | 3: "WIRE_REQUIRED_NODE_FEATURE_MISSING",
    BADONION | PERM | 4: "WIRE_INVALID_ONION_VERSION",
    BADONION | PERM | 5: "WIRE_INVALID_ONION_HMAC",
    BADONION | PERM | 6: "WIRE_INVALID_ONION_KEY",
    UPDATE | 7: "WIRE_TEMPORARY_CHANNEL_FAILURE",
    PERM | 8: "WIRE_PERMANENT_CHANNEL_FAILURE",
    PERM | 9: "WIRE_REQUIRED_CHANNEL_FEATURE_MISSING",
    PERM | 10: "WIRE_UNKNOWN_NEXT_PEER",
    UPDATE | 11: "WIRE_AMOUNT_BELOW_MINIMUM",
    UPDATE | 12: "WIRE_FEE_INSUFFICIENT",
    UPDATE | 13: "WIRE_INCORRECT_CLTV_EXPIRY",
    UPDATE | 14: "WIRE_EXPIRY_TOO_SOON",
    PERM | 15: "WIRE_INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS",
    18: "WIRE_FINAL_INCORRECT_CLTV_EXPIRY",
    19: "WIRE_FINAL_INCORRECT_HTLC_AMOUNT",
    UPDATE | 20: "WIRE_CHANNEL_DISABLED",
    21: "WIRE_EXPIRY_TOO_FAR",
    PERM | 22: "WIRE_INVALID_ONION_PAYLOAD",
    23: "WIRE_MPP_TIMEOUT",
    BADONION | PERM | 24: "WIRE_INVALID_ONION_BLINDING",
}
NO_UPDATE = b"\x00\x00"  # a channel_update of length 0 (none, as for private channels)


def wire_name(code: int) -> str:
    return WIRE_NAMES.get(code, f"UNKNOWN {code}")


def _u16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def incorrect_or_unknown(amount_msat: int, height: int) -> bytes:
    """failmsg_incorrect_or_unknown: 0x400f, the HTLC amount, our height."""
    return _u16(PERM | 15) + _u64(amount_msat) + _u32(height)


def _peektype(msg: bytes) -> int:
    return int.from_bytes(msg[:2], "big") if len(msg) >= 2 else 0


# -- TLV onion payloads (BOLT #4: amt_to_forward 2, outgoing_cltv_value 4, scid 6, data 8) -----
def _bigsize(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    return b"\xff" + n.to_bytes(8, "big")


def _read_bigsize(b: bytes, i: int) -> tuple[int, int]:
    first = b[i]
    if first < 0xFD:
        return first, i + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(b[i + 1 : i + 1 + size], "big"), i + 1 + size


def _tu(v: int) -> bytes:
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


def scid_bytes(scid: str) -> bytes:
    block, txi, out = (int(x) for x in scid.split("x"))
    return (block << 40 | txi << 16 | out).to_bytes(8, "big")


def scid_str(b: bytes) -> str:
    v = int.from_bytes(b, "big")
    return f"{v >> 40}x{v >> 16 & 0xFFFFFF}x{v & 0xFFFF}"


@dataclass
class HopPayload:
    """What a hop's onion payload tells it (lightningd's struct onion_payload)."""

    amt_to_forward: int
    outgoing_cltv: int
    scid: str | None = None  # None: we are the final node
    payment_secret: str | None = None
    total_msat: int | None = None

    def tlv(self) -> bytes:
        body = b"\x02" + _bigsize(len(_tu(self.amt_to_forward))) + _tu(self.amt_to_forward)
        body += b"\x04" + _bigsize(len(_tu(self.outgoing_cltv))) + _tu(self.outgoing_cltv)
        if self.scid is not None:
            body += b"\x06\x08" + scid_bytes(self.scid)
        if self.payment_secret is not None:
            data = bytes.fromhex(self.payment_secret) + _tu(self.total_msat or 0)
            body += b"\x08" + _bigsize(len(data)) + data
        return body

    def raw(self) -> bytes:
        """With its length prefix, as the hook's `onion.payload` shows it."""
        body = self.tlv()
        return _bigsize(len(body)) + body


def parse_tlv_payload(tlv: bytes) -> HopPayload:
    """A hook's replacement `payload` (no length prefix). Raises ValueError if lightningd's
    onion_decode would refuse it (unknown even type, missing amount or cltv)."""
    fields: dict[int, bytes] = {}
    i = 0
    last = -1
    while i < len(tlv):
        t, i = _read_bigsize(tlv, i)
        n, i = _read_bigsize(tlv, i)
        if t <= last or i + n > len(tlv):
            raise ValueError(f"bad TLV stream at type {t}")
        fields[t], last = tlv[i : i + n], t
        i += n
    for t in fields:
        if t % 2 == 0 and t not in (2, 4, 6, 8):
            raise ValueError(f"unknown even type {t}")
    if 2 not in fields or 4 not in fields:
        raise ValueError("missing amt_to_forward or outgoing_cltv_value")
    out = HopPayload(int.from_bytes(fields[2], "big"), int.from_bytes(fields[4], "big"))
    if 6 in fields:
        out.scid = scid_str(fields[6])
    if 8 in fields:
        out.payment_secret = fields[8][:32].hex()
        out.total_msat = int.from_bytes(fields[8][32:], "big")
    return out


def _stream(seed: bytes, n: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:n]


@dataclass
class OnionLayer:
    node_id: str  # who can peel this layer (route[i].id)
    payload: HopPayload
    index: int  # position in the route (0: the first hop's node)

    def shared_secret(self, payment_hash: str) -> str:
        return hashlib.sha256(
            b"harness onion ss" + bytes.fromhex(payment_hash) + bytes.fromhex(self.node_id)
        ).hexdigest()

    def next_onion(self, payment_hash: str, final: bool) -> str:
        """A stand-in for the 1366-byte packet forwarded (version, key, 1300 bytes, hmac: all
        zero for the final hop, as lightningd's last hmac is)."""
        seed = b"harness next onion" + bytes.fromhex(payment_hash) + bytes([self.index])
        body = _stream(seed, 33 + 1300)
        body = b"\x02" + body[1:]
        hmac = bytes(32) if final else _stream(seed + b"hmac", 32)
        return (b"\x00" + body + hmac).hex()


# -- the wallet's records (lightningd's invoices and payments tables) --------------------------
@dataclass
class Invoice:
    label: str
    bolt11: str
    payment_hash: str
    preimage: str
    payment_secret: str
    amount_msat: int | None
    description: str
    expires_at: int
    created_index: int
    features: set[int]
    status: str = "unpaid"
    pay_index: int | None = None
    amount_received_msat: int | None = None
    paid_at: int | None = None
    updated_index: int | None = None

    def current_status(self) -> str:
        if self.status == "unpaid" and time.time() > self.expires_at:
            return "expired"
        return self.status

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "bolt11": self.bolt11,
            "payment_hash": self.payment_hash,
        }
        if self.amount_msat is not None:
            out["amount_msat"] = self.amount_msat
        out["status"] = self.current_status()
        if self.status == "paid":
            out.update(
                {
                    "pay_index": self.pay_index,
                    "amount_received_msat": self.amount_received_msat,
                    "paid_at": self.paid_at,
                    "payment_preimage": self.preimage,
                }
            )
        out.update(
            {
                "description": self.description,
                "expires_at": self.expires_at,
                "created_index": self.created_index,
            }
        )
        if self.updated_index is not None:
            out["updated_index"] = self.updated_index
        return out


@dataclass
class Payment:
    id: int
    payment_hash: str
    groupid: int
    partid: int
    destination: str
    amount_msat: int
    amount_sent_msat: int
    created_at: int
    route_nodes: list[str]
    route_channels: list[str]
    label: str | None = None
    bolt11: str | None = None
    description: str | None = None
    status: str = "pending"
    updated_index: int | None = None
    completed_at: int | None = None
    preimage: str | None = None
    # failure: (error code, failstr, routefail info without raw_message) once failed
    fail: tuple[int, str, dict[str, Any]] | None = None
    erroronion: str | None = None
    # what a waitsendpay woken by the failure gets: (code, message, data)
    waiter_error: tuple[int, str, dict[str, Any]] | None = None

    def fields(self) -> dict[str, Any]:
        """json_add_payment_fields."""
        out: dict[str, Any] = {
            "created_index": self.id,
            "id": self.id,
            "payment_hash": self.payment_hash,
            "groupid": self.groupid,
        }
        if self.updated_index is not None:
            out["updated_index"] = self.updated_index
        if self.partid:
            out["partid"] = self.partid
        out["destination"] = self.destination
        if self.amount_msat:
            out["amount_msat"] = self.amount_msat
        out["amount_sent_msat"] = self.amount_sent_msat
        out["created_at"] = self.created_at
        if self.completed_at is not None:
            out["completed_at"] = self.completed_at
        out["status"] = self.status
        if self.preimage:
            out["payment_preimage"] = self.preimage
        if self.label is not None:
            out["label"] = self.label
        if self.bolt11 is not None:
            out["bolt11"] = self.bolt11
        if self.description is not None:
            out["description"] = self.description
        if self.erroronion is not None:
            out["erroronion"] = self.erroronion
        return out


class PaymentBook:
    """One node's invoices, payments and forwarding counters (survives plugin restarts)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.invoices: list[Invoice] = []
        self.payments: list[Payment] = []
        self.invoice_index = 0
        self.invoice_updated = 0
        self.pay_index = 0
        self.payment_index = 0
        self.payment_updated = 0
        self.forward_index = 0
        self.forward_updated = 0
        self.fees_collected_msat = 0

    def invoice_by_hash(self, payment_hash: str) -> Invoice | None:
        return next((i for i in self.invoices if i.payment_hash == payment_hash), None)

    def payments_by_hash(self, payment_hash: str) -> list[Payment]:
        return [p for p in self.payments if p.payment_hash == payment_hash]


# -- invoice and decode -------------------------------------------------------------------------
def _route_hints(me: FakeNode, needed: int) -> tuple[list[list[bolt11.RouteHop]], set[str]]:
    """lightningd's routehint selection, simplified: candidates are our CHANNELD_NORMAL
    channels whose peer sent channel_ready (their alias), their capacity what they can pay us;
    a connected peer with capacity is usable. As an unpublished node (the fake's nodes announce
    nothing), lightningd takes candidates round-robin until their capacity covers the amount
    (select_inchan_mpp): the fake takes them in creation order. Returns the hints and the
    warnings lightningd would add."""
    from .lightningd_rpcs import mirror_channel

    avail = offline = 0
    chosen: list[list[bolt11.RouteHop]] = []
    gathered = 0
    with me.network.state_lock:
        for ch in me.channels:
            if not can_add_htlc(ch.state) or not ch.remote_ready:
                continue
            _, theirs = mirror_channel(me, ch)
            if theirs is None:
                continue
            capacity = min(receivable_msat(ch, DUST_SAT), theirs.htlc_maximum_msat())
            if me.connected_peer(ch.peer_id) is None:
                offline += capacity
                continue
            avail += capacity
            if gathered >= needed:
                continue
            gathered += capacity
            hint_scid = (
                ch.alias_remote if (ch.scid_alias or not ch.announce or not ch.scid) else ch.scid
            )
            if hint_scid is None:
                continue
            chosen.append(
                [
                    bolt11.RouteHop(
                        ch.peer_id,
                        hint_scid,
                        theirs.fee_base_msat,
                        theirs.fee_ppm,
                        theirs.cltv_delta,
                    )
                ]
            )
    warnings: set[str] = set()
    if len(chosen) > 1:
        warnings.add("warning_mpp")
    if needed >= avail + offline:
        warnings.add("warning_capacity")
    if needed > avail and avail + offline >= needed:
        warnings.add("warning_offline")
    return chosen, warnings


WARNING_TEXT = {
    "warning_mpp": "The invoice is only payable by MPP-capable payers.",
    "warning_capacity": "Insufficient incoming channel capacity to pay invoice",
    "warning_offline": "Insufficient incoming capacity, once offline peers were excluded",
}


def rpc_invoice(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    amount = None if p["amount_msat"] == "any" else parse_msat(p["amount_msat"], "amount_msat")
    if amount == 0:
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS,
            "amount_msat: should be positive msat or 'any': invalid token '0'",
        )
    label = str(p["label"])
    if isinstance(p["label"], RawToken) and not label.isdigit():
        # param_label: a string or a number literal, not another primitive token
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS, f"label: should be a string or number: invalid token '{label}'"
        )
    description = str(p["description"])
    if len(label.encode()) > 128:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"Label '{label}' over 128 bytes")
    hashonly = bool(p.get("deschashonly", False))
    if len(description.encode()) > 639 and not hashonly:
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS,
            "Description greater than 639 bytes invalid "
            f"(description length {len(description.encode())})",
        )
    if "fallbacks" in p:
        raise RpcFail(LIGHTNINGD, "harness: invoice fallbacks are not modelled")
    expiry = int(p.get("expiry", 3600 * 24 * 7))
    cltv = int(p.get("cltv", me.config["cltv-final"]))
    preimage = bytes.fromhex(p["preimage"]) if "preimage" in p else os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    secret = bolt11.payment_secret_for(preimage)
    now = int(time.time())
    features = features_to_bits(me.our_features["invoice"])
    routes, warnings = _route_hints(me, amount if amount is not None else 1)
    inv = bolt11.Bolt11(
        payment_hash=payment_hash,
        timestamp=now,
        amount_msat=amount,
        payment_secret=secret,
        description=None if hashonly else description,
        description_hash=(hashlib.sha256(description.encode()).digest() if hashonly else None),
        expiry=expiry,
        min_final_cltv_expiry=cltv,
        features=features,
        routes=routes,
    )
    encoded = inv.encode(me.node_secret)
    book = me.book
    with book.lock:
        if book.invoice_by_hash(payment_hash.hex()) is not None:
            raise RpcFail(INVOICE_PREIMAGE_ALREADY_EXISTS, "preimage already used")
        if any(i.label == label for i in book.invoices):
            raise RpcFail(INVOICE_LABEL_ALREADY_EXISTS, f"Duplicate label '{label}'")
        book.invoice_index += 1
        record = Invoice(
            label,
            encoded,
            payment_hash.hex(),
            preimage.hex(),
            secret.hex(),
            amount,
            description,
            now + expiry,
            book.invoice_index,
            features,
        )
        book.invoices.append(record)
    note: dict[str, Any] = {"preimage": preimage.hex(), "label": label}
    if amount is not None:
        note = {"msat": amount, **note}
    me.notify("invoice_creation", note)
    out: dict[str, Any] = {
        "payment_hash": record.payment_hash,
        "expires_at": record.expires_at,
        "bolt11": encoded,
        "payment_secret": record.payment_secret,
        "created_index": record.created_index,
    }
    for w in ("warning_mpp", "warning_capacity", "warning_offline"):
        if w in warnings:
            out[w] = WARNING_TEXT[w]
    return out


def rpc_decode(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    text = str(p["string"])
    try:
        return bolt11.decode(text).json()
    except bolt11.Bolt11Error as e:
        reason = (
            str(e)
            if text.lower().removeprefix("lightning:").startswith("ln")
            else ("Unparsable string")
        )
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS, f"string: {reason}: invalid token '\"{text}\"'"
        ) from e


def rpc_listinvoices(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    if "offer_id" in p:
        return {"invoices": []}
    wanted_hash = p.get("payment_hash")
    if "invstring" in p:
        try:
            wanted_hash = bolt11.decode(str(p["invstring"])).payment_hash.hex()
        except bolt11.Bolt11Error as e:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"Invalid invstring: {e}") from e
    with me.book.lock:
        invs = list(me.book.invoices)
    out = []
    for inv in invs:
        if "label" in p and inv.label != str(p["label"]):
            continue
        if wanted_hash is not None and inv.payment_hash != wanted_hash:
            continue
        if p.get("index") == "created" and inv.created_index < int(p.get("start", 0)):
            continue
        if p.get("index") == "updated" and (inv.updated_index or 0) < int(p.get("start", 0)):
            continue
        out.append(inv.json())
    if "limit" in p:
        out = out[: int(p["limit"])]
    return {"invoices": out}


def rpc_delinvoice(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    """lightningd's delinvoice: by label, only in the status named (905, 906 as in its schema);
    an HTLC for a deleted invoice then finds no invoice and fails."""
    label, status = str(p["label"]), str(p["status"])
    with me.book.lock:
        inv = next((i for i in me.book.invoices if i.label == label), None)
        if inv is None:
            raise RpcFail(905, "Unknown invoice")
        current = inv.current_status()
        if current != status:
            raise RpcFail(
                906,
                f"Invoice status is {current} not {status}",
                {"current_status": current, "expected_status": status},
            )
        me.book.invoices.remove(inv)
    return inv.json()


# -- sendpay, waitsendpay, listsendpays --------------------------------------------------------
@dataclass
class Fulfilled:
    preimage: str


@dataclass
class Failed:
    """A failure message from route node `origin_index` (0 = route[0].id), or a local failure
    of the payer itself (`origin_index` -1, with its `local` explanation)."""

    origin_index: int
    failmsg: bytes
    local: str | None = None
    onion: str | None = None  # an unparseable failure onion instead of a message


Outcome = Fulfilled | Failed


def _node_idx(a: str, b: str) -> int:
    """node_id_idx: the direction of the channel from a to b."""
    return 0 if a < b else 1


def _find_first_channel(me: FakeNode, peer_id: str, sel: str) -> Channel | None:
    """pay.c find_channel_for_htlc_add: the channel with that peer whose scid, else local
    alias, is `sel`, in a state that can add HTLCs."""
    with me.network.state_lock:
        for attr in ("scid", "alias_local"):
            for ch in me.channels:
                if ch.peer_id == peer_id and getattr(ch, attr) == sel and can_add_htlc(ch.state):
                    return ch
    return None


def rpc_sendpay(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    route = p["route"]
    rhash = str(p["payment_hash"]).lower()
    msat = parse_msat(p["amount_msat"], "amount_msat") if "amount_msat" in p else None
    partid = int(p.get("partid", 0))
    book = me.book
    if partid and msat is None:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, "Must specify msatoshi with partid")
    if not route:
        raise RpcFail(LIGHTNINGD, "harness: self-payment (an empty route) is not modelled")
    hops = []
    for i, h in enumerate(route):
        amount = parse_msat(h["amount_msat"], f"route[{i}].amount_msat")
        if int(h["delay"]) < 1:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"route[{i}]: 'delay' must be > 0")
        hops.append((str(h["id"]), str(h["channel"]), amount, int(h["delay"])))
    final_amount = hops[-1][2]
    if msat is not None and not partid and msat != final_amount:
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS,
            f"Do not specify msatoshi ({msat}msat) without partid: if you do, it must "
            f"be exactly the final amount ({final_amount}msat)",
        )
    if partid:
        raise RpcFail(LIGHTNINGD, "harness: multi-part payments (partid) are not modelled")
    total = msat if msat is not None else final_amount
    destination = hops[-1][0]
    with book.lock:
        earlier = book.payments_by_hash(rhash)
        group = (
            int(p["groupid"])
            if "groupid" in p
            else max((x.groupid for x in earlier), default=0) + 1
        )
        for x in earlier:  # check_progress
            if x.status == "complete" and x.partid == partid:
                if x.amount_msat != total:
                    raise RpcFail(
                        PAY_RHASH_ALREADY_USED,
                        f"Already succeeded with amount {x.amount_msat}msat (not {total}msat)",
                    )
                if x.destination != destination:
                    raise RpcFail(PAY_RHASH_ALREADY_USED, f"Already succeeded to {x.destination}")
                return x.fields()  # previous success is idempotent
            if x.status == "pending":
                if x.groupid != group:
                    raise RpcFail(
                        PAY_IN_PROGRESS,
                        f"Payment with groupid={x.groupid} still in "
                        "progress, cannot retry before that completes.",
                    )
                if x.amount_msat != total:
                    raise RpcFail(
                        PAY_RHASH_ALREADY_USED,
                        f"Already pending with amount {x.amount_msat}msat (not {total}msat)",
                    )
                return {"message": "Monitor status with listpays or waitsendpay", **x.fields()}
            if x.partid == partid and x.groupid == group:
                raise RpcFail(
                    PAY_RHASH_ALREADY_USED,
                    f"There already is a payment with payment_hash={rhash}, "
                    f"groupid={group}, partid={partid}. Either change the partid, or "
                    "wait for the payment to complete and start a new group.",
                )
    first_id, first_scid, first_amount, first_delay = hops[0]
    channel = _find_first_channel(me, first_id, first_scid)
    if channel is None:
        raise RpcFail(
            PAY_TRY_OTHER_ROUTE,
            "No connection to first peer found",
            {
                "erring_index": 0,
                "failcode": PERM | 10,
                "failcodename": wire_name(PERM | 10),
                "erring_node": me.node_id,
            },
        )
    if me.connected_peer(channel.peer_id) is None:  # send_htlc_out: no owner
        code = UPDATE | 7
        raise RpcFail(
            PAY_TRY_OTHER_ROUTE,
            f"failed: {wire_name(code)} (First peer not ready)",
            {
                "erring_index": 0,
                "failcode": code,
                "failcodename": wire_name(code),
                "erring_node": me.node_id,
                "erring_channel": channel.scid_or_local_alias(),
                "erring_direction": _node_idx(me.node_id, channel.peer_id),
            },
        )
    base = me.network.chain.height + 1
    layers = []
    secret = p.get("payment_secret")
    for i, (node_id, _, amount, delay) in enumerate(hops):
        if i + 1 < len(hops):
            nxt = hops[i + 1]
            payload = HopPayload(nxt[2], base + nxt[3], scid=nxt[1])
        else:
            payload = HopPayload(
                amount, base + delay, payment_secret=secret, total_msat=total if secret else None
            )
        layers.append(OnionLayer(node_id, payload, i))
    with book.lock:
        book.payment_index += 1
        payment = Payment(
            book.payment_index,
            rhash,
            group,
            partid,
            destination,
            total,
            first_amount,
            int(time.time()),
            [h[0] for h in hops],
            [h[1] for h in hops],
            label=p.get("label"),
            bolt11=p.get("bolt11"),
            description=p.get("description"),
        )
        book.payments.append(payment)
        answer = {"message": "Monitor status with listpays or waitsendpay", **payment.fields()}
    me.log(f"Sending {first_amount}msat over {len(hops)} hops to deliver {total}msat")
    threading.Thread(
        target=_run_payment,
        name=f"{me.name}-pay-{payment.id}",
        daemon=True,
        args=(me, payment, channel, first_amount, base + first_delay, layers),
    ).start()
    return answer


def _run_payment(
    me: FakeNode,
    payment: Payment,
    channel: Channel,
    amount: int,
    cltv: int,
    layers: list[OnionLayer],
) -> None:
    try:
        outcome = offer_htlc(me, channel, amount, cltv, payment.payment_hash, layers)
    except Exception as e:  # a harness bug: report it, fail the payment
        me.record(
            HarnessError(
                f"harness error running payment {payment.payment_hash}: {e!r}", node=me.name
            )
        )
        outcome = Failed(-1, _u16(NODE | 2), local="harness error")
    _finish_payment(me, payment, outcome)


def _finish_payment(me: FakeNode, payment: Payment, outcome: Outcome) -> None:
    """payment_succeeded / payment_failed: update the record, tell waiters and subscribers."""
    book = me.book
    if isinstance(outcome, Fulfilled):
        with book.lock:
            book.payment_updated += 1
            payment.status, payment.preimage = "complete", outcome.preimage
            payment.completed_at = int(time.time())
            payment.updated_index = book.payment_updated
            snapshot = payment.fields()
        me.notify("sendpay_success", snapshot)
        me.log(f"payment {payment.payment_hash} complete")
    else:
        code, failstr, info, raw = _routing_failure(me, payment, outcome)
        # waiters and the notification get the payment as it was before it was marked failed
        # (lightningd hands them the record it read first: status "pending")
        with book.lock:
            before = payment.fields()
        data = {**before, **info}
        if raw is not None:
            data["raw_message"] = raw
        if code == PAY_UNPARSEABLE_ONION:
            message = "Malformed error reply"
        else:
            message = f"failed: {wire_name(info['failcode'])} ({failstr})"
        with book.lock:
            book.payment_updated += 1
            payment.status = "failed"
            payment.completed_at = int(time.time())
            payment.updated_index = book.payment_updated
            payment.fail = (code, failstr, info)
            payment.waiter_error = (code, message, data)
        me.notify("sendpay_failure", {"code": code, "message": message, "data": data})
        me.log(f"payment {payment.payment_hash} failed: {message}")
    with me.network.peer_cond:
        me.network.peer_cond.notify_all()


def _routing_failure(
    me: FakeNode, payment: Payment, outcome: Failed
) -> tuple[int, str, dict[str, Any], str | None]:
    """(error code, details, routefail info, raw_message) as pay.c's payment_failed builds
    them (local_routing_failure / remote_routing_failure)."""
    failcode = _peektype(outcome.failmsg)
    nodes, chans = payment.route_nodes, payment.route_channels
    info: dict[str, Any]
    if outcome.onion is not None:
        return PAY_UNPARSEABLE_ONION, "reply from remote", {"onionreply": outcome.onion}, None
    if outcome.origin_index < 0:
        info = {"erring_index": 0, "failcode": failcode}
        if not wire_name(failcode).startswith("UNKNOWN "):
            info["failcodename"] = wire_name(failcode)
        info.update(
            {
                "erring_node": me.node_id,
                "erring_channel": chans[0],
                "erring_direction": _node_idx(me.node_id, nodes[0]),
            }
        )
        return PAY_TRY_OTHER_ROUTE, outcome.local or "local failure", info, None
    k = outcome.origin_index
    if k == len(nodes) - 1:
        erring_channel = chans[k]
        direction = _node_idx(me.node_id if k == 0 else nodes[k - 1], nodes[k])
        if failcode & BADONION:
            code = PAY_UNPARSEABLE_ONION
        elif failcode & PERM:
            code = PAY_DESTINATION_PERM_FAIL
        else:
            code = PAY_TRY_OTHER_ROUTE
        erring_node = nodes[k]
    else:
        code = PAY_TRY_OTHER_ROUTE
        erring_channel = chans[k + 1]
        direction = _node_idx(nodes[k], nodes[k + 1])
        erring_node = nodes[k + 1] if failcode & BADONION else nodes[k]
    info = {"erring_index": k + 1, "failcode": failcode}
    if not wire_name(failcode).startswith("UNKNOWN "):
        info["failcodename"] = wire_name(failcode)
    info.update(
        {
            "erring_node": erring_node,
            "erring_channel": erring_channel,
            "erring_direction": direction,
        }
    )
    return code, "reply from remote", info, outcome.failmsg.hex()


def rpc_waitsendpay(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    rhash = str(p["payment_hash"]).lower()
    partid = int(p.get("partid", 0))
    book = me.book
    with book.lock:
        candidates = [x for x in book.payments_by_hash(rhash) if x.partid == partid]
        group = (
            int(p["groupid"])
            if "groupid" in p
            else max((x.groupid for x in book.payments_by_hash(rhash)), default=0)
        )
        payment = next((x for x in candidates if x.groupid == group), None)
    if payment is None:
        raise RpcFail(PAY_NO_SUCH_PAYMENT, f"Never attempted payment part {partid} for '{rhash}'")
    was_pending = payment.status == "pending"
    timeout = float(p["timeout"]) if "timeout" in p else None
    deadline = None if timeout is None else time.monotonic() + timeout
    net = me.network
    with net.peer_cond:
        while payment.status == "pending":
            if not me.up:
                raise RpcFail(LIGHTNINGD, "harness: the node stopped while waitsendpay waited")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise RpcFail(PAY_IN_PROGRESS, "Timed out while waiting")
            net.peer_cond.wait(0.5 if remaining is None else min(remaining, 0.5))
    if payment.status == "complete":
        return payment.fields()
    assert payment.fail is not None
    if was_pending:  # woken by the failure: lightningd's sendpay_fail with its live record
        assert payment.waiter_error is not None
        raise RpcFail(*payment.waiter_error)
    # from the database: no raw_message (lightningd does not store it)
    code, failstr, info = payment.fail
    if code == PAY_UNPARSEABLE_ONION:
        raise RpcFail(code, "Malformed error reply", {**payment.fields(), **info})
    message = f"failed: {wire_name(info['failcode'])} ({failstr})"
    raise RpcFail(code, message, {**payment.fields(), **info})


def rpc_listsendpays(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    if "bolt11" in p and "payment_hash" in p:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, "Can only specify one of {bolt11} or {payment_hash}")
    wanted = p.get("payment_hash")
    if "bolt11" in p:
        try:
            wanted = bolt11.decode(str(p["bolt11"])).payment_hash.hex()
        except bolt11.Bolt11Error as e:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"Invalid invstring: {e}") from e
    with me.book.lock:
        pays = list(me.book.payments)
    out = [
        x.fields()
        for x in pays
        if (wanted is None or x.payment_hash == wanted)
        and ("status" not in p or x.status == p["status"])
    ]
    return {"payments": out}


# -- the HTLC's way through the network ---------------------------------------------------------
def offer_htlc(
    me: FakeNode,
    ch: Channel,
    amount: int,
    cltv: int,
    payment_hash: str,
    layers: list[OnionLayer],
    on_added: Any = None,
) -> Outcome:
    """`me` offers an HTLC on its channel `ch` (channeld's add_htlc checks), `on_added()` runs
    once it is on both sides, the peer processes it, and the HTLC is settled or failed on both
    sides. Returns how it ended; a channeld refusal is a local failure of `me` (-1 if `me` is
    the payer, else `me`'s route index)."""
    from .lightningd_rpcs import mirror_channel

    net = me.network
    my_index = layers[0].index - 1  # -1: we are the payer
    with net.state_lock:
        other, theirs = mirror_channel(me, ch)
        refusal = None
        if other is None or theirs is None or not can_add_htlc(ch.state):
            refusal = (_u16(PERM | 10), "Channel not ready")  # (send_htlc_out's check)
        elif me.connected_peer(ch.peer_id) is None:
            refusal = (_u16(UPDATE | 7) + NO_UPDATE, "peer is offline")
        else:
            refusal = _channeld_refusal(ch, theirs, amount)
        if refusal is None:
            assert theirs is not None
            hid = ch.next_htlc_id
            ch.next_htlc_id += 1
            out_h = Htlc("out", hid, amount, cltv, payment_hash, "SENT_ADD_ACK_REVOCATION")
            in_h = Htlc("in", hid, amount, cltv, payment_hash, "RCVD_ADD_ACK_REVOCATION")
            ch.htlcs.append(out_h)
            theirs.htlcs.append(in_h)
            ch.stats["out_payments_offered"] += 1
            ch.stats["out_offered_msat"] += amount
            theirs.stats["in_payments_offered"] += 1
            theirs.stats["in_offered_msat"] += amount
    if refusal is not None:
        failmsg, why = refusal
        name = wire_name(_peektype(failmsg))
        me.log(f"cannot offer HTLC of {amount}msat on {ch.scid_or_local_alias()}: {why}")
        return Failed(my_index, failmsg, local=f"{name}: {why}")
    assert other is not None and theirs is not None
    if on_added is not None:
        on_added()  # e.g. the forwarder's "offered" forward_event
    try:
        outcome = _incoming(other, theirs, in_h, me, layers)
    finally:
        with net.state_lock:
            ch.htlcs.remove(out_h)
            theirs.htlcs.remove(in_h)
    if isinstance(outcome, Fulfilled):
        with net.state_lock:
            ch.set_balance(ch.our_msat - amount)
            theirs.set_balance(theirs.our_msat + amount)
            ch.stats["out_payments_fulfilled"] += 1
            ch.stats["out_fulfilled_msat"] += amount
            theirs.stats["in_payments_fulfilled"] += 1
            theirs.stats["in_fulfilled_msat"] += amount
    from .closing import maybe_negotiate

    maybe_negotiate(me, other)  # a channel waiting to close may now be free of HTLCs
    return outcome


def _channeld_refusal(ch: Channel, theirs: Channel, amount: int) -> tuple[bytes, str] | None:
    """channeld/full_channel.c channel_add_htlc, for `ch`'s side offering `amount`."""
    if amount == 0 or amount < theirs.htlc_minimum_msat:
        return (
            _u16(UPDATE | 11) + _u64(amount) + NO_UPDATE,
            f"HTLC too small ({theirs.htlc_minimum_msat}msat minimum)",
        )
    if len(ch.htlcs) + 1 > 483:
        return _u16(UPDATE | 7) + NO_UPDATE, "Too many HTLCs"
    fee = (
        ch.feerate_perkw * commit_weight(untrimmed_htlcs(ch, amount, DUST_SAT), ch.anchors) // 1000
    )
    anchors = 2 * 330 if ch.anchors else 0
    offered = sum(h.amount_msat for h in ch.htlcs if h.direction == "out") + amount
    remainder = ch.our_msat - offered - ch.our_reserve_sat * 1000
    capacity = (_u16(UPDATE | 7) + NO_UPDATE, f"Capacity exceeded - HTLC fee: {fee}sat")
    if remainder < 0:
        return capacity
    if ch.opener == "local" and remainder - anchors * 1000 < fee * 1000:
        return capacity
    if ch.opener == "remote":
        # the opener (our peer) must still afford the commitment with one more HTLC
        their_offered = sum(h.amount_msat for h in ch.htlcs if h.direction == "in")
        their_room = theirs.our_msat - their_offered - ch.their_reserve_sat * 1000 - anchors * 1000
        if their_room < fee * 1000:
            return capacity
    return None


def _incoming(
    me: FakeNode, ch: Channel, htlc: Htlc, sender: FakeNode, layers: list[OnionLayer]
) -> Outcome:
    """peer_accepted_htlc and what follows, on `me` which received `htlc` on `ch`."""
    layer, rest = layers[0], layers[1:]
    i = layer.index
    if not can_add_htlc(ch.state):  # "Rejecting their htlc since we're shutting down"
        return Failed(i, _u16(PERM | 8))
    if layer.node_id != me.node_id:  # the onion was not made for us: its hmac fails
        return Failed(i, _u16(BADONION | PERM | 5) + bytes(32))
    payload = layer.payload
    final = payload.scid is None
    fwd_cid = None if final else calc_forwarding_channel(me, payload)
    hook_payload: dict[str, Any] = {
        "peer_id": sender.node_id,
        "onion": _onion_json(layer, payment_hash=htlc.payment_hash, final=final),
    }
    if fwd_cid is not None:
        hook_payload["forward_to"] = fwd_cid
    height = me.network.chain.height
    hook_payload["htlc"] = {
        "short_channel_id": ch.scid_or_local_alias(),
        "id": htlc.id,
        "amount_msat": htlc.amount_msat,
        "cltv_expiry": htlc.expiry,
        "cltv_expiry_relative": htlc.expiry - height,
        "payment_hash": htlc.payment_hash,
    }
    result = _call_hook(me, htlc, "htlc_accepted", hook_payload)
    if result is None:
        return Failed(i, _u16(NODE | 2))
    invoice_msat = None
    if "payload" in result:
        try:
            payload = parse_tlv_payload(bytes.fromhex(result["payload"]))
        except ValueError:
            return Failed(i, _u16(PERM | 22) + b"\x00" + _u16(0))
        final = payload.scid is None
        if not final and "forward_to" not in result:
            fwd_cid = calc_forwarding_channel(me, payload)
    if "forward_to" in result:
        fwd_cid = result["forward_to"]
    if "invoice_msat" in result:
        invoice_msat = parse_msat(result["invoice_msat"], "invoice_msat")
    verdict = result.get("result")
    if verdict == "fail":
        if "failure_onion" in result:
            return Failed(i, b"", onion=result["failure_onion"])
        return Failed(i, bytes.fromhex(result["failure_message"]))
    if verdict == "resolve":
        key = str(result["payment_key"])
        if hashlib.sha256(bytes.fromhex(key)).hexdigest() != htlc.payment_hash:
            me.log(
                f"Plugin returned a preimage that doesn't match the HTLC hash {htlc.payment_hash}",
                "broken",
            )
            return Failed(i, _u16(PERM | 15))
        return Fulfilled(key)
    if final:
        return _localpay(me, ch, htlc, payload, invoice_msat, i)
    return _forward(me, ch, htlc, payload, fwd_cid, rest, i)


def _onion_json(layer: OnionLayer, payment_hash: str, final: bool) -> dict[str, Any]:
    payload = layer.payload
    out: dict[str, Any] = {"payload": payload.raw().hex(), "type": "tlv"}
    if payload.scid is not None:
        out["short_channel_id"] = payload.scid
    out["forward_msat"] = payload.amt_to_forward
    out["outgoing_cltv_value"] = payload.outgoing_cltv
    if payload.payment_secret is not None:
        out["total_msat"] = payload.total_msat
        out["payment_secret"] = payload.payment_secret
    out["next_onion"] = layer.next_onion(payment_hash, final)
    out["shared_secret"] = layer.shared_secret(payment_hash)
    return out


def _call_hook(
    me: FakeNode, htlc: Htlc, name: str, payload: dict[str, Any]
) -> dict[str, Any] | None:
    """Call the hook on `me`'s plugin and wait for it (lightningd waits forever; the harness
    records a HarnessTimeout after the network's timeout). None: no usable answer."""
    plugin = os.path.basename(me.plugin_cmd[-1]) if me.plugin_cmd else "?"
    if name == "htlc_accepted":
        htlc.status = f"Waiting for the htlc_accepted hook of plugin {plugin}"
    try:
        return me.call_hook_async(name, payload).result(timeout=me.timeout)
    except FutureTimeout:
        me.record(
            HarnessTimeout(
                f"plugin did not answer the {name} hook for "
                f"{htlc.payment_hash} (lightningd would wait forever)",
                node=me.name,
            )
        )
        return None
    except HarnessError:
        return None  # an invalid result: already recorded (lightningd would have died)
    finally:
        htlc.status = None


def calc_forwarding_channel(me: FakeNode, payload: HopPayload) -> str | None:
    """peer_htlcs.c calc_forwarding_channel + best_channel: the onion's scid names a channel
    (for a scid_alias channel only by our local alias), hence a peer; the HTLC goes out on that
    peer's channel with the largest spendable amount among those with the same fees."""
    assert payload.scid is not None
    with me.network.state_lock:
        hint = None
        for c in me.channels:
            if payload.scid == c.alias_local or (payload.scid == c.scid and not c.scid_alias):
                hint = c
                break
        if hint is None:
            me.log(f"No peer channel with scid={payload.scid}", "unusual")
            return None
        best, best_spendable = hint, 0
        for c in me.channels:
            if c.peer_id != hint.peer_id or not can_add_htlc(c.state):
                continue
            spendable = spendable_msat(c, DUST_SAT)
            if spendable <= best_spendable:
                continue
            if (c.fee_base_msat, c.fee_ppm) != (hint.fee_base_msat, hint.fee_ppm):
                continue
            _, theirs = _mirror(me, c)
            if theirs is not None and payload.amt_to_forward < theirs.htlc_minimum_msat:
                continue
            best, best_spendable = c, spendable
        if best is not hint:
            me.log(
                f"Chose a better channel than {payload.scid}: {best.scid_or_local_alias()}", "debug"
            )
        return best.channel_id


def _mirror(me: FakeNode, ch: Channel) -> tuple[FakeNode | None, Channel | None]:
    from .lightningd_rpcs import mirror_channel

    return mirror_channel(me, ch)


def _forward(
    me: FakeNode,
    in_ch: Channel,
    htlc: Htlc,
    payload: HopPayload,
    fwd_cid: str | None,
    rest: list[OnionLayer],
    i: int,
) -> Outcome:
    """peer_htlcs.c forward_htlc, then the HTLC's way on and back."""
    amt, out_cltv = payload.amt_to_forward, payload.outgoing_cltv
    with me.network.state_lock:
        nxt = next((c for c in me.channels if c.channel_id == fwd_cid), None) if fwd_cid else None
    out_scid = nxt.scid_or_local_alias() if nxt is not None else payload.scid
    event: dict[str, Any] = {
        "payment_hash": htlc.payment_hash,
        "in_channel": in_ch.scid_or_local_alias(),
        "in_htlc_id": htlc.id,
        "out_channel": out_scid,
        "in_msat": htlc.amount_msat,
    }
    received = time.time()
    height = me.network.chain.height

    def local_fail(failmsg: bytes) -> Failed:
        code = _peektype(failmsg)
        book = me.book
        with book.lock:
            book.forward_index += 1
            index = book.forward_index
        me.notify(
            "forward_event",
            {
                "created_index": index,
                **event,
                "status": "local_failed",
                "failcode": code,
                "failreason": wire_name(code),
                "style": "tlv",
                "received_time": received,
            },
        )
        return Failed(i, failmsg)

    if nxt is None or not can_add_htlc(nxt.state):
        return local_fail(_u16(PERM | 10))
    fee = nxt.fee_base_msat + amt * nxt.fee_ppm // 1_000_000
    if htlc.amount_msat - fee < amt:
        return local_fail(_u16(UPDATE | 12) + _u64(htlc.amount_msat) + NO_UPDATE)
    if amt > nxt.htlc_maximum_msat() or amt < nxt.htlc_minimum_msat:
        return local_fail(_u16(UPDATE | 7) + NO_UPDATE)
    delta = int(me.config["cltv-delta"])
    if not (delta < htlc.expiry and htlc.expiry - delta >= out_cltv):
        return local_fail(_u16(UPDATE | 13) + _u32(htlc.expiry) + NO_UPDATE)
    if height >= out_cltv:
        return local_fail(_u16(UPDATE | 14) + NO_UPDATE)
    if height + int(me.config["max-locktime-blocks"]) < out_cltv:
        return local_fail(_u16(21))
    out_event = {**event, "out_msat": amt, "fee_msat": htlc.amount_msat - amt}
    book = me.book

    def offered() -> None:
        with book.lock:
            book.forward_index += 1
            created = book.forward_index
        me.notify(
            "forward_event",
            {
                "created_index": created,
                **out_event,
                "status": "offered",
                "style": "tlv",
                "received_time": received,
            },
        )

    outcome = offer_htlc(me, nxt, amt, out_cltv, htlc.payment_hash, rest, on_added=offered)
    if isinstance(outcome, Failed) and outcome.local is not None:
        # channeld refused the outgoing HTLC: our own failure (with an empty channel_update)
        return local_fail(outcome.failmsg)
    with book.lock:
        book.forward_updated += 1
        updated = book.forward_updated
        if isinstance(outcome, Fulfilled):
            book.fees_collected_msat += htlc.amount_msat - amt
    done = {
        "updated_index": updated,
        **out_event,
        "status": "settled" if isinstance(outcome, Fulfilled) else "failed",
        "style": "tlv",
        "received_time": received,
        "resolved_time": time.time(),
    }
    if isinstance(outcome, Fulfilled):
        done["preimage"] = outcome.preimage
    me.notify("forward_event", done)
    return outcome


def _invoice_problem(
    inv: Invoice | None, payload: HopPayload, total: int, invoice_msat: int | None
) -> str | None:
    """invoice_check_payment: why the HTLC cannot pay this invoice, or None."""
    if inv is None:
        return "Unknown invoice"
    if inv.current_status() != "unpaid":
        return "Already paid or expired invoice"
    if payload.payment_secret is None and 8 in inv.features:
        return "Attempt to pay without secret"
    if payload.payment_secret is not None and payload.payment_secret != inv.payment_secret:
        return "Attempt to pay with wrong payment_secret"
    expected = invoice_msat if invoice_msat is not None else inv.amount_msat
    if expected is None:
        return None
    if total < expected:
        return f"Attempt to pay with amount {total}msat < {expected}msat"
    if total > 2 * expected:
        return f"Attempt to pay with amount {total}msat > {2 * expected}msat"
    return None


def _localpay(
    me: FakeNode, ch: Channel, htlc: Htlc, payload: HopPayload, invoice_msat: int | None, i: int
) -> Outcome:
    """peer_htlcs.c handle_localpay, htlc_set_add, invoice_check_payment, the invoice_payment
    hook."""
    height = me.network.chain.height
    unknown = incorrect_or_unknown(htlc.amount_msat, height)
    if htlc.amount_msat < payload.amt_to_forward:
        return Failed(i, _u16(19) + _u64(htlc.amount_msat))
    if htlc.expiry < payload.outgoing_cltv:
        return Failed(i, _u16(18) + _u32(htlc.expiry))
    if height + int(me.config["cltv-final"]) > htlc.expiry:
        me.log(f"Expiry cltv too soon {htlc.expiry} < {height} + {me.config['cltv-final']}")
        return Failed(i, unknown)
    total = htlc.amount_msat
    if payload.payment_secret is not None and payload.total_msat is not None:
        total = payload.total_msat
    book = me.book
    with book.lock:
        inv = book.invoice_by_hash(htlc.payment_hash)
        why = _invoice_problem(inv, payload, total, invoice_msat)
    if why is not None:
        me.log(f"{why} {htlc.payment_hash}")
        return Failed(i, unknown)
    assert inv is not None
    if htlc.amount_msat < total:
        # an MPP part: lightningd would wait 60 s for the rest; the fake fails it at once
        return Failed(i, _u16(23))
    hook: dict[str, Any] = {"label": inv.label, "preimage": inv.preimage, "msat": htlc.amount_msat}
    if me.network.developer:
        hook["extratlvs"] = []
    result = _call_hook(me, htlc, "invoice_payment", {"payment": hook})
    if result is None:
        return Failed(i, unknown)
    if result.get("result") == "reject" or "failure_message" in result:
        failmsg = result.get("failure_message")
        return Failed(i, bytes.fromhex(failmsg) if failmsg else unknown)
    with book.lock:
        if inv.current_status() != "unpaid":  # paid or expired meanwhile
            return Failed(i, unknown)
        book.pay_index += 1
        book.invoice_updated += 1
        inv.status, inv.pay_index = "paid", book.pay_index
        inv.amount_received_msat, inv.paid_at = htlc.amount_msat, int(time.time())
        inv.updated_index = book.invoice_updated
    me.log(f"Resolved invoice '{inv.label}' with amount {htlc.amount_msat}msat in 1 htlcs")
    me.notify(
        "invoice_payment", {"msat": htlc.amount_msat, "preimage": inv.preimage, "label": inv.label}
    )
    return Fulfilled(inv.preimage)


PAYMENT_HANDLERS = {
    "invoice": rpc_invoice,
    "decode": rpc_decode,
    "listinvoices": rpc_listinvoices,
    "delinvoice": rpc_delinvoice,
    "sendpay": rpc_sendpay,
    "waitsendpay": rpc_waitsendpay,
    "listsendpays": rpc_listsendpays,
}
