"""The store of factory records: one versioned JSON record per factory in lightningd's datastore.

Owns: the records in memory, written through to the datastore before anything that depends on them
is sent. Two writers, each owning its fields: the roles (worker thread, `persist`) own everything
but `CHAIN_FIELDS`, which only the on-chain duties (chain thread, `update_chain`) write. Each write
takes the stored record under one lock and keeps the other writer's fields, so neither undoes the
other's last write. May call: lightningd's `listdatastore` and `datastore`.
Also the small questions every role asks of a record (its topology, whether it is live).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any

from ...engine import store
from ...engine.errors import StoreError, SuperscalarError
from ...engine.tree import ClientSlot, Factory, Topology
from ...engine.tx import Tx
from .runtime import Rpc

log = logging.getLogger("superscalar")

DATASTORE_ROOT = ["superscalar", "factories"]
QUARANTINE_ROOT = ["superscalar", "quarantine"]
PRUNE_AFTER = 144  # blocks an aborted, never-signed factory stays visible in factory-status
# Funded (LSP) or holding a signed path (client): guarded, watched, exitable.
LIVE = (store.LspState.FUNDED, store.ClientState.READY, store.ClientState.FUNDED)
# Written by the on-chain duties only (where our txs confirmed, the exit, the LSP's sweeps).
CHAIN_FIELDS = ("confirmed", "exit", "sweeps")


COMPROMISED = "compromised: "  # error prefix of a factory whose funding output is not as signed


def is_compromised(record: store.Record) -> bool:
    return (record.error or "").startswith(COMPROMISED)


def held_updates(record: store.ClientRecord) -> list[Any]:
    """Our DW updates the LSP may still publish: our partial signature of the moved node left,
    and our stored path has not moved that node past it since (`ClientUpdate`s)."""
    states = {e.node: e.state for e in record.path}
    return [
        u
        for u in (record.update, *record.superseded)
        if u is not None and u.signed and states.get(u.node, -1) < u.state
    ]


def topology(record: store.Record) -> Topology:
    """The factory's shape as signed (a signed client's from its header): exits, status, guards
    and the EWT all act on exactly what was signed."""
    return store.topology_of(record)


def factory_of(record: store.LspRecord) -> Factory:
    """The LSP's whole factory (keys, scripts, amounts) rebuilt from its record."""
    slots = [
        ClientSlot(
            bytes.fromhex(c.pubkey or ""), bytes.fromhex(c.channel_script or ""), c.channel_sat
        )
        for c in record.clients
    ]
    f = Factory.create(
        record.params, bytes.fromhex(record.lsp_pubkey), slots, record.timeout_height
    )
    return dataclasses.replace(f, stocks=record.stocks) if record.stocks else f


def txid_of(raw_hex: str) -> str:
    return Tx.deserialize(bytes.fromhex(raw_hex)).txid


def check(record: store.Record) -> None:
    """What every role later assumes of a stored record; raises naming the first problem."""
    topo = topology(record)  # n >= 1 and a valid shape
    if isinstance(record, store.ClientRecord):
        if not 0 <= record.client_index < record.n_clients:
            raise StoreError(
                f"client_index {record.client_index} outside 0..{record.n_clients - 1}"
            )
        raws = [e.raw for e in record.path]
        nodes = [e.node for e in record.path]
        if record.path and nodes != list(topo.client_path(record.client_index)):
            raise StoreError(f"path nodes {nodes} are not client {record.client_index}'s path")
    else:
        raws = [e.raw for e in record.tree] + [raw for _, raw in record.sweeps]
        if any(e.node >= len(topo.nodes) for e in record.tree):
            raise StoreError("tree entry for a node outside the topology")
    for raw in raws:
        txid_of(raw)  # a transaction, or WireError/ValueError


