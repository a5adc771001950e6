"""What a client's unilateral exit would cost now, against what it holds: pure arithmetic on a
record, used by `factory-report` and by the exit triggers (`onchain`), which never push a
client into an exit that costs more than it holds while a migration can still take it.

Owns: nothing. No RPC: callers pass the fee rate (sat/kvB) and the balance.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...engine import store
from ...engine.tx import Tx
from ..lifecycle.phase import CLTV_DELTA_GUESS, MOVE_FINAL_SLACK
from ..lightningd.records import topology
from .status import exit_sales

SALE_WITNESS_VB = 17  # a sale tx is stored without its one key-path signature (64 bytes / 4 + 1)


@dataclass(frozen=True)
class ExitCost:
    vbytes: int  # the client's root-to-leaf path and the sale txs its exit publishes
    txs: int
    cost_sat: int  # vbytes x the current fee estimate
    balance_sat: int

    @property
    def uneconomic(self) -> bool:
        return self.cost_sat > self.balance_sat


def _vsize(raw: str) -> int:
    return Tx.deserialize(bytes.fromhex(raw)).vsize


def path_vbytes(record: store.Record, client: int) -> tuple[int, int]:
    """(vbytes, tx count) of what `client`'s exit publishes: its path and its leaf's sales."""
    topo = topology(record)
    if isinstance(record, store.LspRecord):
        wanted = set(topo.client_path(client))
        entries = [e for e in record.tree if e.node in wanted]
    else:
        entries = list(record.path)
    sales = exit_sales(record, {client})
    vbytes = sum(_vsize(e.raw) for e in entries)
    vbytes += sum(_vsize(s.sale_tx) + SALE_WITNESS_VB for s in sales)
    return vbytes, len(entries) + len(sales)


def exit_cost(record: store.Record, client: int, rate_kvb: int, balance_sat: int) -> ExitCost:
    vbytes, txs = path_vbytes(record, client)
    return ExitCost(vbytes, txs, (vbytes * rate_kvb + 999) // 1000, balance_sat)


def last_move_height(record: store.Record, exit_margin: int) -> int:
    """The last height a migration can still move a client out (as `lifecycle`, any role)."""
    ewt = topology(record).ewt
    return record.timeout_height - 2 * ewt - max(exit_margin, MOVE_FINAL_SLACK) - CLTV_DELTA_GUESS


def can_migrate(record: store.ClientRecord, height: int, exit_margin: int) -> bool:
    """A migration can still take this client: its move is under way, or there is time."""
    return record.moving_to is not None or height <= last_move_height(record, exit_margin)


def defer_exit(cost: ExitCost, migration_possible: bool) -> bool:
    """Hold back an exit our own trigger would start: it costs more than the client holds and
    a migration can still take the client (the cooperative way out costs it nothing on chain)."""
    return cost.uneconomic and migration_possible
