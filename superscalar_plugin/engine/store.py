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

from . import wire
from .errors import InvalidParameter, InvalidRecord, StoreError, SuperscalarError
from .jsonfields import get as _get, hexfield as _hex, pairs as _pairs
from .sale_store import (
    JitChannel,
    Order,
    SaleEntry,
    jit_from,
    orders_from,
    sales_from,
    strings_from,
    validate_sales,
)
from .taproot import DUST_P2WSH
from .tree import MAX_CLIENTS, FactoryParams, Topology, check_shape
from .tx import Tx
from .update_store import (
    ClientUpdate,
    LspUpdate,
    PathEntry as PathEntry,
    client_update_from,
    int_pairs,
    lsp_update_from,
    path_from as _path,
    validate_client_update,
    validate_lsp_update,
    validate_stocks,
)

RECORD_VERSION = 1


class LspState(StrEnum):
    PROPOSING = "proposing"  # waiting for every client's ACCEPT
    OPENING = "opening"  # inputs reserved, channels being opened
    SIGNING = "signing"  # MuSig2 ceremony in flight
    COMPLETING = "completing"  # every client stored its path; channels completed, funding next
    FUNDED = "funded"  # funding broadcast
    CLOSED = "closed"  # every client handed over; the funding output spent by key path (confirmed)
    ABORTED = "aborted"


class ClientState(StrEnum):
    ACCEPTED = "accepted"
    SIGNING = "signing"
    READY = "ready"  # signed exit path stored
    FUNDED = "funded"
    HANDED_OVER = "handed_over"  # balance moved out, channel retired, key given to the LSP
    ABORTED = "aborted"


class WindDown(StrEnum):
    """How an LSP's factory ends before its timeout (none: it runs until T)."""

    MIGRATE = "migrate"  # clients move into successor factories (the ladder)
    CLOSE = "close"  # clients move into ordinary on-chain channels (the LSP stops)


@dataclass(frozen=True)
class ClientEntry:
    """The LSP's view of one client slot."""

    node_id: str
    channel_sat: int
    pubkey: str | None = None
    channel_script: str | None = None
    channel_id: str | None = None
    stored: bool = False
    # The hand-over (wind-down): the channel its balance moves to, its key once it gave it, and
    # why it last refused (shown in factory-status).
    moved_to: str | None = None
    handed_key: str | None = None
    refusal: str | None = None


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
    wind_down: WindDown | None = None
    successors: tuple[str, ...] = ()  # factories created for this one's clients to move into
    handover_tx: str | None = None  # raw key-path spend of the funding output, every key held
    # Liquidity sales: every leaf's sales in order, the paid orders, the on-chain fallbacks.
    sales: tuple[SaleEntry, ...] = ()
    orders: tuple[Order, ...] = ()
    jit: tuple[JitChannel, ...] = ()
    # DW updates: the stock per leaf in the current state (empty: `params.stock_sat` each), the
    # update running, and the channels updates replaced (they take no HTLC, and are closed).
    stocks: tuple[int, ...] = ()
    update: LspUpdate | None = None
    retired: tuple[str, ...] = ()
    # (node, state) of a moved node whose ceremony started and never completed: clients may have
    # signed it, so the next update of that node moves past it.
    spent: tuple[tuple[int, int], ...] = ()
    # ("<session>:<moved node>", client) of a signed update that client never acknowledged: the
    # moved node's signature is sent again at each block (the update itself is over).
    unacked: tuple[tuple[str, int], ...] = ()
    # Stock outputs (by the txid that made them) whose sale's burn signature we sent (persisted
    # first): its co-signers keep that sale as a promise and sign no other sale of that stock.
    # Once it completes the chain moves past it; if it never does, that leaf sells through the
    # on-chain fallback from then on.
    burn_sent: tuple[str, ...] = ()

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
    moving_to: str | None = None  # channel id our balance is moving to (the LSP asked)
    # Our leaf's stock chain as we co-signed it (recorded before our sale signature left), and
    # the ordinary channels the LSP opened for us instead of a sale.
    sales: tuple[SaleEntry, ...] = ()
    jit_channels: tuple[str, ...] = ()
    # The channel id of our leaf's channel, once our own node's database showed it funded at our
    # leaf output with exactly that output's 2-of-2 (persisted before our first nonce). None: a
    # record from before the check, or one signed trusting the LSP for the script.
    channel_bound: str | None = None
    # A DW update we agreed to (our old channels frozen until it is stored or abandoned), and the
    # channels updates replaced (closed; they take no HTLC).
    update: ClientUpdate | None = None
    retired: tuple[str, ...] = ()
    # Updates whose moved node we signed but never got back (a later update replaced them): the
    # LSP may publish one, so we watch for them and would adopt one from the chain.
    superseded: tuple[ClientUpdate, ...] = ()
    # Our swaps (payment hashes) to settle if lightningd replays their HTLCs: updates stored.
    swaps_settled: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> ClientRecord:
        return dataclasses.replace(self, **changes)

    def signed_header(self) -> wire.FactoryHeader | None:
        """The header of the factory this client signed (None before signing): the one source
        of truth for its shape, keys and timeout; `header.factory_keys()` rebuilds the factory.
        `from_json` has checked that it agrees with this record's fields."""
        return (
            None
            if self.header is None
            else wire.FactoryHeader.from_bytes(bytes.fromhex(self.header))
        )


