"""A unilateral exit as a state machine: given what the chain shows, what to do next.

Pure: the caller observes the chain (confirmations, mempool, fee rate), calls `exit_step`, and
carries out the actions: broadcast a tx, bump a stuck one through its P2A anchor (CPFP with its own
wallet's coins), or wait for a relative lock. Run it again on every block until `Done`. The same
machine serves a client exiting alone with only its stored path, and the LSP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .ceremony import SignedNodeTx
from .taproot import P2A_SCRIPT
from .tree import fee_for


@dataclass(frozen=True)
class PathTx:
    """One signed tx of an exit path, with what the exit needs to know about it."""

    node: int
    txid: str
    raw: bytes
    relative_delay: int  # blocks after its parent confirmed (BIP68)
    vsize: int
    fee: int
    anchor_vout: int
    anchor_sat: int

    @staticmethod
    def of(signed: SignedNodeTx, relative_delay: int) -> PathTx:
        tx = signed.unsigned.tx
        anchor = next(i for i, o in enumerate(tx.outputs) if o.script_pubkey == P2A_SCRIPT)
        signed_tx = tx.with_witnesses([[signed.signature]])
        return PathTx(
            node=signed.node,
            txid=signed.txid,
            raw=signed.raw(),
            relative_delay=relative_delay,
            vsize=signed_tx.vsize,
            fee=signed.unsigned.spent_amount - sum(o.amount for o in tx.outputs),
            anchor_vout=anchor,
            anchor_sat=tx.outputs[anchor].amount,
        )


@dataclass(frozen=True)
class ChainView:
    height: int  # the tip
    confirmed: Mapping[str, int]  # txid -> height of the block that holds it
    in_mempool: frozenset[str]
    fee_rate_kvb: int  # what a package needs now to confirm soon
    first_seen: Mapping[str, int]  # txid -> tip height when we first broadcast it
    bumped: frozenset[str] = frozenset()  # txids we already sent a CPFP child for
    # txid -> package fee rate (sat/kvB) our latest child for it aimed at
    bump_rates: Mapping[str, int] = field(default_factory=dict)


# A bumped tx is bumped again (its child replaced) once the fee market is this much above the rate
# the last child aimed at: high enough that a replacement pays for itself, low enough to follow.
REBUMP_RISE_PERCENT = 25


@dataclass(frozen=True)
class Broadcast:
    txid: str
    raw: bytes


@dataclass(frozen=True)
class Bump:
    """Fee-bump `txid` with a child spending its anchor; `child_fee(child_vsize)` is what the child
    must pay so that parent + child reach the target fee rate."""

    txid: str
    anchor: tuple[str, int]
    anchor_sat: int
    parent_vsize: int
    parent_fee: int
    target_rate_kvb: int

    def child_fee(self, child_vsize: int) -> int:
        return max(
            0, fee_for(self.parent_vsize + child_vsize, self.target_rate_kvb) - self.parent_fee
        )


def _needs_bump(tx: PathTx, view: ChainView, bump_after: int) -> bool:
    """Stuck in the mempool below the market: bump it (first child), or the market rose well
    above what our last child aimed at: bump again (the new child replaces the old one on the
    anchor, paying more)."""
    if tx.txid in view.bumped:
        last = view.bump_rates.get(tx.txid, view.fee_rate_kvb)  # unknown: as now
        return view.fee_rate_kvb * 100 >= last * (100 + REBUMP_RISE_PERCENT)
    return (
        view.height - view.first_seen.get(tx.txid, view.height) >= bump_after
        and tx.fee * 1000 < tx.vsize * view.fee_rate_kvb
    )


@dataclass(frozen=True)
class WaitUntil:
    txid: str
    height: int  # the first block it can be in


@dataclass(frozen=True)
class Done:
    height: int  # where the last tx of the path confirmed


Action = Broadcast | Bump | WaitUntil | Done


def exit_step(
    funding_txid: str,
    path: Sequence[PathTx],
    view: ChainView,
    bump_after: int = 2,
) -> list[Action]:
    """The actions for this block. Txs without a relative lock are chained in the mempool behind an
    unconfirmed parent; a tx with a lock waits until its parent has been buried long enough."""
    if funding_txid not in view.confirmed:
        return [WaitUntil(funding_txid, view.height + 1)]
    parent_height: int | None = view.confirmed[funding_txid]
    actions: list[Action] = []
    for tx in path:
        if tx.txid in view.confirmed:
            parent_height = view.confirmed[tx.txid]
            continue
        if parent_height is None:  # parent only in the mempool: possible without relative lock
            if tx.relative_delay:
                break
        elif view.height + 1 < parent_height + tx.relative_delay:
            actions.append(WaitUntil(tx.txid, parent_height + tx.relative_delay))
            break
        if tx.txid not in view.in_mempool:
            actions.append(Broadcast(tx.txid, tx.raw))  # first time, or dropped: rebroadcast
        elif _needs_bump(tx, view, bump_after):
            actions.append(
                Bump(
                    tx.txid,
                    (tx.txid, tx.anchor_vout),
                    tx.anchor_sat,
                    tx.vsize,
                    tx.fee,
                    view.fee_rate_kvb,
                )
            )
        parent_height = None
    if not actions and path and path[-1].txid in view.confirmed:
        return [Done(view.confirmed[path[-1].txid])]
    return actions
