"""Persistent records of factories: versioned JSON, validated on load, never pickle.

The plugin keeps them in lightningd's datastore (so a database backup carries them); this module
only turns records into JSON-able dicts and back, refusing anything malformed or of an unknown
version with `StoreError`. Secret nonces are never part of a record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import InvalidParameter, StoreError
from .tree import FactoryParams

RECORD_VERSION = 1


class LspState(StrEnum):
    PROPOSING = "proposing"  # waiting for every client's ACCEPT
    OPENING = "opening"  # inputs reserved, channels being opened
    SIGNING = "signing"  # MuSig2 ceremony in flight
    COMPLETING = "completing"  # every client stored its path; channels completed, funding next
    FUNDED = "funded"  # funding broadcast
    ABORTED = "aborted"


class ClientState(StrEnum):
    ACCEPTED = "accepted"
    SIGNING = "signing"
    READY = "ready"  # signed exit path stored
    FUNDED = "funded"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ClientEntry:
    """The LSP's view of one client slot."""

    node_id: str
    channel_sat: int
    pubkey: str | None = None
    channel_script: str | None = None
    channel_id: str | None = None
    stored: bool = False


@dataclass(frozen=True)
class PathEntry:
    node: int
    state: int
    raw: str  # signed tx hex
    spent_amount: int
    spent_script: str


@dataclass(frozen=True)
class ExitState:
    """A unilateral exit in progress (or done): what we broadcast, bumped and closed, and when."""

    reason: str
    started_height: int
    clients: tuple[int, ...]  # whose paths are being published
    broadcast: tuple[tuple[str, int], ...] = ()  # (txid, tip height at first broadcast)
    bumped: tuple[str, ...] = ()
    closed: tuple[str, ...] = ()  # channel ids handed to lightningd's `close`
    # Per bumped txid, our latest CPFP child: the package rate it aimed at (sat/kvB) and its fee
    # (sat); a later child replaces it, so the exit's cost is the sum of the latest fees.
    bump_rates: tuple[tuple[str, int], ...] = ()
    bump_fees: tuple[tuple[str, int], ...] = ()
    done: bool = False


@dataclass(frozen=True)
class LspRecord:
    instance_id: str
    state: LspState
    params: FactoryParams
    timeout_height: int
    lsp_pubkey: str
    clients: tuple[ClientEntry, ...]
    created_height: int
    funding_psbt: str | None = None
    funding_txid: str | None = None
    funding_vout: int | None = None
    funding_amount: int | None = None
    error: str | None = None
    tree: tuple[PathEntry, ...] = ()  # every signed tree tx (what the LSP needs to exit or sweep)
    confirmed: tuple[tuple[str, int], ...] = ()  # (txid, block height) of our txs seen on chain
    exit: ExitState | None = None
    sweeps: tuple[tuple[str, str], ...] = ()  # ("txid:vout" swept, raw sweep tx hex)

    def replace(self, **changes: Any) -> LspRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClientRecord:
    instance_id: str
    lsp_node_id: str
    state: ClientState
    client_index: int
    n_clients: int
    params: FactoryParams
    timeout_height: int
    lsp_pubkey: str
    pubkey: str
    channel_sat: int
    early_warning_time: int
    header: str | None = None  # the factory header (wire) of the signed path, hex
    path: tuple[PathEntry, ...] = field(default=())
    funding_txid: str | None = None
    error: str | None = None
    confirmed: tuple[tuple[str, int], ...] = ()
    exit: ExitState | None = None

    def replace(self, **changes: Any) -> ClientRecord:
        return dataclasses.replace(self, **changes)


Record = LspRecord | ClientRecord


def to_json(record: Record) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["params"]["arity"] = list(record.params.arity)
    data["version"] = RECORD_VERSION
    data["kind"] = "lsp" if isinstance(record, LspRecord) else "client"
    normalized: dict[str, Any] = json.loads(json.dumps(data))  # tuples -> lists, as stored
    return normalized


# --- validation on load -------------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return None
        raise StoreError(f"record field {key!r} is missing")
    value = d[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise StoreError(f"record field {key!r} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise StoreError(f"record field {key!r} must be {kind.__name__}")
    return value


def _hex(d: dict[str, Any], key: str, length: int | None = None, optional: bool = False) -> Any:
    value = _get(d, key, str, optional)
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise StoreError(f"record field {key!r} is not hex") from e
    if length is not None and len(raw) != length:
        raise StoreError(f"record field {key!r} must be {length} bytes")
    return value


def _path(d: dict[str, Any], key: str) -> tuple[PathEntry, ...]:
    out = []
    for e in _get(d, key, list):
        if not isinstance(e, dict):
            raise StoreError(f"{key} entry must be an object")
        out.append(
            PathEntry(
                node=_get(e, "node", int),
                state=_get(e, "state", int),
                raw=_hex(e, "raw"),
                spent_amount=_get(e, "spent_amount", int),
                spent_script=_hex(e, "spent_script"),
            )
        )
    return tuple(out)


def _pairs(d: dict[str, Any], key: str, second: type) -> tuple[Any, ...]:
    out = []
    for item in _get(d, key, list):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], second)
            or isinstance(item[1], bool)
        ):
            raise StoreError(f"{key} entries must be [string, {second.__name__}] pairs")
        out.append((item[0], item[1]))
    return tuple(out)