Record = LspRecord | ClientRecord


def topology_of(record: Record) -> Topology:
    """The factory's shape as signed: a signed client's from its header (the one source of truth),
    anyone else's from the record. Exits, status and the EWT should be rebuilt from this."""
    if isinstance(record, ClientRecord):
        header = record.signed_header()
        if header is not None:
            return Topology.build(len(header.client_pubkeys), header.params)
        return Topology.build(record.n_clients, record.params)
    return Topology.build(len(record.clients), record.params)


def to_json(record: Record) -> dict[str, Any]:
    """The record as stored: JSON values only (tuples become lists, enums their values)."""
    # json walks the values itself (`dataclasses.asdict` deep-copies every field first: most of
    # a client's record write at creation).
    data: dict[str, Any] = json.loads(json.dumps(record, default=_fields))
    data["version"] = RECORD_VERSION
    data["kind"] = "lsp" if isinstance(record, LspRecord) else "client"
    return data


def _fields(value: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not a record field")


# --- validation on load -------------------------------------------------------------------------


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
    raw = dict(_get(d, "params", dict))
    # Records written before `state_over_leaves` existed were signed on trees without it.
    raw.setdefault("state_over_leaves", False)
    if not isinstance(raw["state_over_leaves"], bool):
        raise StoreError("params.state_over_leaves must be true or false")
    names = {f.name for f in dataclasses.fields(FactoryParams)}
    if set(raw) != names:
        raise StoreError(f"params fields differ: {sorted(set(raw) ^ names)}")
    values = dict(raw)
    arity = values["arity"]
    if not isinstance(arity, list) or not all(isinstance(a, int) for a in arity):
        raise StoreError("params.arity must be a list of integers")
    values["arity"] = tuple(arity)
    for name, v in values.items():
        if name not in ("arity", "state_over_leaves") and (
            not isinstance(v, int) or isinstance(v, bool)
        ):
            raise StoreError(f"params.{name} must be an integer")
    params = FactoryParams(**values)
    try:
        params.validate()
    except InvalidParameter as e:
        raise StoreError(f"stored params invalid: {e}") from e
    return params


def from_json(data: Any) -> Record:
    """A record from its JSON, checked in form (types, hex, versions) and in content
    (`validate`): anything wrong raises `StoreError`, `InvalidRecord` naming the field."""
    record = _from_json(data)
    validate(record)
    return record


def _from_json(data: Any) -> Record:
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
        moved_to=_hex(c, "moved_to", 32, optional=True),
        handed_key=_hex(c, "handed_key", 32, optional=True),
        refusal=_get(c, "refusal", str, optional=True),
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
        wind_down=_wind_down(data),
        successors=tuple(_strings(data, "successors", 32)),
        handover_tx=_hex(data, "handover_tx", optional=True),
        sales=sales_from(data),
        orders=orders_from(data),
        jit=jit_from(data),
        stocks=tuple(_ints_list(data, "stocks")),
        update=lsp_update_from(data),
        retired=tuple(_strings(data, "retired", 32)),
        spent=int_pairs(data, "spent"),
        unacked=_pairs(data, "unacked", int) if "unacked" in data else (),
        burn_sent=tuple(_strings(data, "burn_sent", 32)),
    )


