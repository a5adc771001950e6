"""The LSP side of a factory's creation: propose, open channels, sign, complete, fund, abort.

Owns: the creations in flight (`LspSession`: record, pending `factory-create` reply, deadline,
coordinator with its secret nonces, never persisted). Worker thread only.
May call: `funding` (lightningd's wallet and channels), `peers` (messages to clients), `records`,
`guards.refresh` and `status` (the reply once funded).

The order: propose; every client accepts with its key and its public nonces for its path's
nodes; reserve inputs (done at the proposal, so the funding txid is fixed); per client
`channel_in_factory` then `fundchannel_start`; build the tree; `fundchannel_complete` per channel
with its unsigned leaf (so each client's own node holds its channel, whose funding keys it checks
against its leaf output before it signs: `nodedb`); the SIGN_REQUESTs carry the aggregate nonces,
each client answers with its partial signatures, the final signatures go back; every client
stores its path; only then sign and broadcast the funding. Any failure before the broadcast aborts: channels cancelled or closed, inputs freed,
clients told, the culprit named.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ...engine import blip56, dw, musig2, protocol, store
from ...engine.ceremony import Coordinator, CoordinatorState
from ...engine.errors import CeremonyError, InvalidParameter, InvalidPartialSignature
from ...engine.tree import ClientSlot, Factory, FactoryParams, Topology
from ..lightningd import address, psbt as psbtmod
from ..lightningd.guards import Guards
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import Records
from ..lightningd.runtime import PeerUnreachable, Reply, RpcFailed, fail, rpc_exception, why
from ..operator import events
from ..operator.status import StatusView
from . import funding
from .lsp_checks import accepted_nonces, culprit, probe_factory, reason_for

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)  # what a peer can trigger at will: once a minute per peer

COMPLETING_PATIENCE = 144
ABORT_WAIT = 10.0  # seconds an abort waits for the fundchannel_start calls in flight  # blocks after creation to wait for a funding sent before a restart


@dataclass
class LspSession:
    """What an in-flight LSP factory keeps in memory only (never persisted: secret nonces)."""

    record: store.LspRecord
    reply: Reply | None
    deadline: float
    factory: Factory | None = None
    coordinator: Coordinator | None = None
    opened: set[int] = field(default_factory=set)
    index_of: dict[str, int] = field(default_factory=dict)  # client node id -> its index
    ewt: int = 0  # the shape's early warning time (computed once: a topology is O(clients))
    topology: Topology | None = None
    nonces: dict[int, dict[int, bytes]] = field(default_factory=dict)  # each ACCEPT's, by node
    scripts: dict[int, str] = field(default_factory=dict)  # started channels' funding scripts
    pool: ThreadPoolExecutor | None = None  # the fundchannel_start calls in flight
    starts: list[Future[None]] = field(default_factory=list)
    # Where the creation's time goes (seconds per phase), returned with factory-create.
    timings: dict[str, float] = field(default_factory=dict)
    last_mark: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.index_of = {c.node_id: i for i, c in enumerate(self.record.clients)}
        self.topology = Topology.build(len(self.record.clients), self.record.params)
        self.ewt = self.topology.ewt

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.timings[phase] = round(now - self.last_mark, 3)
        self.last_mark = now


class LspRole:
    def __init__(
        self,
        node: Node,
        records: Records,
        peers: Peers,
        guards: Guards,
        view: StatusView,
        submit: Callable[[Callable[[], None]], None],
    ) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._guards = guards
        self._view = view
        self._submit = submit
        self._sessions: dict[str, LspSession] = {}

    def runs(self, instance: str) -> bool:
        return instance in self._sessions

    # --- start-up and blocks ------------------------------------------------------------------

    def resume(self, record: store.LspRecord) -> None:
        """After a restart: a ceremony in flight cannot resume (its nonces are gone, by design).
        Abort what was not funded, so inputs are freed and clients told; keep the rest."""
        if record.state in (store.LspState.FUNDED, store.LspState.ABORTED):
            return
        session = LspSession(record, None, 0.0)
        self._sessions[record.instance_id] = session
        if record.state is store.LspState.COMPLETING and all(c.channel_id for c in record.clients):
            # Every client stored its path and every channel is complete: only the funding's
            # broadcast may be missing. Finish (sending again is harmless).
            self._submit(lambda: self._broadcast_funding(session, resumed=True))
        else:
            self._submit(lambda: self._abort(session, "the LSP restarted during creation"))

    def on_block(self, height: int) -> None:
        """A restart caught the LSP between the last channel and the funding broadcast: the
        funding confirming makes the factory funded; a day without it, and it is abandoned."""
        for record in self._records.all():
            if not (
                isinstance(record, store.LspRecord)
                and record.state is store.LspState.COMPLETING
                and all(c.channel_id for c in record.clients)
            ):
                continue
            if record.funding_txid in dict(record.confirmed):
                self._funded(record)
            elif height > record.created_height + COMPLETING_PATIENCE:
                session = self._sessions.get(record.instance_id)
                if session is not None:
                    self._abort(session, "the funding never confirmed after a restart")

    def check_deadlines(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if session.reply is not None and session.deadline and now > session.deadline:
                self._abort(session, self._silent_clients(session))

    def _silent_clients(self, s: LspSession) -> str:
        r = s.record
        if r.state is store.LspState.PROPOSING:
            waiting = [c.node_id for c in r.clients if c.pubkey is None]
            step = "accept the proposal"
        elif r.state is store.LspState.OPENING:
            waiting = [c.node_id for i, c in enumerate(r.clients) if i not in s.scripts]
            timeout = self._node.config.ceremony_timeout
            who = ", ".join(waiting) if waiting else "a peer"
            return f"client {who}: fundchannel_start did not return within {timeout:g} s"
        elif r.state is store.LspState.SIGNING and s.coordinator is not None:
            if s.coordinator.state is CoordinatorState.DONE:
                waiting = [c.node_id for c in r.clients if not c.stored]
                step = "store its signed path"
            else:
                waiting = [r.clients[i].node_id for i in s.coordinator.waiting_for]
                step = "answer the signing ceremony"
        else:
            waiting, step = [], f"finish step {r.state.value}"
        who = ", ".join(waiting) if waiting else "a peer"
        timeout = self._node.config.ceremony_timeout
        return f"timed out: client {who} did not {step} within {timeout:g}s"

    # --- propose ------------------------------------------------------------------------------

    def create(
        self, reply: Reply, clients: list[str], channel_sat: list[int], params: FactoryParams
    ) -> None:
        """`factory-create` on the worker: check, reserve the inputs, propose to every client."""
        started = time.monotonic()
        try:
            record = self._new_record(clients, channel_sat, params)
        except Exception as e:
            fail(reply, e, "factory-create failed")
            return
        self._propose(LspSession(record, reply, self._deadline(), last_mark=started))

    def _new_record(
        self, clients: list[str], channel_sat: list[int], params: FactoryParams
    ) -> store.LspRecord:
        self._check_clients(clients)
        instance = os.urandom(32).hex()
        lsp_pub = musig2.pubkey_from_secret(self._node.lsp_key(instance))
        height = self._node.height
        timeout = height + self._node.config.lifetime_blocks
        probe = probe_factory(params, lsp_pub, channel_sat, timeout)
        if timeout - height <= 2 * probe.topology.ewt:
            raise InvalidParameter(
                f"lifetime {self._node.config.lifetime_blocks} blocks is too short for an early"
                f" warning time of {probe.topology.ewt}"
            )
        funded = funding.reserve_inputs(
            self._node.rpc, probe.funding_amount, self._node.config.funding_feerate
        )
        return store.LspRecord(
            instance_id=instance,
            state=store.LspState.PROPOSING,
            params=params,
            timeout_height=timeout,
            lsp_pubkey=lsp_pub.hex(),
            clients=tuple(
                store.ClientEntry(n, s) for n, s in zip(clients, channel_sat, strict=True)
            ),
            created_height=height,
            funding_psbt=funded,
            funding_amount=probe.funding_amount,
        )

    def _check_clients(self, clients: list[str]) -> None:
        peers = {p["id"]: p for p in self._node.rpc.call("listpeers").get("peers", [])}
        for c in clients:
            if c == self._node.id:
                raise InvalidParameter(f"client {c} is this node itself")
            if not peers.get(c, {}).get("connected"):
                raise InvalidParameter(f"client {c} is not connected")
            if not self._peers.speaks_superscalar(c):
                raise InvalidParameter(
                    f"client {c} has not announced SuperScalar support (is the plugin running there?)"
                )

    def _propose(self, s: LspSession) -> None:
        r = s.record
        self._sessions[r.instance_id] = s
        self._records.persist(r)
        instance = bytes.fromhex(r.instance_id)
        ewt = s.ewt
        lsp_pub = bytes.fromhex(r.lsp_pubkey)
        n = len(r.clients)
        proposals = [
            (
                c.node_id,
                protocol.Propose(
                    instance, i, n, r.params, r.timeout_height, lsp_pub, c.channel_sat, ewt
                ),
            )
            for i, c in enumerate(r.clients)
        ]
        unreachable = self._peers.send_all(proposals)
        if unreachable:
            peer, e = unreachable[0]
            self._abort(s, f"client {peer}: {e}")
            return
        log.info("factory %s: proposed to %d clients", r.instance_id[:16], len(r.clients))

    def _deadline(self) -> float:
        return time.monotonic() + self._node.config.ceremony_timeout

    # --- messages from clients ----------------------------------------------------------------

    def on_payload(self, instance: str, peer: str, p: protocol.Payload) -> None:
        s = self._sessions[instance]
        r = s.record
        index = s.index_of.get(peer)
        if index is None:
            # Only participants may disturb a factory: a stranger's message is dropped, not fatal.
            peer_log.warning(
                peer,
                "dropped a message from %s, not a client of factory %s",
                peer,
                r.instance_id[:16],
            )
            return
        s.deadline = self._deadline()  # progress: wait again
        if isinstance(p, protocol.Text):
            self._abort(s, f"client {peer} refused: {p.reason}")
        elif isinstance(p, protocol.Accept) and r.state is store.LspState.PROPOSING:
            self._on_accept(s, index, p)
        elif isinstance(p, protocol.Ceremony) and r.state is store.LspState.SIGNING:
            assert s.coordinator is not None
            try:
                out = s.coordinator.receive(index, p.message)
            except InvalidPartialSignature as e:  # found when the last one came: name its signer
                self._abort(s, f"client {culprit(s.record.clients, e.signer, peer)}: {e}")
                return
            try:
                self._send_ceremony(s, out)
            except PeerUnreachable as e:  # the client that hung up, not the one that answered
                self._abort(s, str(e))
        elif isinstance(p, protocol.Stored) and r.state is store.LspState.SIGNING:
            self._on_stored(s, index, p)
        else:
            raise CeremonyError(f"unexpected {type(p).__name__} in state {r.state.value}")

    def _on_accept(self, s: LspSession, index: int, p: protocol.Accept) -> None:
        musig2.xonly(p.client_pubkey)  # a valid point, or MuSigError
        if s.record.clients[index].pubkey is not None:
            raise CeremonyError("accepted twice")
        key = p.client_pubkey.hex()
        if key == s.record.lsp_pubkey:
            raise CeremonyError("its factory key is the LSP's own key")
        if any(c.pubkey == key for c in s.record.clients):
            raise CeremonyError("its factory key is already another client's")
        assert s.topology is not None
        s.nonces[index] = accepted_nonces(s.topology, index, p)
        # In memory: nothing sent depends on it before the OPENING record (every key) is
        # persisted, and a restart before that aborts (the keys are not needed to clean up).
        self._update_client(s, index, pubkey=key)
        self._start_channel(s, index)
        if all(c.pubkey for c in s.record.clients):
            s.mark("propose_accept")
            s.record = s.record.replace(state=store.LspState.OPENING)
            self._records.persist(s.record)
            self._open_channels(s)  # now, if every channel is started already

    def _on_stored(self, s: LspSession, index: int, p: protocol.Stored) -> None:
        assert s.coordinator is not None
        if s.coordinator.state is not CoordinatorState.DONE or p.session != s.coordinator.session:
            raise CeremonyError("STORED before the ceremony finished")
        # In memory: a restart while SIGNING aborts whatever was stored; the COMPLETING record
        # (every client stored, the tree) is persisted before the funding is signed and sent.
        self._update_client(s, index, stored=True)
        if all(c.stored for c in s.record.clients):
            self._complete(s)

    def _update_client(self, s: LspSession, index: int, **changes: Any) -> None:
        """Change one client's entry in memory; the caller persists at the phase's end (one
        record write per phase, not per client: a write is O(clients), so per client O(n^2))."""
        clients = list(s.record.clients)
        clients[index] = dataclasses.replace(clients[index], **changes)
        s.record = s.record.replace(clients=tuple(clients))

    def _send_ceremony(self, s: LspSession, out: dict[int, bytes]) -> None:
        """Ceremony messages to clients (by index), all at once."""
        instance = bytes.fromhex(s.record.instance_id)
        clients = s.record.clients
        unreachable = self._peers.send_all(
            [(clients[c].node_id, protocol.Ceremony(instance, data)) for c, data in out.items()]
        )
        if unreachable:  # named first: a ladder's next successor goes without it
            peer, e = unreachable[0]
            raise PeerUnreachable(f"client {peer}: {e}") from e

    # --- channels, signing, completion, funding -----------------------------------------------

    def _start_channel(self, s: LspSession, index: int) -> None:
        """A client accepted: `channel_in_factory`, then its `fundchannel_start` in the
        background (PARALLEL_PEERS at once) while the others still decide; the result comes
        back to the worker (`_on_started`)."""
        r = s.record
        c = r.clients[index]
        instance = bytes.fromhex(r.instance_id)
        in_factory = blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, instance, s.ewt)
        s.opened.add(index)  # a late or failed open is cancelled too on abort
        if s.pool is None:
            s.pool = ThreadPoolExecutor(max_workers=funding.PARALLEL_PEERS)

        def start() -> None:
            try:
                # Before its client's open_channel, on the same connection.
                self._peers.send(c.node_id, protocol.InFactory(instance, in_factory))
                result: str | RpcFailed = funding.start_channel(self._node.rpc, c)
            except PeerUnreachable as e:
                result = RpcFailed(f"client {c.node_id}: {e}")
            except Exception as e:  # our bug: the creation aborts, naming it
                result = RpcFailed(f"client {c.node_id}: fundchannel_start: internal error {e!r}")
            self._submit(lambda: self._on_started(s, index, result))

        s.starts.append(s.pool.submit(start))

    def _on_started(self, s: LspSession, index: int, result: str | RpcFailed) -> None:
        node_id = s.record.clients[index].node_id
        if self._sessions.get(s.record.instance_id) is not s or s.record.state not in (
            store.LspState.PROPOSING,
            store.LspState.OPENING,
        ):
            if not isinstance(result, RpcFailed):  # an open the abort could not cancel yet
                funding.cancel(self._node.rpc, node_id)
            return
        if isinstance(result, RpcFailed):
            self._abort(s, str(result))
            return
        s.scripts[index] = result
        s.deadline = self._deadline()  # progress
        self._open_channels(s)

    def _open_channels(self, s: LspSession) -> None:
        """Once every client accepted and every channel is started: build the tree on the
        channels' scripts, add the funding output and start the signing ceremony."""
        if s.record.state is not store.LspState.OPENING or len(s.scripts) < len(s.record.clients):
            return
        s.mark("fundchannel_start")
        if s.pool is not None:
            s.pool.shutdown(wait=False)
        scripts = [s.scripts[i] for i in range(len(s.record.clients))]
        factory = self._factory_on(s.record, scripts)
        if factory.funding_amount != s.record.funding_amount:
            self._abort(s, "channel scripts changed the funding amount (non-P2WSH channel?)")
            return
        destination = address.encode(factory.funding_output.script_pubkey, self._node.network())
        try:
            funding_psbt, vout = funding.add_funding_output(
                self._node.rpc, s.record.funding_psbt or "", factory.funding_amount, destination
            )
        except RpcFailed as e:
            self._abort(s, str(e))
            return
        self._start_signing(s, factory, scripts, funding_psbt, vout)

    def _factory_on(self, r: store.LspRecord, scripts: list[str]) -> Factory:
        slots = [
            ClientSlot(bytes.fromhex(c.pubkey or ""), bytes.fromhex(sc), c.channel_sat)
            for sc, c in zip(scripts, r.clients, strict=True)
        ]
        return Factory.create(r.params, bytes.fromhex(r.lsp_pubkey), slots, r.timeout_height)

    def _start_signing(
        self, s: LspSession, factory: Factory, scripts: list[str], funding_psbt: str, vout: int
    ) -> None:
        r = s.record
        txid = psbtmod.unsigned_txid(funding_psbt)
        clients = [
            dataclasses.replace(c, channel_script=sc)
            for c, sc in zip(r.clients, scripts, strict=True)
        ]
        s.record = r = r.replace(
            state=store.LspState.SIGNING,
            clients=tuple(clients),
            funding_psbt=funding_psbt,
            funding_txid=txid,
            funding_vout=vout,
        )
        s.factory = factory
        lsp_key = self._node.lsp_key(r.instance_id)
        states = dw.initial_states(factory.topology)
        s.coordinator = Coordinator(factory, lsp_key, (txid, vout), states, client_nonces=s.nonces)
        self._records.persist(r)
        self._complete_channels(s, factory, s.coordinator)

    def _complete_channels(self, s: LspSession, factory: Factory, coordinator: Coordinator) -> None:
        """`fundchannel_complete` for every client with its unsigned leaf (a leaf's txid does not
        depend on witnesses) BEFORE its part of the ceremony: a client signs nothing until its
        own node holds that channel (`nodedb`). The completed channels' ids are persisted in one
        write (a restart or an abort closes them), then their clients get their SIGN_REQUEST.
        One failure aborts the creation."""
        leaves = {
            c.node_id: coordinator.txs[factory.topology.leaf_of_client[i]]
            for i, c in enumerate(s.record.clients)
        }
        requests = coordinator.start()
        unreachable: list[Exception] = []

        def on_batch(done: dict[int, str | RpcFailed]) -> None:
            for i, x in done.items():
                if not isinstance(x, RpcFailed):
                    self._update_client(s, i, channel_id=x)
            self._records.persist(s.record)  # before any SIGN_REQUEST that depends on it
            if unreachable or any(isinstance(x, RpcFailed) for x in done.values()):
                return  # the creation aborts: no client is asked to sign any more
            try:
                self._send_ceremony(s, {i: requests[i] for i in done})
            except PeerUnreachable as e:
                unreachable.append(e)

        results = funding.per_client(
            s.record.clients,
            lambda c: funding.complete_channel(self._node.rpc, c, leaves[c.node_id]),
            "fundchannel_complete",
            self._node.config.ceremony_timeout,
            on_batch,
            # One batch: SIGN_REQUESTs sent while channels still complete slowed lightningd's
            # completes more than they saved (64 clients: 4.5-4.9 s against 3.6-4.2 s; again
            # with the nonces in the ACCEPTs, batches of 16: 128 clients 9.05 s against 7.94 s).
            len(s.record.clients),
        )
        failed = [x for x in results if isinstance(x, RpcFailed)] + unreachable
        if failed:
            self._abort(s, str(failed[0]))
            return
        # Progress: every client now has its request and the full timeout to answer it (a
        # deadline from the last start would name every client once slow completes ate it).
        s.deadline = self._deadline()
        s.mark("fundchannel_complete")

    def _complete(self, s: LspSession) -> None:
        """Every client stored its path: keep the signed tree, then fund (every channel was
        completed before the ceremony)."""
        coordinator, factory = s.coordinator, s.factory
        assert coordinator is not None and factory is not None
        tree = tuple(
            store.PathEntry(
                n,
                coordinator.states[n],
                t.raw().hex(),
                t.unsigned.spent_amount,
                t.unsigned.spent_script.hex(),
            )
            for n, t in sorted(coordinator.signed.items())
        )
        s.mark("sign")
        s.record = s.record.replace(state=store.LspState.COMPLETING, tree=tree)
        self._records.persist(s.record)
        self._broadcast_funding(s)

    def _broadcast_funding(self, s: LspSession, resumed: bool = False) -> None:
        """Sign and send the funding tx (the last step). A refusal aborts, as nothing is on chain;
        after a restart it may have been sent already, so then the chain decides (`on_block`)."""
        try:
            txid = funding.sign_and_send(self._node.rpc, s.record.funding_psbt or "")
            if txid != s.record.funding_txid:
                raise RpcFailed(
                    f"sendpsbt broadcast funding {txid}, not {s.record.funding_txid} that the"
                    " clients signed against"
                )
        except RpcFailed as e:
            if not resumed:
                self._abort(s, str(e))
                return
            log.warning(
                "factory %s: funding not sent again (%s); waiting to see it confirm",
                s.record.instance_id[:16],
                e,
            )
            return
        self._funded(s.record.replace(funding_txid=txid))

    def _funded(self, record: store.LspRecord) -> None:
        """The funding is out: persist, tell the clients while the new channels get their
        guards, then answer factory-create (every client told by then)."""
        s = self._sessions.setdefault(record.instance_id, LspSession(record, None, 0.0))
        s.record = r = record.replace(state=store.LspState.FUNDED)
        self._records.persist(r)
        txid = r.funding_txid or ""
        funded = protocol.Funded(bytes.fromhex(r.instance_id), txid, r.funding_vout or 0)
        # A client offline now learns it from the chain later. Sent beside the listing below
        # (both wait on lightningd, 128 clients: about 0.2 s and 0.3 s).
        with ThreadPoolExecutor(1) as tell:
            told = tell.submit(self._peers.send_all, [(c.node_id, funded) for c in r.clients])
            log.info("factory %s funded: %s", r.instance_id[:16], txid)
            try:  # one listing for the guards and the reply (O(channels) each)
                listed: dict[str, dict[str, Any]] | None = self._node.channels()
            except ChannelsUnavailable:
                listed = None  # the guards keep their rules; the reply shows no channel state
            self._guards.refresh(listed)  # before the reply: the operator may use the channels
            for peer, e in told.result():
                log.info("could not tell %s about the funding: %s", peer, why(e))
        s.mark("fund")
        events.factory_created(r.instance_id, [c.node_id for c in r.clients], txid, s.timings)
        if s.reply is not None:
            s.reply.set_result({**self._view.of(r, listed or {}), "timings": s.timings})
            s.reply = None

    # --- abort --------------------------------------------------------------------------------

    def abort(self, instance: str, reason: str) -> None:
        self._abort(self._sessions[instance], reason)

    def _abort(self, s: LspSession, reason: str) -> None:
        r = s.record
        if r.state in (store.LspState.FUNDED, store.LspState.ABORTED):
            return
        if s.pool is not None:  # the opens in flight first, so they are cancelled below
            s.pool.shutdown(wait=False, cancel_futures=True)
            wait(s.starts, timeout=min(ABORT_WAIT, self._node.config.ceremony_timeout))
        funding.release(self._node.rpc, r, s.opened)
        s.record = r.replace(state=store.LspState.ABORTED, error=reason)
        self._records.persist(s.record)
        log.warning("factory %s aborted: %s", r.instance_id[:16], reason)
        if s.coordinator is not None:
            s.coordinator.abort(reason)
        ids = [c.node_id for c in r.clients]
        instance = bytes.fromhex(r.instance_id)
        aborts = [
            (c, protocol.Text(protocol.PayloadType.ABORT, instance, reason_for(c, reason, ids)))
            for c in ids
        ]
        for peer, e in self._peers.send_all(aborts):
            log.info("could not tell %s about the abort: %s", peer, why(e))
        if s.reply is not None:
            s.reply.set_exception(
                rpc_exception(CeremonyError(f"factory creation failed: {reason}"))
            )
            s.reply = None
