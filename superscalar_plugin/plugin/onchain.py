"""The plugin's on-chain duties, run on the worker at every block.

- Watch: scan each new block (`getrawblockbyheight`) for the txids of our factories and record
  where they confirmed (persisted, so a restart keeps them; missed blocks are scanned on catch-up).
- Exit: when an offered HTLC's deadline or (for a client) the factory's timeout comes within the
  EWT plus a safety margin, or on `factory-exit`, publish the needed path with the engine's exit
  state machine: each tx as soon as valid, rebroadcast, CPFP through the P2A anchor with wallet
  funds; once a leaf is on chain, `close` its channel so lightningd's commitment and onchain
  handling take over.
- Sweep (LSP): after the timeout T, every output with the timeout leaf that the tree left on chain
  goes to a fresh wallet address, idempotently and across restarts.

Owns: the last scanned height and, for one block's duties, lightningd's channel list. Worker
thread only. May call: `records`, and lightningd's block, broadcast, wallet and `close` RPCs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ..engine import policy, store
from ..engine.ceremony import SignedNodeTx
from ..engine.errors import InvalidParameter
from ..engine.exit import Broadcast, Bump, ChainView, Done, PathTx, WaitUntil, exit_step
from ..engine.tree import ClientSlot, Factory, Topology
from ..engine.tx import block_txids
from . import address, psbt
from .node import Node
from .records import LIVE, Records, topology, txid_of

log = logging.getLogger("superscalar")

REBROADCAST_EVERY = 6  # blocks; a tx not confirmed by then is sent again
MAX_CATCH_UP = 2016  # blocks scanned after a restart
SCAN_KEY = ["superscalar", "scanned"]


def watched_txids(record: store.Record) -> set[str]:
    out = set()
    if isinstance(record, store.LspRecord):
        if record.funding_txid:
            out.add(record.funding_txid)
        out.update(txid_of(e.raw) for e in record.tree)
        out.update(txid_of(raw) for _, raw in record.sweeps)
    else:
        if record.funding_txid:
            out.add(record.funding_txid)
        out.update(txid_of(e.raw) for e in record.path)
    return out


def _entry_tx(e: store.PathEntry) -> SignedNodeTx:
    return SignedNodeTx.from_raw(
        e.node, bytes.fromhex(e.raw), e.spent_amount, bytes.fromhex(e.spent_script)
    )


def _path_txs(topo: Topology, entries: list[store.PathEntry]) -> list[PathTx]:
    return [PathTx.of(_entry_tx(e), topo.relative_delay(e.node, e.state)) for e in entries]


class OnChain:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records
        self.scanned: int | None = None
        self._chan_cache: dict[str, dict[str, Any]] | None = None
        self.funding_check: Callable[[bytes, list[str]], None] | None = None

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
        if record.exit is None:
            record = self.start_exit(record, "requested with factory-exit", index)
        self._chan_cache = None  # channels as they are now, not at the last block
        self.drive(record)

    # --- watching -----------------------------------------------------------------------------

    def on_block(self, height: int) -> None:
        if self.scanned is None:
            self.scanned = self._load_scanned(height)
        start = max(self.scanned + 1, height - MAX_CATCH_UP)
        for h in range(start, height + 1):
            self._scan(h)
            self.scanned = h
        self._node.rpc.call(
            "datastore", {"key": SCAN_KEY, "string": str(height), "mode": "create-or-replace"}
        )
        self._chan_cache = None
        for record in list(self._records.all()):
            try:
                self._duties(record, height)
            except Exception:  # one factory's trouble must not stop the others
                log.exception("on-chain duties of factory %s failed", record.instance_id[:16])

    def _load_scanned(self, height: int) -> int:
        res = self._node.rpc.call("listdatastore", {"key": SCAN_KEY}).get("datastore", [])
        try:
            return int(res[0]["string"]) if res else height - 1
        except (KeyError, ValueError):
            return height - 1

    def _scan(self, height: int) -> None:
        try:
            block = self._node.rpc.call("getrawblockbyheight", {"height": height})
        except Exception as e:
            log.info("cannot fetch block %d: %s", height, e)
            return
        if not block.get("block"):
            return
        raw = bytes.fromhex(block["block"])
        in_order = block_txids(raw)
        txids = set(in_order)
        for record in list(self._records.all()):
            seen = watched_txids(record) & txids
            known = {t for t, _ in record.confirmed}
            new = sorted(seen - known)
            if new:
                self._records.persist(
                    record.replace(confirmed=(*record.confirmed, *((t, height) for t in new)))
                )
        if self.funding_check is not None:  # the client's funding output check (fundcheck.py)
            self.funding_check(raw, in_order)

    # --- duties -------------------------------------------------------------------------------

    def _duties(self, record: store.Record, height: int) -> None:
        if record.state not in LIVE:
            return
        if record.exit is None:
            trigger = self._exit_reason(record, height)
            if trigger is not None:
                record = self.start_exit(record, *trigger)
        if record.exit is not None and not record.exit.done:
            self.drive(record)
        if isinstance(record, store.LspRecord) and height >= record.timeout_height:
            latest = self._records.get(record.instance_id)
            assert isinstance(latest, store.LspRecord)
            self.sweep(latest, height)

    def _exit_reason(self, record: store.Record, height: int) -> tuple[str, int | None] | None:
        """Why to start an exit now, and whose path (None: every client's), or None."""
        ewt = topology(record).ewt
        margin = self._node.config.exit_margin
        if (
            isinstance(record, store.ClientRecord)
            and height + ewt + margin >= record.timeout_height
        ):
            return f"the factory times out at {record.timeout_height}: exit before it", None
        deadline = self._htlc_deadline(record)
        if deadline is not None and height + ewt + margin >= deadline[0]:
            return f"an offered HTLC expires at {deadline[0]}: exit to enforce it", deadline[1]
        return None

    def _htlc_deadline(self, record: store.Record) -> tuple[int, int | None] | None:
        """The earliest expiry of an HTLC we offered on one of this factory's channels, and (on
        the LSP) the client whose channel holds it."""
        owner: dict[str, int | None] = {}
        if isinstance(record, store.LspRecord):
            owner = {c.channel_id: i for i, c in enumerate(record.clients) if c.channel_id}
        leaf_txid = (
            txid_of(record.path[-1].raw)
            if isinstance(record, store.ClientRecord) and record.path
            else None
        )
        best: tuple[int, int | None] | None = None
        for ch in self._channels().values():
            cid = ch.get("channel_id", "")
            if cid not in owner and not (leaf_txid and ch.get("funding_txid") == leaf_txid):
                continue
            for h in ch.get("htlcs", []):
                if h.get("direction") == "out" and (best is None or int(h["expiry"]) < best[0]):
                    best = (int(h["expiry"]), owner.get(cid))
        return best

    def start_exit(self, record: store.Record, reason: str, client: int | None) -> store.Record:
        if isinstance(record, store.LspRecord):
            clients = tuple(range(len(record.clients))) if client is None else (client,)
        else:
            clients = (record.client_index,)
        state = store.ExitState(reason=reason, started_height=self._node.height, clients=clients)
        record = record.replace(exit=state)
        self._records.persist(record)
        log.warning("factory %s: starting the unilateral exit: %s", record.instance_id[:16], reason)
        return record

    def _paths(self, record: store.Record) -> list[list[store.PathEntry]]:
        if isinstance(record, store.ClientRecord):
            return [list(record.path)]
        assert record.exit is not None
        topo = topology(record)
        by_node = {e.node: e for e in record.tree}
        return [[by_node[n] for n in topo.client_path(c)] for c in record.exit.clients]

    def drive(self, record: store.Record) -> None:
        exit_state = record.exit
        assert exit_state is not None
        topo = topology(record)
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
            height, confirmed, recent, self._fee_rate_kvb(), broadcast, frozenset(exit_state.bumped)
        )
        funding = record.funding_txid or ""
        done_paths = 0
        sent: set[str] = set()
        for entries in self._paths(record):
            path = _path_txs(topo, entries)
            for action in exit_step(funding, path, view):
                if isinstance(action, Broadcast) and action.txid not in sent:
                    sent.add(action.txid)
                    self._broadcast(action.raw)
                    broadcast.setdefault(action.txid, height)
                elif isinstance(action, Bump) and action.txid not in exit_state.bumped:
                    if self._cpfp(action):
                        exit_state = dataclasses.replace(
                            exit_state, bumped=(*exit_state.bumped, action.txid)
                        )
                elif isinstance(action, WaitUntil):
                    log.info("exit: %s waits until block %d", action.txid[:16], action.height)
                elif isinstance(action, Done):
                    done_paths += 1
                    exit_state = self._close_channel(record, entries, exit_state)
        exit_state = dataclasses.replace(
            exit_state,
            broadcast=tuple(sorted(broadcast.items())),
            done=done_paths == len(exit_state.clients),
        )
        latest = self._records.get(record.instance_id)
        assert latest is not None
        self._records.persist(latest.replace(exit=exit_state))

    def _broadcast(self, raw: bytes) -> bool:
        try:
            res = self._node.rpc.call(
                "sendrawtransaction", {"tx": raw.hex(), "allowhighfees": True}
            )
        except Exception as e:
            log.info("sendrawtransaction failed: %s", e)
            return False
        if not res.get("success", False):
            log.info("sendrawtransaction refused: %s", res.get("errmsg"))
        return bool(res.get("success", False))

    def _fee_rate_kvb(self) -> int:
        try:
            rates = self._node.rpc.call("feerates", {"style": "perkb"})["perkb"]
            return int(rates.get("opening") or rates.get("min_acceptable") or 2000)
        except Exception:
            return 2000

    def _cpfp(self, bump: Bump) -> bool:
        """A child spending the anchor plus wallet coins, paying for parent + child."""
        child_vsize = 11 + 41 + 68 + 31 + 1  # overhead, anchor input, a P2WPKH input, change
        fee = bump.child_fee(child_vsize)
        try:
            funded = self._node.rpc.call(
                "fundpsbt",
                {
                    "satoshi": max(fee, 1),
                    "feerate": "253perkw",
                    "startweight": (10 + 41 + 31) * 4 + 1,
                    "reserve": 6,
                    "excess_as_change": True,
                },
            )
            change = funded.get("change_outnum")
            if change is None:
                log.warning("CPFP of %s: no change output to carry the anchor", bump.txid[:16])
                return False
            with_anchor = psbt.add_anchor_input(
                funded["psbt"], bump.anchor, bump.anchor_sat, change
            )
            signed = self._node.rpc.call("signpsbt", {"psbt": with_anchor})["signed_psbt"]
            anchor_index = len(psbt.unsigned_tx(signed).inputs) - 1
            final = psbt.finalize_anchor(signed, anchor_index)
            self._node.rpc.call("sendpsbt", {"psbt": final})
        except Exception as e:
            log.warning("CPFP of %s failed: %s", bump.txid[:16], e)
            return False
        log.info("CPFP: bumped %s to %d sat/kvB", bump.txid[:16], bump.target_rate_kvb)
        return True

    def _close_channel(
        self, record: store.Record, entries: list[store.PathEntry], exit_state: store.ExitState
    ) -> store.ExitState:
        leaf_txid = txid_of(entries[-1].raw)
        for ch in self._channels().values():
            cid = ch.get("channel_id")
            if ch.get("funding_txid") != leaf_txid or not cid or cid in exit_state.closed:
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

    def _factory(self, record: store.LspRecord) -> Factory:
        slots = [
            ClientSlot(
                bytes.fromhex(c.pubkey or ""), bytes.fromhex(c.channel_script or ""), c.channel_sat
            )
            for c in record.clients
        ]
        return Factory.create(
            record.params, bytes.fromhex(record.lsp_pubkey), slots, record.timeout_height
        )

    def sweep(self, record: store.LspRecord, height: int) -> None:
        """After T: sweep every timeout-leaf output the tree left on chain (persist, then send;
        unconfirmed sweeps are sent again every block: sending is idempotent)."""
        if not record.tree or record.funding_txid is None or record.funding_vout is None:
            return
        confirmed = dict(record.confirmed)
        swept = dict(record.sweeps)
        factory = self._factory(record)
        published = {e.node: txid_of(e.raw) for e in record.tree if txid_of(e.raw) in confirmed}
        outpoint = (record.funding_txid, record.funding_vout)
        todo = [
            c
            for c in policy.timeout_sweep_candidates(factory, outpoint, published)
            if f"{c.outpoint[0]}:{c.outpoint[1]}" not in swept
        ]
        if todo:
            lsp_key = self._node.lsp_key(record.instance_id)
            dest = address.decode(self._node.rpc.call("newaddr", {"addresstype": "p2tr"})["p2tr"])
            rate = max(self._fee_rate_kvb(), 1000)
            new = tuple(
                (
                    f"{c.outpoint[0]}:{c.outpoint[1]}",
                    policy.timeout_sweep(
                        factory, c.outpoint, c.output, c.amount, lsp_key, dest, rate
                    ).hex(),
                )
                for c in todo
            )
            record = record.replace(sweeps=(*record.sweeps, *new))
            self._records.persist(record)
            log.warning(
                "factory %s: sweeping %d output(s) after the timeout",
                record.instance_id[:16],
                len(new),
            )
        for _, raw in record.sweeps:
            if txid_of(raw) not in confirmed:
                self._broadcast(bytes.fromhex(raw))