def _wind_down(data: dict[str, Any]) -> WindDown | None:
    value = _get(data, "wind_down", str, optional=True)
    return None if value is None else WindDown(value)


def _strings(data: dict[str, Any], key: str, length: int) -> list[str]:
    """A list of hex strings of `length` bytes (absent: empty, as in records written before)."""
    values = data.get(key) or []
    if not isinstance(values, list):
        raise StoreError(f"record field {key!r} must be a list")
    return [_hex({key: v}, key, length) for v in values]


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
        moving_to=_hex(data, "moving_to", 32, optional=True),
        sales=sales_from(data),
        jit_channels=strings_from(data, "jit_channels", 32),
        channel_bound=_hex(data, "channel_bound", 32, optional=True),
        update=client_update_from(data),
        retired=tuple(_strings(data, "retired", 32)),
        swaps_settled=tuple(_strings(data, "swaps_settled", 32)),
        superseded=tuple(
            u
            for d in (data.get("superseded") or [])
            if isinstance(d, dict) and (u := client_update_from({"update": d})) is not None
        ),
    )


def _ints_list(data: dict[str, Any], key: str) -> list[int]:
    values = data.get(key) or []
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise StoreError(f"record field {key!r} must be a list of integers")
    return values


# --- content: a record that parses must also make sense ------------------------------------------


def _expect(ok: bool, field_name: str, detail: str) -> None:
    if not ok:
        raise InvalidRecord(field_name, detail)


def validate(record: Record) -> None:
    """Refuse a record whose content is wrong (n_clients=0, an index out of range, a raw tx that is
    not one, a header that disagrees with the record, ...), naming the field; the shape's cost is
    bounded before anything is built from it (`tree.check_shape`)."""
    if isinstance(record, ClientRecord):
        _validate_client(record)
    else:
        _validate_lsp(record)


def _validate_shape(n_field: str, n: int, params: FactoryParams) -> Topology:
    _expect(1 <= n <= MAX_CLIENTS, n_field, f"{n} is not 1..{MAX_CLIENTS}")
    try:
        check_shape(n, params)
        return Topology.build(n, params)
    except InvalidParameter as e:
        raise InvalidRecord("params", str(e)) from e


def _validate_common(
    timeout_height: int, exit: ExitState | None, confirmed: tuple[tuple[str, int], ...], n: int
) -> None:
    _expect(0 < timeout_height < 500_000_000, "timeout_height", f"{timeout_height} is not a height")
    _expect(all(h >= 0 for _, h in confirmed), "confirmed", "a negative block height")
    if exit is not None:
        _expect(all(0 <= c < n for c in exit.clients), "exit.clients", f"not all in 0..{n - 1}")
        _expect(exit.started_height >= 0, "exit.started_height", "negative")


def _validate_channel_sat(field_name: str, sat: int) -> None:
    _expect(
        DUST_P2WSH <= sat <= 21_000_000 * 100_000_000,
        field_name,
        f"{sat} sat is not a channel amount (dust is {DUST_P2WSH})",
    )


def _validate_entries(name: str, entries: tuple[PathEntry, ...], topo: Topology) -> None:
    for i, e in enumerate(entries):
        where = f"{name}[{i}]"
        _expect(0 <= e.node < len(topo.nodes), f"{where}.node", f"no node {e.node} in the tree")
        _expect(
            0 <= e.state < topo.params.states_per_layer,
            f"{where}.state",
            f"{e.state} is not a DW state 0..{topo.params.states_per_layer - 1}",
        )
        _expect(e.spent_amount >= 0, f"{where}.spent_amount", "negative")
        try:
            tx = Tx.deserialize(bytes.fromhex(e.raw))
        except SuperscalarError as err:
            raise InvalidRecord(f"{where}.raw", f"not a transaction: {err}") from err
        _expect(
            len(tx.inputs) == 1 and len(tx.witnesses) == 1 and len(tx.witnesses[0]) == 1,
            f"{where}.raw",
            "not a signed one-input tree transaction",
        )


