"""The LSP's side of a factory's end, before its timeout: migration, close, keys, key-path spend.

- Migration (`factory-migrate`, or the ladder's schedule in its dying period): create a successor
  factory with the old one's connected clients, each channel as large as its old one; once it is
  funded, ask each client to MOVE its balance there (the client pays itself across, see
  `move.py`). Clients that were offline are tried again on later blocks, in a later successor,
  until the last height a move can still fit before their own exit starts.
- Close (`factory-close`): the same, into an ordinary channel the LSP opens from its wallet.
- Keys: a client whose balance left hands over its key of the old factory; checked against the
  key it signed with and persisted. With every key, the old funding output is spent by key path,
  at once, into the wallet: one small transaction instead of the tree.
Without every key the factory stays as it is: clients that never moved exit on their own before
T, and the LSP takes the rest through the timeout (the sweep in `onchain`).

Owns: the successor creations in flight. Worker thread. May call: `lsp` (creations), `peers`,
`records`, `funding` (the close's channels), lightningd's wallet and broadcast RPCs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine import handover, protocol, store
from ...engine.errors import CeremonyError, HandoverError, InvalidParameter
from ..creation import funding
from ..creation.lsp import LspRole
from ..lightningd import address
from ..lightningd.config import MIN_CHANNEL_SAT
from ..lightningd.guards import Guards
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter, WriteLimiter
from ..lightningd.records import Records, factory_of, txid_of
from ..lightningd.runtime import PeerUnreachable, Reply, RpcFailed, fail, why
from ..operator import events
from .phase import dying_from, last_move_height, pending

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)

MOVE_ASK_DEPTH = 3  # clients' default superscalar-move-min-depth
MAX_REFUSAL = 200  # characters of a client's refusal kept in the record


@dataclass
class _Successor:
    """The reply of a creation the LSP started itself (a successor), instead of an RPC's."""

    done: Callable[[dict[str, Any]], None]
    failed: Callable[[Exception], None]

    def set_result(self, result: Any) -> None:
        self.done(result)

    def set_exception(self, exc: Exception) -> None:
        self.failed(exc)


