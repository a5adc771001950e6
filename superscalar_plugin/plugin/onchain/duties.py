"""The plugin's on-chain duties, run on the chain thread at every block (see `service`).

- Watch: scan each new block (`getrawblockbyheight`) for the txids of our factories and record
  where they confirmed (persisted, so a restart keeps them; missed blocks are scanned on catch-up).
  The chain is followed by block hash: a block that cannot be fetched is retried (the scan never
  moves past it), and on a reorg the confirmations above the fork are rolled back and the new
  branch scanned; an exit tx that was reorged out is sent again.
- Exit: when an offered HTLC's deadline or (for a client) the factory's timeout comes within the
  EWT plus a safety margin, or on `factory-exit`, publish the needed path with the engine's exit
  state machine: each tx as soon as valid, rebroadcast, CPFP through the P2A anchor with wallet
  funds; once a leaf is on chain, `close` its channel so lightningd's commitment and onchain
  handling take over.
- Sweep (LSP): after the timeout T, every output with the timeout leaf that the tree left on chain
  goes to a fresh wallet address, idempotently and across restarts. Before T, once the tree is
  partly on chain, `unroll` publishes what is due and takes handed-over outputs by key path.

Owns: the last scanned height with the recent block hashes and, for one block's duties,
lightningd's channel list. Chain thread only: it writes only the records' on-chain fields
(`Records.update_chain`), so the roles on the worker never wait for it nor it for them.
May call: `records`, and lightningd's block, broadcast, wallet and `close` RPCs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from ...engine import policy, store
from ...engine.ceremony import SignedNodeTx
from ...engine.errors import InvalidParameter
from ...engine.exit import Broadcast, Bump, ChainView, Done, PathTx, WaitUntil, exit_step
from ...engine.sale import stock_sweep
from ...engine.tree import Topology
from ...engine.tx import block_txids
from ..lightningd import address
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import LIVE, Records, factory_of, topology, txid_of
from ..operator import events
from ..operator.report import deferred_exit
from ..updates.watch import superseded_race, update_txids
from .feebump import FeeBumper
from .sales import (
    client_sale_paths,
    lsp_sale_paths,
    sale_txids,
    stale_sales,
    stock_duties,
    unsold_stocks,
)
from .unroll import Unroller

log = logging.getLogger("superscalar")
uneconomic_log = LogLimiter(log)

REBROADCAST_EVERY = 6  # blocks; a tx not confirmed by then is sent again
MAX_CATCH_UP = 2016  # blocks scanned after a restart
KEEP_HASHES = 144  # block hashes kept to find a fork: deeper reorgs roll back this far only
SCAN_KEY = ["superscalar", "scanned"]  # {"scanned": height, "hashes": [[height, hash], ...]}


def watched_txids(record: store.Record) -> set[str]:
    out = set()
    if isinstance(record, store.LspRecord):
        if record.funding_txid:
            out.add(record.funding_txid)
        out.update(txid_of(e.raw) for e in record.tree)
        out.update(txid_of(raw) for _, raw in record.sweeps)
        if record.handover_tx:
            out.add(txid_of(record.handover_tx))
    else:
        if record.funding_txid:
            out.add(record.funding_txid)
        out.update(txid_of(e.raw) for e in record.path)
        out.update(update_txids(record))
    out.update(sale_txids(record))
    return out


def _bumped(exit_state: store.ExitState, bump: Bump, fee: int) -> store.ExitState:
    """The exit with our latest child for `bump.txid`: its package rate and fee."""
    rates = {**dict(exit_state.bump_rates), bump.txid: bump.target_rate_kvb}
    fees = {**dict(exit_state.bump_fees), bump.txid: fee}
    return dataclasses.replace(
        exit_state,
        bumped=tuple(dict.fromkeys((*exit_state.bumped, bump.txid))),
        bump_rates=tuple(sorted(rates.items())),
        bump_fees=tuple(sorted(fees.items())),
    )


def _entry_tx(e: store.PathEntry) -> SignedNodeTx:
    return SignedNodeTx.from_raw(
        e.node, bytes.fromhex(e.raw), e.spent_amount, bytes.fromhex(e.spent_script)
    )


def _path_txs(topo: Topology, entries: list[store.PathEntry]) -> list[PathTx]:
    return [PathTx.of(_entry_tx(e), topo.relative_delay(e.node, e.state)) for e in entries]


def _warn_stale(record: store.Record, height: int) -> None:
    confirmed = dict(record.confirmed)
    for late in stale_sales(record, height):
        log.warning(
            "factory %s: sale %s is not confirmed %d blocks after its stock: the LSP may take"
            " the stock after T (%d) and %d blocks after it confirmed",
            record.instance_id[:16],
            late.sale_txid[:16],
            height - confirmed[late.stock_txid],
            record.timeout_height,
            record.params.stock_delay,
        )


class OnChain:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records
        self.scanned: int | None = None
        self._hashes: dict[int, str] = {}  # height -> hash of the block we scanned there
        self._chan_cache: dict[str, dict[str, Any]] | None = None
        self.funding_check: Callable[[bytes, list[str]], None] | None = None
        self._fee_bumper: FeeBumper | None = None
        self._unroller = Unroller(node, records)

    @property
    def _bumper(self) -> FeeBumper:
        if self._fee_bumper is None:
            self._fee_bumper = FeeBumper(self._node.rpc)
        return self._fee_bumper

    def _channels(self) -> dict[str, dict[str, Any]]:
        """listpeerchannels, once per block for every factory's duties."""
        if self._chan_cache is None:
            self._chan_cache = self._node.channels()
        return self._chan_cache

    def request_exit(self, instance: str, client: str | None) -> None:
        """`factory-exit`: start (or drive on) the unilateral exit of a factory we are in."""
        record = self._records.get(instance)
        if record is None:
            raise InvalidParameter(f"instance: no factory {instance}")
        if record.state not in LIVE:
            raise InvalidParameter(f"instance: factory is {record.state.value}, nothing to exit")
        index = None
        if client is not None:
            if not isinstance(record, store.LspRecord):
                raise InvalidParameter("client: only the LSP chooses whose path to publish")
            index = next((i for i, c in enumerate(record.clients) if c.node_id == client), None)
            if index is None:
                raise InvalidParameter(f"client: {client} is not in this factory")
        record = self.start_exit(record, "requested with factory-exit", index)
        self._chan_cache = None  # channels as they are now, not at the last block
        self.drive(record)

    # --- watching -----------------------------------------------------------------------------

    def on_block(self, height: int) -> None:
        self._watch(height)
        self._chan_cache = None
        for record in list(self._records.all()):
            try:
                self._duties(record, height)
            except ChannelsUnavailable as e:  # nothing concluded from it: again next block
                log.warning("on-chain duties of factory %s wait: %s", record.instance_id[:16], e)
            except Exception:  # one factory's trouble must not stop the others
                log.exception("on-chain duties of factory %s failed", record.instance_id[:16])

    def _watch(self, height: int) -> None:
        """Bring `scanned` up to `height` along the chain lightningd follows now: a block that
        cannot be fetched stops the scan there (retried at the next block, never skipped); a
        block whose parent is not the block we scanned at the height below, or a new block at a
        height we scanned, means a reorg: roll back to the fork, then scan the new branch."""
        if self.scanned is None:
            self.scanned, self._hashes = self._load_scanned(height)
        before = (self.scanned, dict(self._hashes))
        if height <= self.scanned and height in self._hashes:
            block = self._fetch(height)  # lightningd announced a height we scanned: replaced?
            if block is not None and block[0] != self._hashes[height]:
                self._roll_back_to_fork()
        h = max(self.scanned + 1, height - MAX_CATCH_UP)
        while h <= height:
            block = self._fetch(h)
            if block is None:
                break
            blockhash, raw = block
            parent = raw[4:36][::-1].hex()
            if self._hashes.get(h - 1, parent) != parent:
                if not self._roll_back_to_fork():
                    break
                h = self.scanned + 1
                continue
            self._scan(h, raw)
            self._hashes[h] = blockhash
            self.scanned = h
            h += 1
        for old in [k for k in self._hashes if k <= self.scanned - KEEP_HASHES]:
            del self._hashes[old]
        if (self.scanned, self._hashes) != before:
            state = {"scanned": self.scanned, "hashes": sorted(self._hashes.items())}
            self._node.rpc.call(
                "datastore",
                {"key": SCAN_KEY, "string": json.dumps(state), "mode": "create-or-replace"},
            )

    def _load_scanned(self, height: int) -> tuple[int, dict[int, str]]:
        res = self._node.rpc.call("listdatastore", {"key": SCAN_KEY}).get("datastore", [])
        if not res:
            return height - 1, {}
        try:
            state = json.loads(res[0]["string"])
            if isinstance(state, int):  # written before block hashes were kept
                return state, {}
            return int(state["scanned"]), {int(h): str(b) for h, b in state["hashes"]}
        except (KeyError, ValueError, TypeError) as e:
            log.warning("stored scan state unreadable (%s): scanning from the tip", e)
            return height - 1, {}

    def _fetch(self, height: int) -> tuple[str, bytes] | None:
        """(block hash, raw block) at `height` on lightningd's chain, or None if unavailable."""
        try:
            block = self._node.rpc.call("getrawblockbyheight", {"height": height})
        except Exception as e:
            log.info("cannot fetch block %d (retried at the next block): %s", height, e)
            return None
        if not block.get("block") or not block.get("blockhash"):
            return None
        return str(block["blockhash"]), bytes.fromhex(block["block"])

    def _roll_back_to_fork(self) -> bool:
        """Find the highest scanned height whose block is still on the chain, forget every
        confirmation above it and scan again from there. False if a block cannot be fetched."""
        fork = self.scanned
        assert fork is not None  # set by _watch before any scan
        while fork in self._hashes:
            block = self._fetch(fork)
            if block is None:
                return False
            if block[0] == self._hashes[fork]:
                break
            fork -= 1
        # Deeper than the hashes we keep: roll back all of them (the best we can do).
        log.warning("reorg: blocks above %d replaced, confirmations there rolled back", fork)
        for h in [k for k in self._hashes if k > fork]:
            del self._hashes[h]
        self.scanned = fork
        for record in list(self._records.all()):
            self._roll_back(record, fork)
        return True

    def _roll_back(self, record: store.Record, fork: int) -> None:
        gone = {t for t, h in record.confirmed if h > fork}
        if not gone:
            return
        changes: dict[str, Any] = {
            "confirmed": tuple((t, h) for t, h in record.confirmed if h <= fork)
        }
        if record.exit is not None:
            # Reorged out: send it again at once, and bump it again if it is stuck.
            changes["exit"] = dataclasses.replace(
                record.exit,
                broadcast=tuple((t, h) for t, h in record.exit.broadcast if t not in gone),
                bumped=tuple(t for t in record.exit.bumped if t not in gone),
                bump_rates=tuple((t, r) for t, r in record.exit.bump_rates if t not in gone),
                bump_fees=tuple((t, f) for t, f in record.exit.bump_fees if t not in gone),
                done=False,
            )
        self._records.update_chain(record.instance_id, **changes)

    def _scan(self, height: int, raw_block: bytes) -> None:
        in_order = block_txids(raw_block)
        txids = set(in_order)
        for record in list(self._records.all()):
            seen = watched_txids(record) & txids
            known = {t for t, _ in record.confirmed}
            new = sorted(seen - known)
            if new:
                confirmed = (*record.confirmed, *((t, height) for t in new))
                self._records.update_chain(record.instance_id, confirmed=confirmed)
                if record.funding_txid in new:
                    events.factory_funded(
                        record.instance_id, events.role_of(record), record.funding_txid, height
                    )
        if self.funding_check is not None:  # the client's funding output check (fundcheck.py)
            self.funding_check(raw_block, in_order)

    # --- duties -------------------------------------------------------------------------------

    def _duties(self, record: store.Record, height: int) -> None:
        if record.state not in LIVE:
            return
        trigger = self._exit_reason(record, height)
        if trigger is not None:  # a new exit, or another client's path added to the running one
            record = self.start_exit(record, *trigger)
        if record.exit is not None and not record.exit.done:
            self.drive(record)
        if isinstance(record, store.LspRecord):
            latest = self._records.get(record.instance_id)
            assert isinstance(latest, store.LspRecord)
            self._unroller.on_block(latest, height)
        if isinstance(record, store.ClientRecord):
            for what, txid, raw in stock_duties(record, height, self._node.payment):
                # a complete sale: on chain for its buyer; a sale stalled past T: burn its stock
                level = logging.WARNING if what == "burn" else logging.INFO
                log.log(level, "factory %s: publishing %s %s", record.instance_id[:16], what, txid)
                self._broadcast(raw)
        if isinstance(record, store.LspRecord) and height >= record.timeout_height:
            latest = self._records.get(record.instance_id)
            assert isinstance(latest, store.LspRecord)
            self.sweep(latest, height)

    def _exit_reason(self, record: store.Record, height: int) -> tuple[str, int | None] | None:
        """Why to start (or widen) an exit now, and whose path (None: every client's), or None.
        Paths already being published trigger nothing: a client has only its own."""
        if isinstance(record, store.ClientRecord) and record.exit is not None:
            return None
        ewt = topology(record).ewt + len(record.sales)  # a block of slack per sale on a path
        margin = self._node.config.exit_margin
        superseded = superseded_race(record)
        if superseded is not None:
            return superseded, None
        if (
            isinstance(record, store.ClientRecord)
            and height + ewt + margin >= record.timeout_height
        ):
            return f"the factory times out at {record.timeout_height}: exit before it", None
        deadline = self._htlc_deadline(record)
        if deadline is not None and height + ewt + margin >= deadline[0]:
            if isinstance(record, store.ClientRecord) and self._defer(record, height):
                return None
            return f"an offered HTLC expires at {deadline[0]}: exit to enforce it", deadline[1]
        return None

    def _defer(self, record: store.ClientRecord, height: int) -> bool:
        """Our exit would cost more than we hold and a migration can still take us: wait for
        it (the factory's timeout trigger, the last moment, is never deferred)."""
        cost = deferred_exit(self._node, record, self._channels(), height)
        if cost is not None:
            uneconomic_log.warning(
                record.instance_id,
                "factory %s: no exit for an HTLC: it costs %d sat, we hold %d; the migration"
                " takes us instead",
                record.instance_id[:16],
                cost.cost_sat,
                cost.balance_sat,
            )
        return cost is not None

    def _htlc_deadline(self, record: store.Record) -> tuple[int, int | None] | None:
        """The earliest expiry of an HTLC we offered on one of this factory's channels, and (on
        the LSP) the client whose channel holds it."""
        owner: dict[str, int | None] = {}
        if isinstance(record, store.LspRecord):
            exiting = set(record.exit.clients) if record.exit is not None else set()
            owner = {
                c.channel_id: i
                for i, c in enumerate(record.clients)
                if c.channel_id and i not in exiting
            }
            owner.update(
                {
                    e.channel_id: e.buyer
                    for e in record.sales
                    if e.channel_id and e.buyer not in exiting
                }
            )
        fundings: set[str] = set()
        if isinstance(record, store.ClientRecord) and record.path:
            fundings = {txid_of(record.path[-1].raw)}
            fundings.update(e.sale_txid for e in record.sales if e.buyer == record.client_index)
        best: tuple[int, int | None] | None = None
        for ch in self._channels().values():
            cid = ch.get("channel_id", "")
            if cid not in owner and ch.get("funding_txid") not in fundings:
                continue
            for h in ch.get("htlcs", []):
                if h.get("direction") == "out" and (best is None or int(h["expiry"]) < best[0]):
                    best = (int(h["expiry"]), owner.get(cid))
        return best

    def start_exit(self, record: store.Record, reason: str, client: int | None) -> store.Record:
        """Start the exit of `client`'s path (None: every client's), or add it to the running
        exit: the exit publishes the union of the paths asked for, each tx once."""
        if isinstance(record, store.LspRecord):
            clients = tuple(range(len(record.clients))) if client is None else (client,)
        else:
            clients = (record.client_index,)
        old = record.exit
        if old is None:
            state = store.ExitState(reason, started_height=self._node.height, clients=clients)
            log.warning(
                "factory %s: starting the unilateral exit: %s", record.instance_id[:16], reason
            )
        elif set(clients) <= set(old.clients):
            return record  # those paths are already on their way
        else:
            added = sorted(set(clients) - set(old.clients))
            state = dataclasses.replace(
                old,
                reason=f"{old.reason}; {reason}",
                clients=tuple(sorted({*old.clients, *clients})),
                done=False,
            )
            log.warning(
                "factory %s: adding the path(s) of client(s) %s to the exit: %s",
                record.instance_id[:16],
                added,
                reason,
            )
        updated = self._records.update_chain(record.instance_id, exit=state)
        events.client_exited(
            record.instance_id, events.role_of(record), list(clients), reason, self._node.height
        )
        return updated

    def _paths(self, record: store.Record) -> list[tuple[list[PathTx], str]]:
        """Every path the exit publishes, each with the funding txid of the channel it ends in:
        per exiting client its root-to-leaf path, then one more per sale channel of its (the
        same path followed by the sales down to that channel)."""
        topo = topology(record)
        if isinstance(record, store.ClientRecord):
            base = _path_txs(topo, list(record.path))
            paths = [(base, txid_of(record.path[-1].raw))]
            return paths + [(base + sales, f) for sales, f in client_sale_paths(record)]
        assert record.exit is not None
        by_node = {e.node: e for e in record.tree}
        out = []
        for c in record.exit.clients:
            entries = [by_node[n] for n in topo.client_path(c)]
            base = _path_txs(topo, entries)
            out.append((base, txid_of(entries[-1].raw)))
            out.extend((base + sales, f) for sales, f in lsp_sale_paths(record, c))
        return out

    def drive(self, record: store.Record) -> None:
        exit_state = record.exit
        assert exit_state is not None
        height = self._node.height
        confirmed = dict(record.confirmed)
        broadcast = dict(exit_state.broadcast)  # txid -> height of the first broadcast
        # Assume a broadcast tx is still in the mempool, except every REBROADCAST_EVERY blocks:
        # then it counts as gone and is sent again (lightningd offers no mempool view).
        recent = frozenset(
            t
            for t, h in broadcast.items()
            if t not in confirmed and (height == h or (height - h) % REBROADCAST_EVERY)
        )
        view = ChainView(
            height,
            confirmed,
            recent,
            self._node.fee_rate_kvb(),
            broadcast,
            frozenset(exit_state.bumped),
            dict(exit_state.bump_rates),
        )
        funding = record.funding_txid or ""
        done_paths = 0
        sent: set[str] = set()
        paths = self._paths(record)
        for path, channel_funding in paths:
            for action in exit_step(funding, path, view):
                if isinstance(action, Broadcast) and action.txid not in sent:
                    sent.add(action.txid)
                    refused = self._broadcast(action.raw)
                    if refused is not None and "fee" in refused:
                        tx = next(t for t in path if t.txid == action.txid)
                        before = exit_state
                        exit_state = self._package(exit_state, tx, view.fee_rate_kvb)
                        refused = None if exit_state is not before else refused
                    if refused is None:  # a refused tx is not in a mempool: sent again next block
                        broadcast.setdefault(action.txid, height)
                elif isinstance(action, Bump) and action.txid not in sent:
                    sent.add(action.txid)
                    exit_state = self._bump(exit_state, action)
                elif isinstance(action, WaitUntil):
                    log.info("exit: %s waits until block %d", action.txid[:16], action.height)
                elif isinstance(action, Done):
                    done_paths += 1
                    exit_state = self._close_channel(record, channel_funding, exit_state)
        _warn_stale(record, height)
        exit_state = dataclasses.replace(
            exit_state,
            broadcast=tuple(sorted(broadcast.items())),
            done=done_paths == len(paths),
        )
        self._records.update_chain(record.instance_id, exit=exit_state)

    def _budget_left(self, exit_state: store.ExitState, txid: str) -> int:
        """What the operator's budget leaves for the child of `txid` (its own child replaced)."""
        spent = sum(fee for t, fee in exit_state.bump_fees if t != txid)
        return self._node.config.max_exit_fee_sat - spent

    def _bump(self, exit_state: store.ExitState, bump: Bump) -> store.ExitState:
        previous = dict(exit_state.bump_fees).get(bump.txid, 0)
        fee = self._bumper.cpfp(bump, previous, self._budget_left(exit_state, bump.txid))
        return exit_state if fee is None else _bumped(exit_state, bump, fee)

    def _package(self, exit_state: store.ExitState, tx: PathTx, rate_kvb: int) -> store.ExitState:
        """`tx` was refused for its fee: send it with a child as a package, if bitcoind is
        reachable (a child already sent for it is replaced)."""
        bump = Bump(tx.txid, (tx.txid, tx.anchor_vout), tx.anchor_sat, tx.vsize, tx.fee, rate_kvb)
        previous = dict(exit_state.bump_fees).get(tx.txid, 0)
        budget = self._budget_left(exit_state, tx.txid)
        fee = self._bumper.package(tx.raw, bump, previous, budget)
        return exit_state if fee is None else _bumped(exit_state, bump, fee)

    def _broadcast(self, raw: bytes) -> str | None:
        """Send a tx through lightningd: None when accepted, else why it was refused."""
        try:
            res = self._node.rpc.call(
                "sendrawtransaction", {"tx": raw.hex(), "allowhighfees": True}
            )
        except Exception as e:
            log.info("sendrawtransaction failed: %s", e)
            return str(e)
        if not res.get("success", False):
            log.info("sendrawtransaction refused: %s", res.get("errmsg"))
            return str(res.get("errmsg") or "refused")
        return None

    def _close_channel(
        self, record: store.Record, funding_txid: str, exit_state: store.ExitState
    ) -> store.ExitState:
        for ch in self._channels().values():
            cid = ch.get("channel_id")
            if ch.get("funding_txid") != funding_txid or not cid or cid in exit_state.closed:
                continue
            if ch.get("state") not in (
                "CHANNELD_NORMAL",
                "CHANNELD_AWAITING_LOCKIN",
                "CHANNELD_SHUTTING_DOWN",
            ):
                continue
            try:
                self._node.rpc.call("close", {"id": cid, "unilateraltimeout": 1})
            except Exception as e:
                log.info("close %s: %s", cid[:16], e)
                continue
            log.warning(
                "factory %s: leaf confirmed, channel %s handed to lightningd's close",
                record.instance_id[:16],
                cid[:16],
            )
            exit_state = dataclasses.replace(exit_state, closed=(*exit_state.closed, cid))
        return exit_state

    # --- sweeping (LSP) -----------------------------------------------------------------------

    def sweep(self, record: store.LspRecord, height: int) -> None:
        """After T: sweep every timeout-leaf output the tree left on chain (persist, then send;
        unconfirmed sweeps are sent again every block: sending is idempotent)."""
        if not record.tree or record.funding_txid is None or record.funding_vout is None:
            return
        confirmed = dict(record.confirmed)
        swept = dict(record.sweeps)
        factory = factory_of(record)
        published = {e.node: txid_of(e.raw) for e in record.tree if txid_of(e.raw) in confirmed}
        outpoint = (record.funding_txid, record.funding_vout)
        todo = [
            c
            for c in policy.timeout_sweep_candidates(factory, outpoint, published)
            if f"{c.outpoint[0]}:{c.outpoint[1]}" not in swept
        ]
        stocks = [s for s in unsold_stocks(record, height) if f"{s.txid}:{s.vout}" not in swept]
        if todo or stocks:
            lsp_key = self._node.lsp_key(record.instance_id)
            dest = address.decode(self._node.rpc.call("newaddr", {"addresstype": "p2tr"})["p2tr"])
            rate = max(self._node.fee_rate_kvb(), 1000)
            new = tuple(
                (
                    f"{c.outpoint[0]}:{c.outpoint[1]}",
                    policy.timeout_sweep(
                        factory, c.outpoint, c.output, c.amount, lsp_key, dest, rate
                    ).hex(),
                )
                for c in todo
            ) + tuple(
                (f"{s.txid}:{s.vout}", stock_sweep(factory, s, lsp_key, dest, rate).hex())
                for s in stocks
            )
            updated = self._records.update_chain(record.instance_id, sweeps=(*record.sweeps, *new))
            for swept_at, sweep_hex in new:
                events.sweep(record.instance_id, swept_at, txid_of(sweep_hex), height)
            assert isinstance(updated, store.LspRecord)
            record = updated
            log.warning(
                "factory %s: sweeping %d output(s) after the timeout",
                record.instance_id[:16],
                len(new),
            )
        for _, raw in record.sweeps:
            if txid_of(raw) not in confirmed:
                self._broadcast(bytes.fromhex(raw))
