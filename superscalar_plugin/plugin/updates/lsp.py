"""The LSP's side of a DW state update (`factory-update`): move stock between leaves, fold the
leaves' sales into their buyers' channels, and put every channel below the moved state node on a
new channel of the new state.

The order, each step persisted before the message that depends on it:

1. `update` (RPC): plan it (`engine/update.py`): the lowest state node over the leaves involved,
   the stock per leaf, each client's new capacity. Freeze every channel it replaces (the guards
   fail their HTLCs), read each client's balance in them (none may carry an HTLC), persist the
   update, send UPDATE to each client below the node (the others are not woken).
2. READY from every client (its side frozen too, its balances checked): per client
   `channel_in_factory` and `fundchannel_start` of the new capacity with its balance pushed to
   it; build the new state; `fundchannel_complete` with each new leaf; the signing ceremony over
   the node and everything below it.
3. Every signature aggregated: the new state exists. Persist it as the factory's tree (channels,
   stocks, odometer; the folded sales dropped, the old channels retired) BEFORE the final
   signatures leave, then send them.
4. STORED from every client: the update is over; the old channels are closed.

An update that cannot finish before step 3 (a client offline, refusing, or slow past the
ceremony timeout; a restart) is abandoned cleanly: clients told, new channels closed, old ones
unfrozen. After step 3 it only waits for the clients' STORED.

Owns: the updates in flight (`_Session`: plan, new factory, coordinator with its secret nonces,
never persisted, reply, deadline). Worker thread only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...engine import blip56, dw, protocol, store
from ...engine.ceremony import Coordinator, CoordinatorState, SignedNodeTx
from ...engine.errors import CeremonyError, InvalidParameter, SuperscalarError
from ...engine.tree import Factory
from ...engine.update import UpdatePlan, plan_update, signing_phases, updated_factory
from ...engine.update_store import LspUpdate, UpdateClient, UpdateStage
from ..creation import funding
from ..lightningd.config import UPDATE_PUSH_MSAT
from ..lightningd.guards import Guards, msat
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import Records, factory_of, topology
from ..lightningd.runtime import Reply, RpcFailed, rpc_exception, why
from ..operator import events
from .plan import (
    Then,
    folded_sales,
    leaves_for,
    plan_stub,
    planning_states,
    states_of,
    with_tree_above,
)

log = logging.getLogger("superscalar")
ACK_BLOCKS = 6  # blocks a signed update waits for every client's STORED before it is finished
peer_log = LogLimiter(log)


@dataclass
class _Session:
    plan: UpdatePlan
    deadline: float
    reply: Reply | None = None
    factory: Factory | None = None
    coordinator: Coordinator | None = None
    phases: list[list[int]] = field(default_factory=list)  # `signing_phases`: below, then moved
    signed: dict[int, SignedNodeTx] = field(default_factory=dict)


class UpdateLsp:
    def __init__(self, node: Node, records: Records, peers: Peers, guards: Guards) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._guards = guards
        self._sessions: dict[str, _Session] = {}

    def running(self, instance: str) -> bool:
        return instance in self._sessions

    def _deadline(self) -> float:
        return time.monotonic() + self._node.config.ceremony_timeout

    # --- 1. plan, freeze, ask ------------------------------------------------------------------

    def update(
        self, reply: Reply, instance: str, client: str | None, stock_sat: int | None
    ) -> None:
        try:
            record, plan, frozen = self._prepare(instance, client, stock_sat)
        except SuperscalarError as e:  # a plan that cannot be made (exhausted, dust, ...)
            reply.set_exception(rpc_exception(e))
            return
        self._sessions[instance] = _Session(plan, self._deadline(), reply)
        self._records.persist(record.replace(update=frozen))  # before any UPDATE leaves
        self._guards.refresh()  # the old channels take no HTLC from now on
        try:
            pushes = self._balances(frozen)
        except CeremonyError as e:
            self._abandon(instance, str(e))
            return
        record = self._lsp_record(instance)
        clients = tuple(dataclasses.replace(c, move_msat=pushes[c.client]) for c in frozen.clients)
        record = record.replace(update=dataclasses.replace(frozen, clients=clients))
        self._records.persist(record)
        factory = factory_of(record)
        for c in clients:
            leaf = factory.topology.leaf_of_client[c.client]
            self._send(
                record.clients[c.client].node_id,
                protocol.Update(
                    bytes.fromhex(instance),
                    bytes.fromhex(frozen.session),
                    plan.node,
                    plan.states[plan.node],
                    c.channel_sat,
                    c.move_msat,
                    plan.stock_of(factory, leaf),
                    tuple(bytes.fromhex(x) for x in c.old_channels),
                ),
            )
        events.factory_update(instance, "asked", plan.node, list(plan.clients))

    def refill(self, instance: str, client: int, stock_sat: int, then: Callable[[], None]) -> None:
        """An update that gives `client`'s leaf `stock_sat` of stock from its sibling leaves, then
        `then()` however it ended (a sale's refill: the sale falls back on chain if it failed)."""
        record = self._records.get(instance)
        if not isinstance(record, store.LspRecord) or leaves_for(record, client) == [
            topology(record).leaf_of_client[client]
        ]:
            then()  # no state node over this leaf and another: nothing to move
            return
        self.update(Then(instance, then), instance, record.clients[client].node_id, stock_sat)

    def _prepare(
        self, instance: str, client: str | None, stock_sat: int | None
    ) -> tuple[store.LspRecord, UpdatePlan, LspUpdate]:
        record = self._records.get(instance)
        if not isinstance(record, store.LspRecord):
            raise InvalidParameter(f"instance: no factory {instance} of ours as LSP")
        if record.state is not store.LspState.FUNDED or record.exit or record.wind_down:
            raise InvalidParameter(f"factory {instance[:16]} is not a live funded factory")
        if record.update is not None or instance in self._sessions:
            raise InvalidParameter(f"factory {instance[:16]} is already being updated")
        index = None
        if client is not None:
            index = next((i for i, c in enumerate(record.clients) if c.node_id == client), None)
            if index is None:
                raise InvalidParameter(f"client: {client} is not in factory {instance[:16]}")
        leaves = leaves_for(record, index)
        factory = factory_of(record)
        states = planning_states(record)
        node = factory.topology.nodes[dw.covering_state(factory.topology, states, leaves)]
        folded = folded_sales(record, range(node.lo, node.hi))
        wanted = None
        if stock_sat is not None:
            if index is None:
                raise InvalidParameter("stock_sat needs a client: whose leaf gets it")
            wanted = {factory.topology.leaf_of_client[index]: stock_sat}
        plan = with_tree_above(record, plan_update(factory, states, leaves, folded, wanted))
        clients = []
        for c in plan.clients:
            entry = record.clients[c]
            if not entry.channel_id or entry.moved_to:
                raise InvalidParameter(f"client {entry.node_id} has no live factory channel")
            sales = tuple(e.channel_id for e in record.sales if e.buyer == c and e.channel_id)
            clients.append(UpdateClient(c, (entry.channel_id, *sales), 0, plan.channel_sat[c]))
        frozen = LspUpdate(
            os.urandom(32).hex(),
            plan.node,
            plan.states,
            plan.stocks,
            tuple(clients),
            UpdateStage.FREEZING,
            self._node.height,
        )
        return record, plan, frozen

    def _balances(self, update: LspUpdate) -> dict[int, int]:
        """Each client's balance in the channels the update replaces, from our own node: what
        its new channel pushes to it. A channel with an HTLC in flight cannot be read exactly."""
        channels = self._node.channels()
        out = {}
        for c in update.clients:
            total = 0
            for cid in c.old_channels:
                ch = channels.get(cid)
                if ch is None:
                    raise CeremonyError(f"channel {cid[:16]} of client {c.client} is not listed")
                if ch.get("htlcs"):
                    raise CeremonyError(
                        f"channel {cid[:16]} of client {c.client} carries HTLCs: try again"
                    )
                total += msat(ch.get("total_msat", 0)) - msat(ch.get("to_us_msat", 0))
            out[c.client] = total
        return out

    # --- 2. every client ready: open, complete, sign ---------------------------------------------

    def on_payload(self, record: store.LspRecord, peer: str, p: protocol.Payload) -> None:
        s = self._sessions.get(record.instance_id)
        update = record.update
        index = next((i for i, c in enumerate(record.clients) if c.node_id == peer), None)
        if isinstance(p, protocol.UpdateStep) and p.kind is protocol.UpdateStepKind.STORED:
            late = [x for x in record.unacked if x[1] == index and x[0].startswith(p.session.hex())]
            if late:  # an update we finished without this client's STORED: now it has it
                self._records.persist(
                    record.replace(unacked=tuple(x for x in record.unacked if x not in late))
                )
                return
        if update is None or index is None or index not in [c.client for c in update.clients]:
            peer_log.warning(peer, "dropped an update message from %s", peer)
            return
        step = p.kind if isinstance(p, protocol.UpdateStep) else None
        if isinstance(p, protocol.UpdateStep) and p.session.hex() != update.session:
            return
        if step is protocol.UpdateStepKind.STORED and update.stage is UpdateStage.SIGNED:
            self._on_stored(record, s, index)  # also after our restart (no session)
            return
        if s is None:
            peer_log.warning(peer, "dropped an update message from %s: none running", peer)
            return
        if isinstance(p, protocol.Text):
            self._abandon(record.instance_id, f"client {peer} refused: {p.reason}")
        elif step is protocol.UpdateStepKind.READY and update.stage is UpdateStage.FREEZING:
            self._on_ready(record, s, index)
        elif step is protocol.UpdateStepKind.BELOW_STORED and update.stage is UpdateStage.BELOW:
            self._on_below_stored(record, s, index)
        elif isinstance(p, protocol.Ceremony) and s.coordinator is not None:
            self._on_ceremony(record, s, index, p)
        elif step is None:
            raise CeremonyError(f"unexpected {type(p).__name__} during an update")

    def _on_ceremony(
        self, record: store.LspRecord, s: _Session, index: int, p: protocol.Ceremony
    ) -> None:
        assert s.coordinator is not None
        out = s.coordinator.receive(index, p.message)
        s.deadline = self._deadline()
        if s.coordinator.state is CoordinatorState.DONE and out:
            s.signed.update(s.coordinator.signed)
            if len(s.signed) == sum(len(ph) for ph in s.phases):
                self._commit(record.instance_id, s)  # persisted before the signatures leave
            else:  # the txs below the moved node: every client stores them first
                self._set_stage(record.instance_id, UpdateStage.BELOW)
        for c, data in out.items():
            self._send(record.clients[c].node_id, protocol.Ceremony(p.instance_id, data))

    def _on_below_stored(self, record: store.LspRecord, s: _Session, index: int) -> None:
        record = self._set_client(record.instance_id, index, below_stored=True)
        s.deadline = self._deadline()
        assert record.update is not None
        if all(c.below_stored for c in record.update.clients):
            self._set_stage(record.instance_id, UpdateStage.SIGNING)
            self._start_phase(record, s, s.phases[-1])

    def _set_stage(self, instance: str, stage: UpdateStage) -> store.LspRecord:
        record = self._lsp_record(instance)
        assert record.update is not None
        record = record.replace(update=dataclasses.replace(record.update, stage=stage))
        self._records.persist(record)
        return record

    def _start_phase(self, record: store.LspRecord, s: _Session, nodes: list[int]) -> None:
        assert s.factory is not None
        key = self._node.lsp_key(record.instance_id)
        outpoint = (record.funding_txid or "", record.funding_vout or 0)
        s.coordinator = Coordinator(s.factory, key, outpoint, s.plan.states, nodes)
        moved = (s.plan.node, s.plan.states[s.plan.node])
        if nodes == [s.plan.node] and moved not in record.spent:
            # clients may sign it from now on: a later update of this node moves past it
            record = record.replace(spent=(*record.spent, moved))
            self._records.persist(record)
        instance = bytes.fromhex(record.instance_id)
        for index, data in s.coordinator.start().items():
            self._send(record.clients[index].node_id, protocol.Ceremony(instance, data))

    def _set_client(self, instance: str, index: int, **changes: Any) -> store.LspRecord:
        record = self._lsp_record(instance)
        assert record.update is not None
        clients = tuple(
            dataclasses.replace(c, **changes) if c.client == index else c
            for c in record.update.clients
        )
        record = record.replace(update=dataclasses.replace(record.update, clients=clients))
        self._records.persist(record)
        return record

    def _on_ready(self, record: store.LspRecord, s: _Session, index: int) -> None:
        record = self._set_client(record.instance_id, index, ready=True)
        s.deadline = self._deadline()
        assert record.update is not None
        if not all(c.ready for c in record.update.clients):
            return
        try:
            self._open(record, s)
        except (RpcFailed, InvalidParameter) as e:
            self._abandon(record.instance_id, str(e))

    def _open(self, record: store.LspRecord, s: _Session) -> None:
        update = record.update
        assert update is not None
        instance = bytes.fromhex(record.instance_id)
        ewt = topology(record).ewt
        entries = [record.clients[c.client] for c in update.clients]
        for e in entries:
            record_in = blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, instance, ewt)
            self._send(e.node_id, protocol.InFactory(instance, record_in))
        by_node = {record.clients[c.client].node_id: c for c in update.clients}
        timeout = self._node.config.ceremony_timeout
        scripts = funding.per_client(
            entries,
            lambda e: funding.start_channel(
                self._node.rpc, e, by_node[e.node_id].channel_sat, UPDATE_PUSH_MSAT
            ),
            "fundchannel_start",
            timeout,
        )
        failed = [x for x in scripts if isinstance(x, RpcFailed)]
        if failed:
            raise failed[0]
        script_of = {
            c.client: bytes.fromhex(str(x)) for c, x in zip(update.clients, scripts, strict=True)
        }
        s.factory = updated_factory(factory_of(record), s.plan, script_of)
        outpoint = (record.funding_txid or "", record.funding_vout or 0)
        txs = s.factory.transactions(outpoint, s.plan.states, s.factory.topology.leaves)
        leaves = {c: txs[s.factory.topology.leaf_of_client[c]] for c in script_of}
        ids = funding.per_client(
            entries,
            lambda e: funding.complete_channel(
                self._node.rpc, e, leaves[by_node[e.node_id].client]
            ),
            "fundchannel_complete",
            timeout,
        )
        for c, x in zip(update.clients, ids, strict=True):
            if not isinstance(x, RpcFailed):
                record = self._set_client(
                    record.instance_id,
                    c.client,
                    channel_id=x,
                    channel_script=script_of[c.client].hex(),
                )
        failed = [x for x in ids if isinstance(x, RpcFailed)]
        if failed:
            raise failed[0]
        record = self._set_stage(record.instance_id, UpdateStage.SIGNING)
        s.phases = signing_phases(s.factory, s.plan.node)
        self._start_phase(record, s, s.phases[0])

    # --- 3. the new state exists: keep it -------------------------------------------------------

    def _commit(self, instance: str, s: _Session) -> None:
        """The tree, channels, stocks and odometer of the new state; the folded sales dropped and
        the channels they and the old leaves funded retired. Persisted before the final
        signatures leave."""
        record = self._lsp_record(instance)
        update = record.update
        assert update is not None and s.factory is not None
        new_entries = {
            n: store.PathEntry(
                n,
                s.plan.states[n],
                t.raw().hex(),
                t.unsigned.spent_amount,
                t.unsigned.spent_script.hex(),
            )
            for n, t in s.signed.items()
        }
        tree = tuple(new_entries.get(e.node, e) for e in record.tree)
        clients = list(record.clients)
        retired = list(record.retired)
        for c in update.clients:
            clients[c.client] = dataclasses.replace(
                clients[c.client],
                channel_sat=c.channel_sat,
                channel_script=c.channel_script,
                channel_id=c.channel_id,
            )
            retired.extend(c.old_channels)
        record = record.replace(
            tree=tree,
            clients=tuple(clients),
            stocks=s.plan.stocks,
            sales=tuple(e for e in record.sales if e.leaf not in s.plan.leaves),
            retired=tuple(retired),
            update=dataclasses.replace(update, stage=UpdateStage.SIGNED),
            # the tree now holds a newer state at the moved node and new txs below it
            spent=tuple(x for x in record.spent if x[0] not in new_entries),
            unacked=tuple(x for x in record.unacked if x[1] not in s.plan.clients),
        )
        self._records.persist(record)
        self._guards.refresh()
        events.factory_update(instance, "signed", s.plan.node, list(s.plan.clients))
        if s.reply is not None and not isinstance(s.reply, Then):
            # the new state exists: `factory-update` answers (a sale's refill waits for every
            # STORED: its buyer's balance must be spendable in its new channel first)
            s.reply.set_result(self.view(record))
            s.reply = None

    def _on_stored(self, record: store.LspRecord, s: _Session | None, index: int) -> None:
        record = self._set_client(record.instance_id, index, stored=True)
        update = record.update
        assert update is not None
        if not all(c.stored for c in update.clients):
            return
        old = [cid for c in update.clients for cid in c.old_channels]
        record = record.replace(update=None)
        self._records.persist(record)
        self._sessions.pop(record.instance_id, None)
        log.info("factory %s: updated node %d", record.instance_id[:16], update.node)
        clients = [c.client for c in update.clients]
        events.factory_update(record.instance_id, "stored", update.node, clients)
        for cid in old:  # they can never confirm: no commitment fallback (unilateraltimeout 0)
            funding.close_retired(self._node.rpc, cid)
        if s is not None and s.reply is not None:
            s.reply.set_result(self.view(record))
            s.reply = None

    def on_block(self, height: int) -> None:
        """Worker, at every block: the moved node's final signature again to every client that
        has not stored the new state (a lost message, a restart on either side). A signed
        update still missing STOREDs `ACK_BLOCKS` after it began is finished anyway (a client
        cannot hold the factory's next updates hostage); its stragglers keep getting it."""
        for record in self._records.all():
            if not isinstance(record, store.LspRecord):
                continue
            update = record.update
            if update is not None and update.stage is UpdateStage.SIGNED:
                if height >= update.started_height + ACK_BLOCKS:
                    record = self._finish_unacked(record)
                else:
                    for c in update.clients:
                        if not c.stored:
                            self._resend(record, c.client, update.session, update.node)
            for key, client in record.unacked:
                session, node = key.split(":")
                self._resend(record, client, session, int(node))

    def _resend(self, record: store.LspRecord, client: int, session: str, node: int) -> None:
        entry = next(e for e in record.tree if e.node == node)
        signed = SignedNodeTx.from_raw(
            node, bytes.fromhex(entry.raw), entry.spent_amount, bytes.fromhex(entry.spent_script)
        )
        message = protocol.UpdateSig(
            bytes.fromhex(record.instance_id), bytes.fromhex(session), node, signed.signature
        )
        self._send(record.clients[client].node_id, message)

    def _finish_unacked(self, record: store.LspRecord) -> store.LspRecord:
        update = record.update
        assert update is not None
        late = [
            (f"{update.session}:{update.node}", c.client) for c in update.clients if not c.stored
        ]
        log.warning(
            "factory %s: update of node %d finished without STORED from clients %s",
            record.instance_id[:16],
            update.node,
            [c for _, c in late],
        )
        self._records.persist(record.replace(unacked=(*record.unacked, *late)))
        for _, client in late:  # as if stored: the last one finishes the update
            latest = self._lsp_record(record.instance_id)
            self._on_stored(latest, self._sessions.get(record.instance_id), client)
        return self._lsp_record(record.instance_id)

    @staticmethod
    def view(record: store.LspRecord) -> dict[str, Any]:
        states = states_of(record)
        factory = factory_of(record)
        return {
            "instance": record.instance_id,
            "states": list(states),
            "stocks": [
                {"leaf": leaf, "stock_sat": factory.stock_sat_of(leaf)}
                for leaf in factory.topology.leaves
            ],
            "channels": [
                {"client": c.node_id, "channel_id": c.channel_id, "channel_sat": c.channel_sat}
                for c in record.clients
            ],
        }

    # --- deadlines and abandon ------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        for instance, s in list(self._sessions.items()):
            if now <= s.deadline:
                continue
            record = self._lsp_record(instance)
            if record.update is not None and record.update.stage is UpdateStage.SIGNED:
                waiting = [c.client for c in record.update.clients if not c.stored]
                log.warning(
                    "factory %s: the new state is signed; clients %s have not stored it yet",
                    instance[:16],
                    waiting,
                )
                s.deadline = self._deadline()
                continue
            silent = s.coordinator.waiting_for if s.coordinator is not None else []
            ids = [record.clients[c].node_id for c in silent]
            self._abandon(instance, f"clients {ids or 'below the node'} did not answer in time")

    def resume(self, record: store.LspRecord) -> None:
        """After a restart: an update whose state was not yet signed is abandoned (the nonces
        are gone); a signed one waits for the clients' STORED, its signature sent again at each
        block (`on_block`)."""
        if record.update is None or record.update.stage is UpdateStage.SIGNED:
            return
        self._sessions[record.instance_id] = _Session(plan_stub(record), time.monotonic())
        self._abandon(record.instance_id, "the LSP restarted during the update")

    def _abandon(self, instance: str, reason: str) -> None:
        s = self._sessions.pop(instance, None)
        record = self._lsp_record(instance)
        update = record.update
        if update is None or update.stage is UpdateStage.SIGNED:
            return
        log.warning("factory %s: update abandoned: %s", instance[:16], reason)
        for c in update.clients:
            node_id = record.clients[c.client].node_id
            if c.channel_id:
                funding.close_retired(self._node.rpc, c.channel_id)
            elif update.stage is UpdateStage.SIGNING or c.ready:
                funding.cancel(self._node.rpc, node_id)
            self._send(
                node_id, protocol.Text(protocol.PayloadType.ABORT, bytes.fromhex(instance), reason)
            )
        self._records.persist(record.replace(update=None))
        self._guards.refresh()
        events.factory_update(
            instance, "abandoned", update.node, [c.client for c in update.clients]
        )
        if s is not None and s.reply is not None:
            s.reply.set_exception(rpc_exception(CeremonyError(f"factory-update failed: {reason}")))

    # --- helpers --------------------------------------------------------------------------------

    def _lsp_record(self, instance: str) -> store.LspRecord:
        record = self._records.get(instance)
        assert isinstance(record, store.LspRecord)
        return record

    def _send(self, node_id: str, p: protocol.Payload) -> None:
        try:
            self._peers.send(node_id, p)
        except Exception as e:
            log.info("could not send %s to %s: %s", type(p).__name__, node_id, why(e))
