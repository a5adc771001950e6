"""Plain state of a fake node: peers, channels, the datastore (persisted as JSON), amounts."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .errors import (
    DATASTORE_DEL_DOES_NOT_EXIST,
    DATASTORE_DEL_WRONG_GENERATION,
    DATASTORE_UPDATE_ALREADY_EXISTS,
    DATASTORE_UPDATE_DOES_NOT_EXIST,
    DATASTORE_UPDATE_HAS_CHILDREN,
    DATASTORE_UPDATE_NO_CHILDREN,
    DATASTORE_UPDATE_WRONG_GENERATION,
    JSONRPC2_INVALID_PARAMS,
    RpcFail,
)


class RawToken(str):
    """A parameter lightning-cli sent unquoted that is not JSON (e.g. 127.0.0.1): lightningd's
    JSON parser keeps it as a primitive token, which handlers wanting a string may refuse."""


# -- amounts ---------------------------------------------------------------------------------


def _amount(value: Any, name: str, unit_msat: int) -> int:
    """Parse lightningd's amount forms into msat. A bare integer is in `unit_msat` units."""
    if isinstance(value, bool):
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{name}: should be an amount: invalid token")
    if isinstance(value, int):
        if value < 0:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{name}: should be a positive amount")
        return value * unit_msat
    if isinstance(value, str):
        try:
            if value.endswith("msat"):
                return int(value[:-4])
            if value.endswith("sat"):
                return int(value[:-3]) * 1000
            if value.endswith("btc"):
                msat = Decimal(value[:-3]) * 100_000_000_000
                if msat != msat.to_integral_value():
                    raise InvalidOperation
                return int(msat)
            if value.isdigit():
                return int(value) * unit_msat
        except (ValueError, InvalidOperation):
            pass
    raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{name}: should be an amount: invalid token {value!r}")


def parse_sat(value: Any, name: str) -> int:
    msat = _amount(value, name, 1000)
    if msat % 1000:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{name}: should be a whole number of satoshis")
    return msat // 1000


def parse_msat(value: Any, name: str) -> int:
    return _amount(value, name, 1)


# -- peers and channels -----------------------------------------------------------------------


@dataclass
class Peer:
    node_id: str
    direction: str  # "in" | "out": who opened the connection, from our side
    features: str  # their init features (hex)
    addr: str  # "127.0.0.1:port"
    state: str = "connecting"  # "connecting" | "connected" | "disconnected"

    @property
    def connected(self) -> bool:
        return self.state == "connected"


CHANNEL_TYPE_NAMES = {
    12: "static_remotekey/even",
    22: "anchors/even",
    46: "scid_alias/even",
    50: "zeroconf/even",
}


def channel_type_json(bits: list[int]) -> dict[str, Any]:
    return {"bits": list(bits), "names": [CHANNEL_TYPE_NAMES.get(b, f"{b}") for b in bits]}


@dataclass
class Htlc:
    """One HTLC in flight on a channel, as one side lists it (`htlcs` of listpeerchannels)."""

    direction: str  # "out" (we offered it) | "in" (they offered it)
    id: int
    amount_msat: int
    expiry: int
    payment_hash: str
    state: str  # SENT_ADD_ACK_REVOCATION (out) | RCVD_ADD_ACK_REVOCATION (in)
    status: str | None = None  # "Waiting for the htlc_accepted hook of plugin X"

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "direction": self.direction,
            "id": self.id,
            "amount_msat": self.amount_msat,
            "expiry": self.expiry,
            "payment_hash": self.payment_hash,
            "state": self.state,
        }
        if self.status:
            out["status"] = self.status
        return out


STATS = (
    "in_payments_offered",
    "in_offered_msat",
    "in_payments_fulfilled",
    "in_fulfilled_msat",
    "out_payments_offered",
    "out_offered_msat",
    "out_payments_fulfilled",
    "out_fulfilled_msat",
)