def _validate_client(r: ClientRecord) -> None:
    topo = _validate_shape("n_clients", r.n_clients, r.params)
    _expect(
        0 <= r.client_index < r.n_clients,
        "client_index",
        f"{r.client_index} not below {r.n_clients}",
    )
    _validate_channel_sat("channel_sat", r.channel_sat)
    _validate_common(r.timeout_height, r.exit, r.confirmed, r.n_clients)
    if r.header is not None:
        try:
            header = wire.FactoryHeader.from_bytes(bytes.fromhex(r.header))
        except SuperscalarError as e:
            raise InvalidRecord("header", f"not a factory header: {e}") from e
        # The signed header is the truth; the record's own fields must say the same.
        agreed: tuple[tuple[str, object, object], ...] = (
            ("n_clients", len(header.client_pubkeys), r.n_clients),
            ("client_index", header.client_index, r.client_index),
            ("params", header.params, r.params),
            ("timeout_height", header.timeout_height, r.timeout_height),
            ("lsp_pubkey", header.lsp_pubkey.hex(), r.lsp_pubkey),
            ("pubkey", header.client_pubkeys[header.client_index].hex(), r.pubkey),
        )
        for name, signed, ours in agreed:
            _expect(signed == ours, name, f"{ours} differs from the signed header's {signed}")
        if r.funding_txid is not None:
            _expect(
                r.funding_txid == header.funding_txid,
                "funding_txid",
                f"differs from the signed header's {header.funding_txid}",
            )
    _expect(
        r.early_warning_time == topo.ewt,
        "early_warning_time",
        f"{r.early_warning_time} is not the shape's {topo.ewt}",
    )
    _validate_entries("path", r.path, topo)
    _expect(
        r.channel_bound is None or r.state is not ClientState.ACCEPTED,
        "channel_bound",
        "set before the tree arrived",
    )
    if r.path:
        nodes = [e.node for e in r.path]
        expected = topo.client_path(r.client_index)
        _expect(nodes == expected, "path", f"covers nodes {nodes}, our path is {expected}")
    if r.sales:
        _expect(bool(r.path), "sales", "sales without a signed path")
        leaf = r.path[-1].node
        _expect(all(e.leaf == leaf for e in r.sales), "sales", "a sale of another leaf's stock")
    validate_sales(r.sales, topo, r.n_clients)
    validate_client_update(r.update, topo)
    for u in r.superseded:
        validate_client_update(u, topo)
    if r.state in (ClientState.READY, ClientState.FUNDED, ClientState.HANDED_OVER):
        _expect(r.header is not None, "header", f"missing in a {r.state.value} record")
        _expect(bool(r.path), "path", f"missing in a {r.state.value} record")


def _validate_lsp(r: LspRecord) -> None:
    topo = _validate_shape("clients", len(r.clients), r.params)
    for i, c in enumerate(r.clients):
        _validate_channel_sat(f"clients[{i}].channel_sat", c.channel_sat)
        if c.channel_script is not None:
            _expect(
                1 <= len(c.channel_script) // 2 <= 80,
                f"clients[{i}].channel_script",
                "must be 1..80 bytes",
            )
    _validate_common(r.timeout_height, r.exit, r.confirmed, len(r.clients))
    _expect(r.created_height >= 0, "created_height", f"{r.created_height} is negative")
    if r.funding_vout is not None:
        _expect(0 <= r.funding_vout < 2**32, "funding_vout", f"{r.funding_vout} is not a vout")
    if r.funding_amount is not None:
        _expect(r.funding_amount > 0, "funding_amount", f"{r.funding_amount} is not positive")
    _validate_entries("tree", r.tree, topo)
    validate_sales(r.sales, topo, len(r.clients))
    validate_stocks(r.stocks, topo)
    validate_lsp_update(r.update, topo)
    n = len(r.clients)
    _expect(all(0 <= o.client < n for o in r.orders), "orders", "a client out of range")
    _expect(all(0 <= j.client < n for j in r.jit), "jit", "a client out of range")
    if r.state is LspState.CLOSED:
        _expect(r.handover_tx is not None, "handover_tx", "missing in a closed record")
    if r.handover_tx is not None:
        _expect(
            all(c.handed_key for c in r.clients), "handover_tx", "sent without every client's key"
        )
        try:
            Tx.deserialize(bytes.fromhex(r.handover_tx))
        except SuperscalarError as err:
            raise InvalidRecord("handover_tx", f"not a transaction: {err}") from err
