"""Plain state of a fake node: peers, channels, the datastore (persisted as JSON), amounts."""

from __future__ import annotations

import json
import os
import threading
import time
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
    feerate_perkw: int
    our_reserve_sat: int
    their_reserve_sat: int
    our_to_self_delay: int
    their_to_self_delay: int
    state: str = "OPENINGD"
    channel_id: str | None = None
    funding_txid: str | None = None
    funding_outnum: int | None = None
    alias_local: str | None = None
    alias_remote: str | None = None
    scid: str | None = None
    close_to: str | None = None
    withheld: bool = False
    created: float = field(default_factory=time.time)
    state_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_msat(self) -> int:
        return self.amount_sat * 1000

    @property
    def to_us_msat(self) -> int:
        if self.opener == "local":
            return self.total_msat - self.push_msat
        return self.push_msat

    @property
    def committed(self) -> bool:
        return self.state != "OPENINGD"

    def set_state(self, new: str, cause: str, message: str) -> dict[str, Any]:
        """Change state; returns the change record (the channel_state_changed payload core)."""
        change = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "old_state": self.state,
            "new_state": new,
            "cause": cause,
            "message": message,
        }
        self.state_changes.append(change)
        self.state = new
        return change


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
                    raise RpcFail(DATASTORE_UPDATE_NO_CHILDREN,
                                  f"Parent key {list(key[:i])} exists")
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