@dataclass
class Channel:
    peer_id: str
    opener: str  # "local" | "remote"
    amount_sat: int
    push_msat: int
    funding_script: bytes
    our_funding_pubkey: bytes
    their_funding_pubkey: bytes
    announce: bool
    mindepth: int
    channel_type_bits: list[int]
    feerate_perkw: int  # the commitment feerate (constant: no update_fee in the fake)
    our_reserve_sat: int  # what the peer insists we keep (lightningd's their_config reserve)
    their_reserve_sat: int  # what we insist the peer keeps (our_config reserve)
    our_to_self_delay: int
    their_to_self_delay: int
    state: str = "OPENINGD"
    channel_id: str | None = None
    funding_txid: str | None = None
    funding_outnum: int | None = None
    alias_local: str | None = None
    alias_remote: str | None = None
    scid: str | None = None
    close_to: str | None = None  # our shutdown scriptpubkey (hex)
    withheld: bool = False
    created: float = field(default_factory=time.time)
    state_changes: list[dict[str, Any]] = field(default_factory=list)
    # our side's gossip (`updates.local`): the node's fee-base, fee-per-satoshi, cltv-delta
    fee_base_msat: int = 1000
    fee_ppm: int = 10
    cltv_delta: int = 34
    htlc_minimum_msat: int = 0
    # balance and HTLCs (ours: lightningd's channel->our_msat)
    our_msat: int = -1
    min_to_us_msat: int = -1
    max_to_us_msat: int = -1
    htlcs: list[Htlc] = field(default_factory=list)
    next_htlc_id: int = 0  # id of the next HTLC we offer on this channel
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATS, 0))
    remote_ready: bool = False  # their channel_ready seen: alias.remote and updates.remote shown
    # closing
    closer: str | None = None  # "local" | "remote"
    cause: str = "user"  # the cause of the last state change
    closing_tx: str | None = None  # the agreed mutual close (hex), broadcast once its input exists
    closing_txid: str | None = None
    closing_fee_sat: int = 0
    close_result: dict[str, Any] | None = None  # what a pending `close` returns once done
    missing_funding_logged: bool = False
    billboard: str | None = None
    # Called with the channel at each state change once its row is in the node's database
    # (`walletdb`), which keeps `channels.state` as lightningd does.
    on_state: Callable[[Channel], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.our_msat < 0:
            total = self.amount_sat * 1000
            self.our_msat = total - self.push_msat if self.opener == "local" else self.push_msat
        if self.min_to_us_msat < 0:
            self.min_to_us_msat = self.our_msat
        if self.max_to_us_msat < 0:
            self.max_to_us_msat = self.our_msat

    @property
    def total_msat(self) -> int:
        return self.amount_sat * 1000

    @property
    def to_us_msat(self) -> int:
        return self.our_msat

    def set_balance(self, our_msat: int) -> None:
        self.our_msat = our_msat
        self.min_to_us_msat = min(self.min_to_us_msat, our_msat)
        self.max_to_us_msat = max(self.max_to_us_msat, our_msat)

    @property
    def committed(self) -> bool:
        return self.state != "OPENINGD"

    @property
    def anchors(self) -> bool:
        return 22 in self.channel_type_bits or 20 in self.channel_type_bits

    @property
    def scid_alias(self) -> bool:
        return 46 in self.channel_type_bits

    def scid_or_local_alias(self) -> str | None:
        """lightningd's channel_scid_or_local_alias."""
        return self.scid or self.alias_local

    def htlc_maximum_msat(self) -> int:
        """lightningd's htlc_max_possible_send: the capacity less the reserve we must keep
        (their max_htlc_value_in_flight is unlimited in the fake)."""
        return max(0, self.total_msat - self.our_reserve_sat * 1000)

    def set_state(self, new: str, cause: str, message: str, record: bool = True) -> dict[str, Any]:
        """Change state; returns the change record (the channel_state_changed payload core).
        A channel's first state (`record=False`) is notified but not in `state_changes`, as in
        lightningd."""
        change = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "old_state": self.state,
            "new_state": new,
            "cause": cause,
            "message": message,
        }
        if record:
            self.state_changes.append(change)
        self.state = new
        self.cause = cause
        if self.on_state is not None:
            self.on_state(self)
        return change


def state_note(ch: Channel, change: dict[str, Any], first: bool = False) -> dict[str, Any]:
    """The channel_state_changed notification payload for `change`."""
    note: dict[str, Any] = {
        "peer_id": ch.peer_id,
        "channel_id": ch.channel_id,
        "timestamp": change["timestamp"],
        "new_state": change["new_state"],
        "cause": change["cause"],
        "message": change["message"],
    }
    if not first:
        note["old_state"] = change["old_state"]
    if ch.scid:
        note["short_channel_id"] = ch.scid
    return note


