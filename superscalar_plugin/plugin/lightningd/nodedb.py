"""A client's own lightningd database, read for one fact: the funding keys of one channel.

Core Lightning gives plugins no funding key of a channel (no RPC, hook or notification), but a
fundee writes them to its database (`channels.funding_pubkey_local`, `fundingkey_remote`) before
its `funding_signed` goes back to the opener. So when the tree (or a sale) arrives, the client
reads the row of the channel funded at that outpoint with the LSP, and signs nothing unless the
output is the 2-of-2 of those keys (`engine.solvency.check_channel_bound`).

How: one short read-only query per check, never a transaction held open (lightningd gives up on
a commit it cannot make within 60 s): SQLite through a `mode=ro` URI with a short busy timeout,
PostgreSQL through the same DSN with psycopg2 when it is installed (read-only session, short
timeouts). Where (`locate`, at start-up): `listconfigs` `wallet`, else the default file in the
network directory (`engine.solvency.wallet_db`). Fail closed: a database we cannot find or read,
or a row that is not what it must be, raises `SolvencyRefused` ("channel_db"), never "no channel".

Owns: the database's location (set once at start-up, read by the worker). May call: lightningd's
`listconfigs` and `getinfo` (in `locate`), the database file or server.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from ...engine.solvency import (
    BoundChannel,
    SolvencyRefused,
    Step,
    WalletDb,
    bound_from_row,
    wallet_db,
)
from .runtime import Rpc, why

log = logging.getLogger("superscalar")

BUSY_TIMEOUT = 2.0  # seconds a read waits for lightningd's write lock (it waits up to 60 s)
# A row not there yet is read again twice, a quarter second apart, before "no channel there".
ABSENT_RETRIES, ABSENT_WAIT = 2, 0.25
PG_TIMEOUT_MS = 2000

QUERY = (
    "SELECT c.full_channel_id, c.funding_pubkey_local, c.fundingkey_remote, c.funding_tx_id,"
    " c.funding_tx_outnum, c.funding_satoshi, c.state FROM channels c"
    " JOIN peers p ON c.peer_id = p.id"
    " WHERE c.funding_tx_id = {ph} AND c.funding_tx_outnum = {ph} AND p.node_id = {ph}"
)


def locate(rpc: Rpc) -> WalletDb:
    """Where this node's lightningd keeps its database (raises `SolvencyRefused` if unknown)."""
    try:
        configs = rpc.call("listconfigs").get("configs", {})
        info = rpc.call("getinfo")
    except Exception as e:
        raise SolvencyRefused(
            Step.TREE_SIGNATURE, "channel_db", f"cannot ask lightningd for its database: {why(e)}"
        ) from e
    wallet = str((configs.get("wallet") or {}).get("value_str") or "")
    # getinfo's lightning-dir is the network directory; listconfigs' may be the base directory.
    lightning_dir = str(info.get("lightning-dir") or "")
    network = str(info.get("network") or "bitcoin")
    if not lightning_dir:
        raise SolvencyRefused(
            Step.TREE_SIGNATURE, "channel_db", "lightningd did not say its lightning-dir"
        )
    return wallet_db(wallet, lightning_dir, network)


def postgres_driver() -> Any | None:
    """psycopg2 if it is installed (the plugin needs it only for a PostgreSQL node)."""
    try:
        return importlib.import_module("psycopg2")
    except ImportError:
        return None


class NodeDb:
    """Reads one channel's row from this node's own database (worker thread)."""

    def __init__(self, where: WalletDb | None = None, error: str = "") -> None:
        self.where = where
        self.error = error  # why `where` is unknown (locate failed)

    @classmethod
    def located(cls, rpc: Rpc) -> NodeDb:
        """This node's database as lightningd says (start-up); unknown if it cannot say."""
        try:
            return cls(locate(rpc))
        except SolvencyRefused as e:
            log.warning("channel script binding unavailable: %s", e)
            return cls(None, str(e))

    def usable(self) -> str | None:
        """Why channels cannot be bound on this node (None: they can)."""
        if self.where is None:
            return self.error or "this node's database is unknown"
        if self.where.kind == "postgres" and postgres_driver() is None:
            return "this node's database is PostgreSQL and psycopg2 is not installed"
        return None

    def bound_channel(self, step: Step, peer: str, txid: str, vout: int) -> BoundChannel | None:
        """Our node's channel with `peer` funded at `txid:vout` (None: it holds none there)."""
        reason = self.usable()
        if reason is not None or self.where is None:
            raise SolvencyRefused(step, "channel_db", reason or "unknown database")
        params = (bytes.fromhex(txid)[::-1], vout, bytes.fromhex(peer))
        rows: list[tuple[Any, ...]] = []
        for attempt in range(ABSENT_RETRIES + 1):
            if attempt:  # lightningd commits at the end of its loop's turn: a moment later
                time.sleep(ABSENT_WAIT)
            try:
                if self.where.kind == "sqlite3":
                    rows = _sqlite_rows(self.where.location, params)
                else:
                    rows = _postgres_rows(self.where.location, params)
            except Exception as e:
                raise SolvencyRefused(
                    step, "channel_db", f"cannot read our node's database: {why(e)}"
                ) from e
            if rows:
                break
        if len(rows) > 1:
            raise SolvencyRefused(
                step, "channel_db", f"{len(rows)} channels funded at {txid}:{vout}"
            )
        return bound_from_row(step, *rows[0]) if rows else None


def _sqlite_rows(path: str, params: tuple[bytes, int, bytes]) -> list[tuple[Any, ...]]:
    file = Path(path)
    if not file.is_file():  # mode=ro would not create one either; name the missing file
        raise FileNotFoundError(f"no database file {path}")
    # Autocommit (isolation_level None): the SELECT is its own short read, no transaction stays.
    conn = sqlite3.connect(
        f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )
    try:
        return list(conn.execute(QUERY.format(ph="?"), params).fetchall())
    finally:
        conn.close()


def _postgres_rows(dsn: str, params: tuple[bytes, int, bytes]) -> list[tuple[Any, ...]]:
    pg = postgres_driver()
    assert pg is not None  # usable() said so
    options = (
        f"-c default_transaction_read_only=on -c statement_timeout={PG_TIMEOUT_MS}"
        f" -c lock_timeout={PG_TIMEOUT_MS}"
    )
    conn = pg.connect(dsn, connect_timeout=2, options=options)
    try:
        conn.autocommit = True  # one statement, no transaction left open
        with conn.cursor() as cur:
            cur.execute(
                QUERY.format(ph="%s"), (pg.Binary(params[0]), params[1], pg.Binary(params[2]))
            )
            return list(cur.fetchall())
    finally:
        conn.close()