class WindDown:
    def __init__(
        self, node: Node, records: Records, peers: Peers, lsp: LspRole, guards: Guards
    ) -> None:
        self._node = node
        self._guards = guards
        self._records = records
        self._peers = peers
        self._lsp = lsp
        self._creating: set[str] = set()  # old factories whose successor is being created
        # Per old factory, the clients a failed successor's abort named (a refusal, silence, a
        # bad message): the ladder's next attempt goes without them, the one after with them
        # again. A co-client refusing every successor then stalls nobody else.
        self._left_out: dict[str, set[str]] = {}
        self._refusal_writes = WriteLimiter()  # a client's REJECT texts: record writes bounded

    # --- RPCs ---------------------------------------------------------------------------------

    def migrate(self, reply: Reply, instance: str, extra: list[str], extra_sat: int) -> None:
        """`factory-migrate`: a successor now, with the connected clients still inside."""
        try:
            record = self._windable(instance)
            if instance in self._creating:
                raise InvalidParameter(f"instance: a successor of {instance} is being created")
            movers = self._movers(record)
            known = {record.clients[i].node_id for i in movers}
            extra = [c for c in extra if c not in known]
            if not movers and not extra:
                raise InvalidParameter("instance: no connected client is left to move")
        except Exception as e:
            fail(reply, e, "factory-migrate failed")
            return
        self._create_successor(record, movers, extra, extra_sat, reply)

    def close(self, instance: str) -> store.LspRecord:
        """`factory-close`: every client still inside gets an ordinary channel to move into."""
        record = self._windable(instance)
        if record.wind_down is not store.WindDown.CLOSE:
            record = record.replace(wind_down=store.WindDown.CLOSE)
            self._records.persist(record)
        return self._open_close_channels(record)

    def _windable(self, instance: str) -> store.LspRecord:
        record = self._records.get(instance)
        if not isinstance(record, store.LspRecord):
            raise InvalidParameter(f"instance: no factory {instance} of ours as LSP")
        if record.state is not store.LspState.FUNDED or record.exit is not None:
            raise InvalidParameter(f"instance: factory is {record.state.value}, not running")
        if record.handover_tx:
            raise InvalidParameter("instance: every client handed over; the factory is closing")
        return record

    # --- successors ---------------------------------------------------------------------------

    def _movers(self, record: store.LspRecord) -> list[int]:
        """Connected clients still inside and not yet in a funded successor."""
        peers = {p["id"]: p for p in self._node.rpc.call("listpeers").get("peers", [])}
        placed = {c.node_id for s in self._successors(record) for c in s.clients}
        return [
            i
            for i in pending(record)
            if peers.get(record.clients[i].node_id, {}).get("connected")
            and self._peers.speaks_superscalar(record.clients[i].node_id)
            and record.clients[i].node_id not in placed
        ]

    def _successors(self, record: store.LspRecord) -> list[store.LspRecord]:
        out = []
        for s in record.successors:
            r = self._records.get(s)
            if isinstance(r, store.LspRecord) and r.state is store.LspState.FUNDED:
                out.append(r)
        return out

    def _deep_enough(self, successor: store.LspRecord) -> bool:
        """A client moves into a successor only once its funding is `move-min-depth` deep (3 by
        default, the client's own option): asked before, every client refuses, and both sides log
        it. Asked from then on (a client of a higher setting refuses and checks again itself at
        each of its blocks)."""
        height = dict(successor.confirmed).get(successor.funding_txid or "")
        return height is not None and self._node.height - height + 1 >= MOVE_ASK_DEPTH

    def _depth(self, scid: str) -> bool:
        """A channel's funding (by its short channel id) is MOVE_ASK_DEPTH deep."""
        return self._node.height - int(scid.split("x")[0]) + 1 >= MOVE_ASK_DEPTH

    def _create_successor(
        self,
        record: store.LspRecord,
        movers: list[int],
        extra: list[str],
        extra_sat: int,
        reply: Reply | None,
    ) -> None:
        old = record.instance_id
        clients = [record.clients[i].node_id for i in movers] + extra
        sats = [record.clients[i].channel_sat for i in movers] + [extra_sat] * len(extra)
        self._creating.add(old)

        def done(result: dict[str, Any]) -> None:
            self._creating.discard(old)
            self._successor_funded(old, str(result["instance"]))
            if reply is not None:
                reply.set_result(result)

        def failed(exc: Exception) -> None:
            self._creating.discard(old)
            log.warning("factory %s: successor not created: %s", old[:16], exc)
            named = culprits(str(getattr(exc, "message", exc)))
            self._left_out[old] = {c for c in clients if c in named}
            if reply is not None:
                reply.set_exception(exc)

        log.info("factory %s: creating a successor for %d client(s)", old[:16], len(clients))
        events.migration_step(old, "successor_creating", self._node.height, clients=len(clients))
        self._lsp.create(_Successor(done, failed), clients, sats, self._node.config.params)

    def _successor_funded(self, old: str, new: str) -> None:
        record = self._records.get(old)
        assert isinstance(record, store.LspRecord)
        record = record.replace(
            wind_down=store.WindDown.MIGRATE, successors=(*record.successors, new)
        )
        self._records.persist(record)
        log.info("factory %s: successor %s funded; moving its clients", old[:16], new[:16])
        events.migration_step(old, "successor_funded", self._node.height, successor=new)
        self._ask_moves(record)

    # --- asking clients to move ---------------------------------------------------------------

    def _ask_moves(self, record: store.LspRecord) -> None:
        """MOVE to every client still inside whose target is ready (again each block: a client
        that was offline, or restarted, is asked again). The new targets are kept in one record
        write and pinned in the guards by one refresh, before any MOVE leaves (a write and a
        refresh are O(clients) and O(channels): once per client they took 0.3 s each at 64)."""
        targets = self._targets(record)
        asks = [(i, targets[i]) for i in pending(record) if i in targets]
        fresh = {i: t[2] for i, t in asks if record.clients[i].moved_to != t[2]}
        if fresh:
            record = self._update_clients(record, {i: {"moved_to": c} for i, c in fresh.items()})
            self._guards.refresh()  # forwards into them pinned before any client pays
        instance = bytes.fromhex(record.instance_id)
        moves = [
            (record.clients[i].node_id, protocol.Move(instance, kind, bytes.fromhex(ident)))
            for i, (kind, ident, _) in asks
        ]
        self._peers.send_all(moves)  # a client offline now is asked again at the next block

    def _targets(self, record: store.LspRecord) -> dict[int, tuple[protocol.MoveTarget, str, str]]:
        """Per client: (kind, what the MOVE names, the target channel id)."""
        out: dict[int, tuple[protocol.MoveTarget, str, str]] = {}
        where = {
            c.node_id: (s.instance_id, c.channel_id)
            for s in self._successors(record)
            if self._deep_enough(s)
            for c in s.clients
            if c.channel_id
        }
        channels = self._node.channels() if record.wind_down is store.WindDown.CLOSE else {}
        for i, c in enumerate(record.clients):
            if c.node_id in where:
                instance, cid = where[c.node_id]
                out[i] = (protocol.MoveTarget.FACTORY, instance, cid or "")
            elif c.moved_to and record.wind_down is store.WindDown.CLOSE:
                ch = channels.get(c.moved_to, {})
                scid = str(ch.get("short_channel_id") or "")
                if scid and ch.get("state") == "CHANNELD_NORMAL" and self._depth(scid):
                    out[i] = (protocol.MoveTarget.CHANNEL, c.moved_to, c.moved_to)
        return out

    def _open_close_channels(self, record: store.LspRecord) -> store.LspRecord:
        """An ordinary channel per client still inside that has none yet (factory-close), up to
        eight round trips at once; a client that does not answer within `ceremony-timeout` is
        tried again at the next block, and never holds the worker longer."""
        todo = [i for i in pending(record) if not record.clients[i].moved_to]
        if not todo:
            return record
        adopted = self._opened_before(record, todo)  # opens that came late
        if adopted:
            record = self._update_clients(record, {i: {"moved_to": c} for i, c in adopted.items()})
            todo = [i for i in todo if i not in adopted]

        def open_one(c: store.ClientEntry) -> str:
            amount = max(c.channel_sat, MIN_CHANNEL_SAT)
            try:
                res = self._node.rpc.call(
                    "fundchannel", {"id": c.node_id, "amount": amount, "announce": False}
                )
            except Exception as e:
                raise RpcFailed(f"no channel to {c.node_id} yet: {why(e)}") from e
            return str(res["channel_id"])

        results = funding.per_client(
            [record.clients[i] for i in todo],
            open_one,
            "fundchannel",
            self._node.config.ceremony_timeout,
        )
        opened: dict[int, dict[str, Any]] = {}
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, RpcFailed):
                log.info("factory %s: %s", record.instance_id[:16], result)
            else:
                opened[i] = {"moved_to": result}
        return self._update_clients(record, opened) if opened else record

    def _opened_before(self, record: store.LspRecord, todo: list[int]) -> dict[int, str]:
        """Ordinary channels we opened to these clients already (an earlier open that returned
        after its timeout): adopted rather than opened twice. A channel inside a factory (a
        client's, a sale's, one an update retired) is never one: its funding is a tree
        transaction, so it never gets the short channel id a move target needs (a sale's
        channel, adopted, left its buyer waiting for a MOVE until its last move height)."""
        factory_channels: set[str] = set()
        for r in self._records.all():
            if isinstance(r, store.LspRecord):
                factory_channels.update(c.channel_id for c in r.clients if c.channel_id)
                factory_channels.update(e.channel_id for e in r.sales if e.channel_id)
                factory_channels.update(r.retired)
                factory_channels.update(j.channel_id for j in r.jit)  # bought: the buyer's
                if r.update is not None:  # an update's new channels, on its unsigned leaves
                    factory_channels.update(c.channel_id for c in r.update.clients if c.channel_id)
        found: dict[int, str] = {}
        for cid, ch in self._node.channels().items():
            if (
                cid not in factory_channels
                and ch.get("opener") == "local"
                and ch.get("state") in ("CHANNELD_AWAITING_LOCKIN", "CHANNELD_NORMAL")
            ):
                for i in todo:
                    if ch.get("peer_id") == record.clients[i].node_id:
                        found.setdefault(i, cid)
        return found

    def _update_client(self, record: store.LspRecord, i: int, **changes: Any) -> store.LspRecord:
        return self._update_clients(record, {i: changes})

    def _update_clients(
        self, record: store.LspRecord, changes: dict[int, dict[str, Any]]
    ) -> store.LspRecord:
        """Several clients' entries changed, in one record write."""
        clients = list(record.clients)
        for i, change in changes.items():
            clients[i] = dataclasses.replace(clients[i], **change)
        record = record.replace(clients=tuple(clients))
        self._records.persist(record)
        return record

    # --- messages from clients of a funded factory --------------------------------------------

    def on_payload(self, record: store.LspRecord, peer: str, p: protocol.Payload) -> None:
        index = next((i for i, c in enumerate(record.clients) if c.node_id == peer), None)
        if index is None:
            peer_log.warning(
                peer, "dropped a message from %s, not a client of %s", peer, record.instance_id[:16]
            )
            return
        if isinstance(p, protocol.Key):
            self._on_key(record, index, p.secret)
        elif isinstance(p, protocol.Text):
            refusal = p.reason[:MAX_REFUSAL]
            changed = record.clients[index].refusal != refusal
            # Written when it changes, at most once a minute per client and factory: endless
            # texts only reach the (rate-limited) log.
            if changed and self._refusal_writes.allow(f"{record.instance_id}/{index}"):
                self._update_client(record, index, refusal=refusal)
            peer_log.warning(
                peer, "client %s did not move out of %s: %s", peer, record.instance_id[:16], refusal
            )
        else:
            raise CeremonyError(f"unexpected {type(p).__name__} for a funded factory")

    def _on_key(self, record: store.LspRecord, index: int, secret: bytes) -> None:
        entry = record.clients[index]
        if entry.handed_key is not None:
            return  # again (it restarted, or we asked again): nothing new
        try:
            handover.check_handed_key(secret, bytes.fromhex(entry.pubkey or ""))
        except HandoverError as e:  # a client lying about its key gains nothing: dropped
            peer_log.warning(entry.node_id, "refused the key %s handed over: %s", entry.node_id, e)
            return
        record = self._update_client(record, index, handed_key=secret.hex(), refusal=None)
        log.info(
            "factory %s: client %s handed over its key (%d still inside)",
            record.instance_id[:16],
            entry.node_id,
            len(pending(record)),
        )
        events.migration_step(
            record.instance_id,
            "client_handed_over",
            self._node.height,
            client=entry.node_id,
            clients_inside=len(pending(record)),
        )
        if not pending(record):
            self._spend(record)

    def _spend(self, record: store.LspRecord) -> None:
        """Every key is ours: the funding output to the wallet by key path (persist, then send)."""
        dest = address.decode(self._node.rpc.call("newaddr", {"addresstype": "p2tr"})["p2tr"])
        raw = handover.keypath_spend(
            factory_of(record),
            (record.funding_txid or "", record.funding_vout or 0),
            record.funding_amount or 0,
            {i: bytes.fromhex(c.handed_key or "") for i, c in enumerate(record.clients)},
            self._node.lsp_key(record.instance_id),
            dest,
            max(1000, self._node.fee_rate_kvb()),
        )
        record = record.replace(handover_tx=raw.hex())
        self._records.persist(record)
        log.info(  # the normal, happy end of a factory: not a warning
            "factory %s: every client handed over; spending its funding output by key path in %s",
            record.instance_id[:16],
            txid_of(raw.hex()),
        )
        events.handover(record.instance_id, txid_of(raw.hex()), self._node.height)
        self._broadcast(raw.hex())

    def _broadcast(self, raw_hex: str) -> None:
        refused = self._node.send_tx(raw_hex)
        if refused is not None:
            log.info("hand-over spend not accepted (sent again next block): %s", refused)

    # --- every block --------------------------------------------------------------------------

    def on_block(self, height: int) -> None:
        for record in self._records.all():
            if not isinstance(record, store.LspRecord) or record.state is not store.LspState.FUNDED:
                continue
            try:
                self._block_duties(record, height)
            except (RpcFailed, PeerUnreachable, InvalidParameter) as e:
                log.info("factory %s: wind-down step failed: %s", record.instance_id[:16], e)

    def _block_duties(self, record: store.LspRecord, height: int) -> None:
        if record.handover_tx:
            if txid_of(record.handover_tx) in dict(record.confirmed):
                self._records.persist(record.replace(state=store.LspState.CLOSED))
                log.info(
                    "factory %s closed: its funding output went to our wallet",
                    record.instance_id[:16],
                )
            else:
                self._broadcast(record.handover_tx)
            return
        if record.exit is not None or height > last_move_height(
            record, self._node.config.exit_margin
        ):
            return  # too late to move: clients exit on their own, we sweep after T
        if record.wind_down is store.WindDown.CLOSE:
            record = self._open_close_channels(record)
        if record.wind_down is not None:
            self._ask_moves(record)
        if self._ladder_due(record, height):
            movers = self._movers(record)
            left_out = self._left_out.pop(record.instance_id, set())
            if left_out:
                movers = [i for i in movers if record.clients[i].node_id not in left_out]
                log.info(
                    "factory %s: this successor leaves out %s (the last one's abort named them)",
                    record.instance_id[:16],
                    ", ".join(sorted(left_out)),
                )
            if movers:
                self._create_successor(record, movers, [], MIN_CHANNEL_SAT, None)

    def _ladder_due(self, record: store.LspRecord, height: int) -> bool:
        """The ladder: in the dying period, a successor every `ladder_every` blocks for the
        clients still inside (none while one is being created, none for a closing factory)."""
        cfg = self._node.config
        if not cfg.ladder_every or record.wind_down is store.WindDown.CLOSE:
            return False
        if record.instance_id in self._creating or height < dying_from(record, cfg.dying_blocks):
            return False
        last = max(
            (
                r.created_height
                for s in record.successors
                if isinstance(r := self._records.get(s), store.LspRecord)
            ),
            default=None,
        )
        return last is None or height >= last + cfg.ladder_every


# The start of a creation's abort reason names its culprits ("client <id>: ...", "client <id>
# refused: ...", "timed out: client <id>, <id> did not ..."); a client's own words come after,
# so they cannot name anyone else.
_CULPRITS = re.compile(
    r"^(?:factory creation failed: )?(?:timed out: )?client ([0-9a-f]{66}(?:, [0-9a-f]{66})*)"
)


def culprits(reason: str) -> set[str]:
    """The node ids a creation's abort reason blames (none for the LSP's own failures)."""
    m = _CULPRITS.match(reason)
    return set(m.group(1).split(", ")) if m else set()