def can_add_htlc(state: str) -> bool:
    """lightningd's channel_state_can_add_htlc."""
    return state in ("CHANNELD_NORMAL", "CHANNELD_AWAITING_SPLICE")


# -- lightningd's commitment fee model (lightningd/peer_control.c, common/initial_commit_tx.h) -
# The feerate of a channel never changes in the fake (no update_fee): anchor channels use the
# unilateral_anchor_close feerate, others the feerate fundchannel_start was given (lightningd
# does the same at opening). Spendable and receivable then follow lightningd's formulas exactly:
# the opener pays the commitment fee, with the "fee spike buffer" (marginal feerate, one extra
# HTLC) and, for anchor channels, two 330-sat anchors.
ANCHOR_SAT = 330


def marginal_feerate(feerate: int) -> int:
    """common/fee_states.c marginal_feerate: the fee spike buffer's feerate."""
    lo, hi = 253, 45000
    feerate = max(feerate, lo)
    if feerate > hi:
        return int(feerate * 1.1)
    proportion = 1.0 - (feerate - lo) / (hi - lo) * 0.9
    return int(feerate + proportion * feerate)


def commit_weight(untrimmed_htlcs: int, anchors: bool) -> int:
    return (1124 if anchors else 724) + 172 * untrimmed_htlcs


def htlc_trimmed(
    amount_msat: int, offered: bool, feerate: int, dust_sat: int, anchors: bool
) -> bool:
    """common/htlc_trim.c: below the dust limit once its second-stage fee is paid (zero for
    anchors' zero-fee HTLC transactions)."""
    fee = 0 if anchors else feerate * (663 if offered else 703) // 1000
    return amount_msat < (dust_sat + fee) * 1000


def commit_txfee_sat(ch: Channel, amount_msat: int, dust_sat: int) -> int:
    """lightningd's commit_txfee: the fee the opener's commitment would pay if an HTLC of
    `amount_msat` were added, plus the fee spike buffer's extra HTLC and the anchors. (lightningd
    counts the HTLCs the same way whichever side it asks for, and both sides' dust limits are
    546 sat in the fake.)"""
    feerate = ch.feerate_perkw
    n = 0 if htlc_trimmed(amount_msat, True, feerate, dust_sat, ch.anchors) else 1
    for h in ch.htlcs:
        # as lightningd counts them whichever side it asks for: ours at the HTLC-timeout fee,
        # theirs at the HTLC-success fee
        if not htlc_trimmed(h.amount_msat, h.direction == "out", feerate, dust_sat, ch.anchors):
            n += 1
    fee = marginal_feerate(feerate) * commit_weight(n + 1, ch.anchors) // 1000
    return fee + (2 * ANCHOR_SAT if ch.anchors else 0)


def untrimmed_htlcs(ch: Channel, extra_msat: int | None, dust_sat: int) -> int:
    """The HTLCs of the channel (plus one of `extra_msat` we would offer) not trimmed."""
    n = 0
    amounts = [(h.amount_msat, h.direction == "out") for h in ch.htlcs]
    if extra_msat is not None:
        amounts.append((extra_msat, True))
    for amount, offered in amounts:
        if not htlc_trimmed(amount, offered, ch.feerate_perkw, dust_sat, ch.anchors):
            n += 1
    return n


def spendable_msat(ch: Channel, dust_sat: int) -> int:
    """lightningd's channel_amount_spendable."""
    spendable = ch.our_msat - ch.our_reserve_sat * 1000
    spendable -= sum(h.amount_msat for h in ch.htlcs if h.direction == "out")
    if spendable < 0:
        return 0
    if ch.opener == "local":
        spendable -= commit_txfee_sat(ch, spendable, dust_sat) * 1000
    return max(0, spendable)


def receivable_msat(ch: Channel, dust_sat: int) -> int:
    """lightningd's channel_amount_receivable."""
    receivable = ch.total_msat - ch.our_msat - ch.their_reserve_sat * 1000
    receivable -= sum(h.amount_msat for h in ch.htlcs if h.direction == "in")
    if receivable < 0:
        return 0
    if ch.opener == "remote":
        receivable -= commit_txfee_sat(ch, receivable, dust_sat) * 1000
    return max(0, receivable)