def _exit(d: dict[str, Any]) -> ExitState | None:
    e = d.get("exit")
    if e is None:
        return None
    if not isinstance(e, dict):
        raise StoreError("exit must be an object")
    clients = _get(e, "clients", list)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in clients):
        raise StoreError("exit.clients must be integers")
    strings = [_get(e, k, list) for k in ("bumped", "closed")]
    if not all(isinstance(x, str) for lst in strings for x in lst):
        raise StoreError("exit.bumped and exit.closed must be strings")
    return ExitState(
        reason=_get(e, "reason", str),
        started_height=_get(e, "started_height", int),
        clients=tuple(clients),
        broadcast=_pairs(e, "broadcast", int),
        bumped=tuple(strings[0]),
        closed=tuple(strings[1]),
        done=bool(_get(e, "done", bool)),
        # absent from records written before bumps were repeated
        bump_rates=_pairs(e, "bump_rates", int) if "bump_rates" in e else (),
        bump_fees=_pairs(e, "bump_fees", int) if "bump_fees" in e else (),
    )


def _params(d: dict[str, Any]) -> FactoryParams:
    raw = _get(d, "params", dict)
    names = {f.name for f in dataclasses.fields(FactoryParams)}
    if set(raw) != names:
        raise StoreError(f"params fields differ: {sorted(set(raw) ^ names)}")
    values = dict(raw)
    arity = values["arity"]
    if not isinstance(arity, list) or not all(isinstance(a, int) for a in arity):
        raise StoreError("params.arity must be a list of integers")
    values["arity"] = tuple(arity)
    for name, v in values.items():
        if name != "arity" and (not isinstance(v, int) or isinstance(v, bool)):
            raise StoreError(f"params.{name} must be an integer")
    params = FactoryParams(**values)
    try:
        params.validate()
    except InvalidParameter as e:
        raise StoreError(f"stored params invalid: {e}") from e
    return params


def from_json(data: Any) -> Record:
    if not isinstance(data, dict):
        raise StoreError("record must be a JSON object")
    version = data.get("version")
    if version != RECORD_VERSION:
        raise StoreError(f"unknown record version {version!r}")
    kind = data.get("kind")
    try:
        if kind == "lsp":
            return _lsp_record(data)
        if kind == "client":
            return _client_record(data)
    except ValueError as e:  # an unknown enum value
        raise StoreError(f"record has an invalid value: {e}") from e
    raise StoreError(f"unknown record kind {kind!r}")


def _client_entry(c: Any) -> ClientEntry:
    if not isinstance(c, dict):
        raise StoreError("client entry must be an object")
    return ClientEntry(
        node_id=_hex(c, "node_id", 33),
        channel_sat=_get(c, "channel_sat", int),
        pubkey=_hex(c, "pubkey", 33, optional=True),
        channel_script=_hex(c, "channel_script", optional=True),
        channel_id=_hex(c, "channel_id", 32, optional=True),
        stored=bool(_get(c, "stored", bool)),
    )


def _lsp_record(data: dict[str, Any]) -> LspRecord:
    clients = tuple(_client_entry(c) for c in _get(data, "clients", list))
    return LspRecord(
        instance_id=_hex(data, "instance_id", 32),
        state=LspState(_get(data, "state", str)),
        params=_params(data),
        timeout_height=_get(data, "timeout_height", int),
        lsp_pubkey=_hex(data, "lsp_pubkey", 33),
        clients=clients,
        created_height=_get(data, "created_height", int),
        funding_psbt=_get(data, "funding_psbt", str, optional=True),
        funding_txid=_hex(data, "funding_txid", 32, optional=True),
        funding_vout=_get(data, "funding_vout", int, optional=True),
        funding_amount=_get(data, "funding_amount", int, optional=True),
        error=_get(data, "error", str, optional=True),
        tree=_path(data, "tree"),
        confirmed=_pairs(data, "confirmed", int),
        exit=_exit(data),
        sweeps=_pairs(data, "sweeps", str),
    )


def _client_record(data: dict[str, Any]) -> ClientRecord:
    return ClientRecord(
        instance_id=_hex(data, "instance_id", 32),
        lsp_node_id=_hex(data, "lsp_node_id", 33),
        state=ClientState(_get(data, "state", str)),
        client_index=_get(data, "client_index", int),
        n_clients=_get(data, "n_clients", int),
        params=_params(data),
        timeout_height=_get(data, "timeout_height", int),
        lsp_pubkey=_hex(data, "lsp_pubkey", 33),
        pubkey=_hex(data, "pubkey", 33),
        channel_sat=_get(data, "channel_sat", int),
        early_warning_time=_get(data, "early_warning_time", int),
        header=_hex(data, "header", optional=True),
        path=_path(data, "path"),
        funding_txid=_hex(data, "funding_txid", 32, optional=True),
        error=_get(data, "error", str, optional=True),
        confirmed=_pairs(data, "confirmed", int),
        exit=_exit(data),
    )
