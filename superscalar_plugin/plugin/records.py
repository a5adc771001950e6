"""The store of factory records: one versioned JSON record per factory in lightningd's datastore.

Owns: the records in memory, written through to the datastore before anything that depends on them
is sent. Two writers, each owning its fields: the roles (worker thread, `persist`) own everything
but `CHAIN_FIELDS`, which only the on-chain duties (chain thread, `update_chain`) write. Each write
takes the stored record under one lock and keeps the other writer's fields, so neither undoes the
other's last write. May call: lightningd's `listdatastore` and `datastore`.
Also the small questions every role asks of a record (its topology, whether it is live).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from ..engine import store
from ..engine.errors import StoreError
from ..engine.tree import Topology
from ..engine.tx import Tx
from .runtime import Rpc

log = logging.getLogger("superscalar")

DATASTORE_ROOT = ["superscalar", "factories"]
# Funded (LSP) or holding a signed path (client): guarded, watched, exitable.
LIVE = (store.LspState.FUNDED, store.ClientState.READY, store.ClientState.FUNDED)
# Written by the on-chain duties only (where our txs confirmed, the exit, the LSP's sweeps).
CHAIN_FIELDS = ("confirmed", "exit", "sweeps")


def topology(record: store.Record) -> Topology:
    """The factory's shape as signed (a signed client's from its header): exits, status, guards
    and the EWT all act on exactly what was signed."""
    return store.topology_of(record)


def txid_of(raw_hex: str) -> str:
    return Tx.deserialize(bytes.fromhex(raw_hex)).txid


class Records:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc
        self._records: dict[str, store.Record] = {}
        self._lock = threading.Lock()  # one read-modify-write at a time, datastore included

    def load(self) -> list[store.Record]:
        """Read every record from the datastore (an unreadable one is logged and skipped)."""
        res = self._rpc.call("listdatastore", {"key": DATASTORE_ROOT})
        for entry in res.get("datastore", []):
            text = entry.get("string")
            if text is None:
                continue
            try:
                record = store.from_json(json.loads(text))
            except (StoreError, ValueError) as e:
                log.error("ignoring unreadable factory record %s: %s", entry.get("key"), e)
                continue
            self._records[record.instance_id] = record
        return self.all()

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