def last_tx_fee_msat(ch: Channel, dust_sat: int) -> int:
    """The fee of our current commitment transaction (no spike buffer, no anchors)."""
    n = untrimmed_htlcs(ch, None, dust_sat)
    return ch.feerate_perkw * commit_weight(n, ch.anchors) // 1000 * 1000


# -- datastore --------------------------------------------------------------------------------


def _utf8(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


class Datastore:
    """lightningd's datastore: hierarchical keys, a value only at leaves, a generation per
    entry. Persisted to a JSON file after every change (it survives plugin restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.entries: dict[tuple[str, ...], tuple[bytes, int]] = {}
        if path.is_file():
            for e in json.loads(path.read_text()):
                self.entries[tuple(e["key"])] = (bytes.fromhex(e["hex"]), int(e["generation"]))

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = [
            {"key": list(k), "hex": v.hex(), "generation": g}
            for k, (v, g) in sorted(self.entries.items())
        ]
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    @staticmethod
    def _entry_json(key: tuple[str, ...], data: bytes, generation: int) -> dict[str, Any]:
        out: dict[str, Any] = {"key": list(key), "generation": generation, "hex": data.hex()}
        text = _utf8(data)
        if text is not None:
            out["string"] = text
        return out

    @staticmethod
    def normalize_key(key: Any) -> tuple[str, ...]:
        if isinstance(key, str):
            return (key,)
        if isinstance(key, list) and key and all(isinstance(k, str) for k in key):
            return tuple(key)
        raise RpcFail(JSONRPC2_INVALID_PARAMS, "key: should be a string or array of strings")

    def put(
        self, key: tuple[str, ...], data: bytes, mode: str, generation: int | None
    ) -> dict[str, Any]:
        if generation is not None and mode not in ("must-replace", "must-append"):
            raise RpcFail(
                JSONRPC2_INVALID_PARAMS,
                "generation only valid with must-replace or must-append",
            )
        with self.lock:
            for i in range(1, len(key)):
                if key[:i] in self.entries:
                    raise RpcFail(
                        DATASTORE_UPDATE_NO_CHILDREN, f"Parent key {list(key[:i])} exists"
                    )
            if any(len(k) > len(key) and k[: len(key)] == key for k in self.entries):
                raise RpcFail(DATASTORE_UPDATE_HAS_CHILDREN, "Key has children already")
            old = self.entries.get(key)
            if old is not None and mode == "must-create":
                raise RpcFail(DATASTORE_UPDATE_ALREADY_EXISTS, "Key already exists")
            if old is None and mode in ("must-replace", "must-append"):
                raise RpcFail(DATASTORE_UPDATE_DOES_NOT_EXIST, "Key does not exist")
            if old is not None and generation is not None and old[1] != generation:
                raise RpcFail(DATASTORE_UPDATE_WRONG_GENERATION, "generation is different")
            if old is not None and mode in ("must-append", "create-or-append"):
                data = old[0] + data
            gen = 0 if old is None else old[1] + 1
            self.entries[key] = (data, gen)
            self._save()
            return self._entry_json(key, data, gen)

    def delete(self, key: tuple[str, ...], generation: int | None) -> dict[str, Any]:
        with self.lock:
            old = self.entries.get(key)
            if old is None:
                raise RpcFail(DATASTORE_DEL_DOES_NOT_EXIST, "Key does not exist")
            if generation is not None and old[1] != generation:
                raise RpcFail(DATASTORE_DEL_WRONG_GENERATION, "generation is different")
            del self.entries[key]
            self._save()
            return self._entry_json(key, *old)

    def list(self, key: tuple[str, ...] | None) -> list[dict[str, Any]]:
        """The entry at `key` if it is a leaf, else its immediate children (root's if None):
        a child that is a leaf comes with its value, an inner one with its key only."""
        prefix = key or ()
        with self.lock:
            if key and key in self.entries:
                return [self._entry_json(key, *self.entries[key])]
            seen: dict[tuple[str, ...], dict[str, Any]] = {}
            for k in sorted(self.entries):
                if len(k) <= len(prefix) or k[: len(prefix)] != prefix:
                    continue
                child = k[: len(prefix) + 1]
                if child in seen:
                    continue
                if child in self.entries:
                    seen[child] = self._entry_json(child, *self.entries[child])
                else:
                    seen[child] = {"key": list(child)}
            return list(seen.values())