class Records:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc
        self._records: dict[str, store.Record] = {}
        self._lock = threading.Lock()  # one read-modify-write at a time, datastore included
        self._unsigned_since: dict[str, int] = {}  # instance -> height it was seen aborted
        self.height = 0  # the last block `prune` saw (set by the node's height at start-up)

    def load(self) -> list[store.Record]:
        """Read every record from the datastore. One that cannot be read or makes no sense is
        moved to the quarantine (one log line), and the others are served."""
        res = self._rpc.call("listdatastore", {"key": DATASTORE_ROOT})
        for entry in res.get("datastore", []):
            text = entry.get("string")
            if text is None:
                continue
            key = [str(k) for k in entry.get("key", [])]
            try:
                record = store.from_json(json.loads(text))
                check(record)
            except (SuperscalarError, ValueError, KeyError, TypeError, IndexError) as e:
                self._quarantine(key, text, e)
                continue
            self._records[record.instance_id] = record
            self._note_unsigned(record)
        return self.all()

    def _quarantine(self, key: list[str], text: str, e: Exception) -> None:
        name = key[-1] if key else "?"
        try:
            self._rpc.call(
                "datastore",
                {"key": [*QUARANTINE_ROOT, name], "string": text, "mode": "create-or-replace"},
            )
            self._rpc.call("deldatastore", {"key": key})
            where = "/".join([*QUARANTINE_ROOT, name])
        except Exception as moved:  # still skipped: serving the others matters more
            where = f"nowhere ({moved})"
        log.warning("quarantined factory record %s (moved to %s): %s", name, where, e)

    def persist(self, record: store.Record) -> None:
        """A role's write (worker thread), before any message that depends on it is sent; the
        chain's fields are kept as stored."""
        with self._lock:
            stored = self._records.get(record.instance_id)
            if stored is not None:
                record = record.replace(
                    **{f: getattr(stored, f) for f in CHAIN_FIELDS if hasattr(stored, f)}
                )
            self._write(record)
        self._note_unsigned(record)

    def _note_unsigned(self, record: store.Record) -> None:
        """Aborted before anything was signed: nothing to watch, forget it after a while."""
        signed = record.tree if isinstance(record, store.LspRecord) else record.path
        aborted = record.state in (store.LspState.ABORTED, store.ClientState.ABORTED)
        if aborted and not signed:
            self._unsigned_since.setdefault(record.instance_id, self.height)

    def prune(self, height: int) -> None:
        """Delete the records of factories aborted before signing, PRUNE_AFTER blocks on."""
        self.height = height
        for instance, since in list(self._unsigned_since.items()):
            if height < since + PRUNE_AFTER:
                continue
            with self._lock:  # never between another thread's read and write of it
                try:
                    self._rpc.call("deldatastore", {"key": [*DATASTORE_ROOT, instance]})
                except Exception as e:
                    log.info("could not delete factory record %s: %s", instance[:16], e)
                    continue
                self._records.pop(instance, None)
            del self._unsigned_since[instance]
            log.info("forgot factory %s: aborted before anything was signed", instance[:16])

    def update_chain(self, instance: str, **fields: Any) -> store.Record:
        """The on-chain duties' write (chain thread): only `CHAIN_FIELDS`, on the latest record."""
        if not set(fields) <= set(CHAIN_FIELDS):
            raise ValueError(f"not an on-chain field: {sorted(set(fields) - set(CHAIN_FIELDS))}")
        with self._lock:
            stored = self._records.get(instance)
            if stored is None:
                raise KeyError(f"no factory record {instance}")
            record = stored.replace(**fields)
            self._write(record)
            return record

    def _write(self, record: store.Record) -> None:
        self._rpc.call(
            "datastore",
            {
                "key": [*DATASTORE_ROOT, record.instance_id],
                "string": json.dumps(store.to_json(record), sort_keys=True),
                "mode": "create-or-replace",
            },
        )
        self._records[record.instance_id] = record

    def get(self, instance: str) -> store.Record | None:
        return self._records.get(instance)

    def all(self) -> list[store.Record]:
        return list(self._records.values())

    def __contains__(self, instance: str) -> bool:
        return instance in self._records

    def __len__(self) -> int:
        return len(self._records)
