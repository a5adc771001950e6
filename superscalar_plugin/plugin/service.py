"""The factory service of one node: LSP of the factories it creates, client of those it joins.

Threading: pyln-client runs one dispatch loop; a handler that waited for a peer there would
deadlock. Hooks and notifications therefore only enqueue work (or read state under the lock and
answer at once, like the `openchannel` decision); one worker thread runs every step in order:
message in -> persist -> messages out. Long RPCs (`fundchannel_start`) run on the worker too.

Nothing here imports pyln: the lightningd connection is the small `Rpc` protocol, so the service
is exercised by the harness and by a real lightningd alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine import blip56, dw, musig2, policy, protocol, store
from ..engine.ceremony import (
    ClientPolicy,
    ClientTerms,
    Coordinator,
    CoordinatorState,
    Signer,
    SignerState,
)
from ..engine.errors import (
    CeremonyError,
    InvalidParameter,
    MuSigError,
    StoreError,
    SuperscalarError,
    WireError,
)
from ..engine.tree import ClientSlot, Factory, FactoryParams, Topology
from ..engine.tx import Tx
from . import address
from . import psbt as psbtmod
from .onchain import OnChain

log = logging.getLogger("superscalar")

DATASTORE_ROOT = ["superscalar", "factories"]
MIN_CHANNEL_SAT = 20_000  # a floor above Core Lightning's default min-capacity-sat (10,000)
FACTORY_PUSH_MSAT = 1000


class RpcFailed(SuperscalarError):
    """lightningd refused an RPC the service made."""

    rpc_code = 1410


class PeerUnreachable(CeremonyError):
    """A message could not be handed to a peer (disconnected, unknown)."""


class Rpc(Protocol):
    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any: ...


class Reply(Protocol):
    """An RPC request still waiting for its answer (pyln's Request)."""

    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exc: Exception) -> None: ...


@dataclass(frozen=True)
class Config:
    accept_from: frozenset[str] = frozenset()  # LSP node ids we join factories of ("any": all)
    max_ewt: int = 2016
    max_fee_rate_kvb: int = 50_000
    fee_rate_kvb: int = 2_000
    params: FactoryParams = field(default_factory=FactoryParams)
    lifetime_blocks: int = 4320  # ~30 days until the factory's timeout T
    ceremony_timeout: float = 60.0  # seconds a ceremony waits for any peer
    exit_margin: int = 12  # blocks of safety on top of the EWT before an exit starts
    funding_feerate: str = "normal"


@dataclass
class LspSession:
    """What an in-flight LSP factory keeps in memory only (never persisted: secret nonces)."""

    record: store.LspRecord
    reply: Reply | None
    deadline: float
    factory: Factory | None = None
    coordinator: Coordinator | None = None
    opened: set[int] = field(default_factory=set)


@dataclass
class ClientSession:
    record: store.ClientRecord
    signer: Signer
    deadline: float


def node_seckey(secret: bytes) -> bytes:
    """A valid secp256k1 secret key from 32 bytes of `makesecret` output."""
    key = secret
    while True:
        try:
            musig2.pubkey_from_secret(key)
            return key
        except MuSigError:  # zero or above the order: astronomically rare, rehash
            key = hashlib.sha256(key).digest()


class FactoryService:
    def __init__(self, rpc: Rpc, config: Config) -> None:
        self.rpc = rpc
        self.config = config
        self.lock = threading.RLock()
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.node_id = ""
        self.lsp: dict[str, LspSession] = {}
        self.clients: dict[str, ClientSession] = {}
        self.records: dict[str, store.Record] = {}
        self.protocol_peers: set[str] = set()  # peers that announced superscalar_v1
        self.expected_opens: dict[tuple[str, int], str] = {}  # (peer, msat) -> instance
        self.refused_opens: dict[tuple[str, int], str] = {}
        self.blockheight = 0
        self.guards: dict[str, policy.ChannelGuard] = {}  # scid or alias -> rules (hot path)
        self.cltv_final = 18
        self.max_locktime = 2016
        self.onchain = OnChain(self)
        self.ready = threading.Event()
        self.worker = threading.Thread(target=self._work, name="superscalar-worker", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; every RPC, start-up included, runs there. The pyln dispatch thread
        never waits on lightningd: with an `rpc_command` hook registered, lightningd may call back
        into this plugin for our own RPCs, and a dispatch thread blocked in an RPC would deadlock."""
        self.worker.start()
        self.submit(self._startup)

    def _startup(self) -> None:
        info = self.rpc.call("getinfo")
        self.node_id = info["id"]
        self.blockheight = int(info["blockheight"])
        self._load_records()
        self._read_configs()
        self.refresh_guards()
        self.ready.set()
        log.info("superscalar ready: node %s, %d factories", self.node_id, len(self.records))
        self._greet_connected_peers()

    def run_on_worker(self, reply: Reply, job: Callable[[], Any]) -> None:
        """Answer an RPC from the worker (it may call lightningd; the dispatch thread may not)."""

        def run() -> None:
            try:
                reply.set_result(job())
            except SuperscalarError as e:
                reply.set_exception(_rpc_exception(e))
            except Exception as e:
                log.exception("RPC failed")
                reply.set_exception(_rpc_exception(SuperscalarError(f"internal error: {e!r}")))

        self.submit(run)

    def stop(self) -> None:
        self.jobs.put(None)

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=0.5)
            except queue.Empty:
                job = self._check_deadlines
            if job is None:
                return
            try:
                job()
            except Exception:  # the worker must survive anything a peer or lightningd does
                log.exception("superscalar worker job failed")

    # --- persistence --------------------------------------------------------------------------

    def _load_records(self) -> None:
        res = self.rpc.call("listdatastore", {"key": DATASTORE_ROOT})
        for entry in res.get("datastore", []):
            text = entry.get("string")
            if text is None:
                continue
            try:
                record = store.from_json(json.loads(text))
            except (StoreError, ValueError) as e:
                log.error("ignoring unreadable factory record %s: %s", entry.get("key"), e)
                continue
            self.records[record.instance_id] = record
        for record in list(self.records.values()):
            self._resume(record)

    def _resume(self, record: store.Record) -> None:
        """After a restart: a ceremony in flight cannot resume (its nonces are gone, by design).
        Abort what was not funded, so inputs are freed and clients told; keep the rest."""
        if isinstance(record, store.LspRecord):
            if record.state not in (store.LspState.FUNDED, store.LspState.ABORTED):
                session = LspSession(record, None, 0.0)
                self.lsp[record.instance_id] = session
                if record.state is store.LspState.COMPLETING and all(
                    c.channel_id for c in record.clients
                ):
                    # Every client stored its path and every channel is complete: only the
                    # funding's broadcast may be missing. Finish (sending again is harmless).
                    self.submit(lambda: self._lsp_broadcast_funding(session, resumed=True))
                else:
                    self.submit(
                        lambda: self._lsp_abort(session, "the LSP restarted during creation")
                    )
        elif record.state in (store.ClientState.ACCEPTED, store.ClientState.SIGNING):
            self._persist(
                record.replace(
                    state=store.ClientState.ABORTED, error="restarted before the factory was signed"
                )
            )

    def _persist(self, record: store.Record) -> None:
        """Write before any message that depends on it is sent."""
        self.rpc.call(
            "datastore",
            {
                "key": [*DATASTORE_ROOT, record.instance_id],
                "string": json.dumps(store.to_json(record), sort_keys=True),
                "mode": "create-or-replace",
            },
        )
        with self.lock:
            self.records[record.instance_id] = record

    # --- messaging ----------------------------------------------------------------------------

    def _send_raw(self, peer: str, msg: bytes) -> None:
        try:
            self.rpc.call("sendcustommsg", {"node_id": peer, "msg": msg.hex()})
        except Exception as e:  # e.g. the peer disconnected: name it
            raise PeerUnreachable(f"cannot send to {peer}: {_why(e)}") from e

    def _send(self, peer: str, payload: protocol.Payload) -> None:
        body = protocol.encode(payload)
        self._send_raw(peer, blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, body).encode())

    def _greet(self, peer: str) -> None:
        """bLIP-56: send supported_factory_protocols to a peer whose init set bit 270/271 - and
        only to such a peer: an unknown even message would make any other peer hang up."""
        peers = self.rpc.call("listpeers", {"id": peer}).get("peers", [])
        if not peers or not _has_factory_feature(str(peers[0].get("features", ""))):
            return
        msg = blip56.SupportedProtocols((blip56.SUPERSCALAR_PROTOCOL_ID,)).encode()
        try:
            self._send_raw(peer, msg)
        except Exception as e:  # a peer that left again is not an error
            log.info("could not greet %s: %s", peer, e)

    def _greet_connected_peers(self) -> None:
        for peer in self.rpc.call("listpeers").get("peers", []):
            if peer.get("connected") and _has_factory_feature(str(peer.get("features", ""))):
                self._greet(peer["id"])

    def on_connect(self, peer: str) -> None:
        self.submit(lambda: self._greet(peer))

    def on_disconnect(self, peer: str) -> None:
        with self.lock:
            self.protocol_peers.discard(peer)

    def on_custommsg(self, peer: str, payload_hex: str) -> None:
        """From the custommsg hook: filter by type and queue; never blocks."""
        try:
            msg = bytes.fromhex(payload_hex)
        except ValueError:
            log.warning("custommsg from %s is not hex", peer)
            return
        if len(msg) < 2 or int.from_bytes(msg[:2], "big") != blip56.FACTORY_MESSAGE_TYPE:
            return  # e.g. lightningd's own peer_storage
        if self._in_factory_record(peer, msg):
            return
        self.submit(lambda: self._on_factory_message(peer, msg))

    def _in_factory_record(self, peer: str, msg: bytes) -> bool:
        """`channel_in_factory` is applied at once, on the hook's thread: the `openchannel` hook
        that follows it must already see it. Cheap: a parse and a dictionary update."""
        try:
            parsed = blip56.decode_factory_message(msg)
            if not isinstance(parsed, blip56.Piggyback) or parsed.payload[:1] != bytes(
                [protocol.PayloadType.CHANNEL_IN_FACTORY]
            ):
                return False
            payload = protocol.decode(parsed.payload)
        except WireError:
            return False  # the worker logs and drops it
        assert isinstance(payload, protocol.InFactory)
        instance = payload.instance_id.hex()
        with self.lock:
            cs = self.clients.get(instance)
            if cs is None or cs.record.lsp_node_id != peer:
                self.refused_opens[(peer, 0)] = instance
                log.warning("%s announced a channel in unknown factory %s", peer, instance[:16])
            else:
                self.expected_opens[(peer, cs.record.channel_sat * 1000)] = instance
        return True

    def _on_factory_message(self, peer: str, msg: bytes) -> None:
        try:
            parsed = blip56.decode_factory_message(msg)
            if isinstance(parsed, blip56.SupportedProtocols):
                if blip56.SUPERSCALAR_PROTOCOL_ID in parsed.protocol_ids:
                    with self.lock:
                        self.protocol_peers.add(peer)
                return
            if parsed.protocol_id != blip56.SUPERSCALAR_PROTOCOL_ID:
                log.info("ignoring piggyback for another factory protocol from %s", peer)
                return
            payload = protocol.decode(parsed.payload)
        except WireError as e:
            log.warning("dropped malformed factory message from %s: %s", peer, e)
            return
        instance = payload.instance_id.hex()
        try:
            if instance in self.lsp:
                self._lsp_on_payload(self.lsp[instance], peer, payload)
            else:
                self._client_on_payload(peer, instance, payload)
        except Exception as e:  # a hostile or broken peer, or our own bug: abort, stay alive
            expected = isinstance(e, WireError | CeremonyError | MuSigError)
            if expected:
                log.warning("rejected message from %s for factory %s: %s", peer, instance[:16], e)
            else:
                log.exception("internal error on a message from %s", peer)
            reason = f"client {peer}: {e}" if expected else f"internal error: {e!r}"
            if instance in self.lsp:
                self._lsp_abort(self.lsp[instance], reason)
            elif instance in self.clients:
                self._client_abort(self.clients[instance], str(e), tell_lsp=True)

    def on_block(self, height: int) -> None:
        with self.lock:
            self.blockheight = max(self.blockheight, height)
        self.submit(lambda: self.onchain.on_block(height))
        self.submit(self.refresh_guards)

    def lsp_key(self, instance: str) -> bytes:
        return node_seckey(self._makesecret(b"superscalar/lsp/" + bytes.fromhex(instance)))

    def exit(self, reply: Reply, instance: str, client: str | None) -> None:
        """`factory-exit`: start (or show) the unilateral exit of a factory we are in."""
        self.submit(lambda: self._exit(reply, instance, client))

    def _exit(self, reply: Reply, instance: str, client: str | None) -> None:
        try:
            record = self.records.get(instance)
            if record is None:
                raise InvalidParameter(f"instance: no factory {instance}")
            if record.state not in (
                store.LspState.FUNDED,
                store.ClientState.READY,
                store.ClientState.FUNDED,
            ):
                raise InvalidParameter(
                    f"instance: factory is {record.state.value}, nothing to exit"
                )
            index = None
            if client is not None:
                if not isinstance(record, store.LspRecord):
                    raise InvalidParameter("client: only the LSP chooses whose path to publish")
                index = next((i for i, c in enumerate(record.clients) if c.node_id == client), None)
                if index is None:
                    raise InvalidParameter(f"client: {client} is not in this factory")
            if record.exit is None:
                record = self.onchain.start_exit(record, "requested with factory-exit", index)
            self.onchain._chan_cache = None  # channels as they are now, not at the last block
            self.onchain.drive(record)
            reply.set_result(self.status_of(self.records[instance]))
        except SuperscalarError as e:
            reply.set_exception(_rpc_exception(e))
        except Exception as e:
            log.exception("factory-exit failed")
            reply.set_exception(_rpc_exception(SuperscalarError(f"internal error: {e!r}")))

    # --- HTLC and invoice rules ---------------------------------------------------------------

    def _read_configs(self) -> None:
        try:
            configs = self.rpc.call("listconfigs").get("configs", {})
            self.cltv_final = int(configs.get("cltv-final", {}).get("value_int", 18))
            self.max_locktime = int(configs.get("max-locktime-blocks", {}).get("value_int", 2016))
        except Exception as e:
            log.info("listconfigs unavailable (%s); using cltv-final 18, max locktime 2016", e)

    def refresh_guards(self) -> None:
        """Map every factory channel's scid and alias to its rules (off the hot path)."""
        wanted: dict[str, policy.ChannelGuard] = {}  # channel_id or funding txid -> guard
        with self.lock:
            records = list(self.records.values())
        for r in records:
            if r.state not in (
                store.LspState.FUNDED,
                store.ClientState.READY,
                store.ClientState.FUNDED,
            ):
                continue
            n = len(r.clients) if isinstance(r, store.LspRecord) else r.n_clients
            guard = policy.ChannelGuard(Topology.build(n, r.params).ewt, r.timeout_height)
            if isinstance(r, store.LspRecord):
                for c in r.clients:
                    if c.channel_id:
                        wanted[c.channel_id] = guard
            elif r.path:
                wanted[Tx.deserialize(bytes.fromhex(r.path[-1].raw)).txid] = guard
        guards: dict[str, policy.ChannelGuard] = {}
        if wanted:
            for ch in self._channels().values():
                found = wanted.get(ch.get("channel_id", "")) or wanted.get(
                    ch.get("funding_txid", "")
                )
                if found is None:
                    continue
                for scid in (
                    ch.get("short_channel_id"),
                    ch.get("alias", {}).get("local"),
                    ch.get("alias", {}).get("remote"),
                ):
                    if scid:
                        guards[scid] = found
        self.guards = guards  # one atomic swap; readers never see a half-built map

    def htlc_verdict(self, htlc: dict[str, Any], onion: dict[str, Any]) -> dict[str, Any]:
        """The htlc_accepted hook: dictionary lookups and comparisons only, no RPC."""
        guards, height = self.guards, self.blockheight
        incoming = guards.get(htlc.get("short_channel_id", ""))
        outgoing_scid = onion.get("short_channel_id")
        final = outgoing_scid is None and onion.get("next_node_id") is None
        if incoming is not None:
            fail = policy.htlc_failure(
                int(htlc["cltv_expiry"]), height, incoming, _msat(htlc.get("amount_msat", 0)), final
            )
            if fail is not None:
                return {"result": "fail", "failure_message": fail.hex()}
        outgoing = guards.get(outgoing_scid) if outgoing_scid else None
        if outgoing is not None and "outgoing_cltv_value" in onion:
            fail = policy.htlc_failure(
                int(onion["outgoing_cltv_value"]),
                height,
                outgoing,
                _msat(onion.get("forward_msat", 0)),
                final=False,
            )
            if fail is not None:
                return {"result": "fail", "failure_message": fail.hex()}
        return {"result": "continue"}

    def invoice_params(self, params: Any) -> Any | None:
        """New params for an `invoice` call on a node with factory channels (cltv raised by the
        largest EWT), or None to leave the call alone."""
        guards = self.guards
        if not guards:
            return None
        ewt = max(g.early_warning_time for g in guards.values())
        names = [
            "amount_msat",
            "label",
            "description",
            "expiry",
            "fallbacks",
            "preimage",
            "exposeprivatechannels",
            "cltv",
            "deschashonly",
        ]
        named = dict(zip(names, params, strict=False)) if isinstance(params, list) else dict(params)
        requested = int(named.get("cltv") or self.cltv_final)
        named["cltv"] = policy.invoice_cltv(requested, ewt, self.max_locktime)
        return named

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for session in list(self.lsp.values()):
            if session.reply is not None and session.deadline and now > session.deadline:
                self._lsp_abort(session, self._silent_clients(session))
        for cs in list(self.clients.values()):
            # The LSP times out first and tells us; our own, longer deadline only frees state.
            if cs.record.state in (store.ClientState.ACCEPTED, store.ClientState.SIGNING) and (
                now > cs.deadline
            ):
                self._client_abort(cs, "the LSP went silent during the ceremony", tell_lsp=False)

    def _silent_clients(self, s: LspSession) -> str:
        r = s.record
        if r.state is store.LspState.PROPOSING:
            waiting = [c.node_id for c in r.clients if c.pubkey is None]
            step = "accept the proposal"
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
        return f"timed out: client {who} did not {step} within {self.config.ceremony_timeout:g}s"

    # --- LSP: factory-create ------------------------------------------------------------------

    def create(
        self, reply: Reply, clients: list[str], channel_sat: list[int], params: FactoryParams
    ) -> None:
        """Validate and reserve synchronously where cheap; the rest runs on the worker."""
        self.submit(lambda: self._lsp_create(reply, clients, channel_sat, params))

    def _lsp_create(
        self, reply: Reply, clients: list[str], channel_sat: list[int], params: FactoryParams
    ) -> None:
        try:
            self._check_clients(clients)
            instance = os.urandom(32)
            secret = self._makesecret(b"superscalar/lsp/" + instance)
            lsp_key = node_seckey(secret)
            lsp_pub = musig2.pubkey_from_secret(lsp_key)
            timeout = self.blockheight + self.config.lifetime_blocks
            probe = _probe_factory(params, lsp_pub, channel_sat, timeout)
            if timeout - self.blockheight <= 2 * probe.topology.ewt:
                raise InvalidParameter(
                    f"lifetime {self.config.lifetime_blocks} blocks is too short for an early"
                    f" warning time of {probe.topology.ewt}"
                )
            funded = self._reserve_funding(probe.funding_amount)
        except SuperscalarError as e:
            reply.set_exception(_rpc_exception(e))
            return
        except Exception as e:
            log.exception("factory-create failed")
            reply.set_exception(_rpc_exception(SuperscalarError(f"internal error: {e!r}")))
            return
        record = store.LspRecord(
            instance_id=instance.hex(),
            state=store.LspState.PROPOSING,
            params=params,
            timeout_height=timeout,
            lsp_pubkey=lsp_pub.hex(),
            clients=tuple(
                store.ClientEntry(n, s) for n, s in zip(clients, channel_sat, strict=True)
            ),
            created_height=self.blockheight,
            funding_psbt=funded,
            funding_amount=probe.funding_amount,
        )
        session = LspSession(record, reply, time.monotonic() + self.config.ceremony_timeout)
        self.lsp[record.instance_id] = session
        self._persist(record)
        ewt = probe.topology.ewt
        for i, entry in enumerate(record.clients):
            propose = protocol.Propose(
                instance, i, len(clients), params, timeout, lsp_pub, entry.channel_sat, ewt
            )
            try:
                self._send(entry.node_id, propose)
            except PeerUnreachable as e:
                self._lsp_abort(session, f"client {entry.node_id}: {e}")
                return
        log.info("factory %s: proposed to %d clients", record.instance_id[:16], len(clients))

    def _check_clients(self, clients: list[str]) -> None:
        peers = {p["id"]: p for p in self.rpc.call("listpeers").get("peers", [])}
        for c in clients:
            if c == self.node_id:
                raise InvalidParameter(f"client {c} is this node itself")
            if not peers.get(c, {}).get("connected"):
                raise InvalidParameter(f"client {c} is not connected")
            with self.lock:
                ok = c in self.protocol_peers
            if not ok:
                raise InvalidParameter(
                    f"client {c} has not announced SuperScalar support (is the plugin running there?)"
                )

    def _makesecret(self, label: bytes) -> bytes:
        return bytes.fromhex(self.rpc.call("makesecret", {"hex": label.hex()})["secret"])

    def _reserve_funding(self, amount: int) -> str:
        # startweight: tx overhead + the P2TR funding output, which addpsbtoutput adds later.
        try:
            res = self.rpc.call(
                "fundpsbt",
                {
                    "satoshi": amount,
                    "feerate": self.config.funding_feerate,
                    "startweight": (4 + 1 + 1 + 4 + 43) * 4,
                    "reserve": 2016,
                    "excess_as_change": True,
                },
            )
        except Exception as e:
            raise RpcFailed(
                f"cannot fund a factory of {amount} sat from the wallet: {_why(e)}"
            ) from e
        return str(res["psbt"])

    def _lsp_on_payload(self, s: LspSession, peer: str, p: protocol.Payload) -> None:
        r = s.record
        index = next((i for i, c in enumerate(r.clients) if c.node_id == peer), None)
        if index is None:
            # Only participants may disturb a factory: a stranger's message is dropped, not fatal.
            log.warning(
                "dropped a message from %s, not a client of factory %s", peer, r.instance_id[:16]
            )
            return
        s.deadline = time.monotonic() + self.config.ceremony_timeout  # progress: wait again
        if isinstance(p, protocol.Text):
            self._lsp_abort(s, f"client {peer} refused: {p.reason}")
        elif isinstance(p, protocol.Accept) and r.state is store.LspState.PROPOSING:
            musig2.xonly(p.client_pubkey)  # a valid point, or MuSigError
            if r.clients[index].pubkey is not None:
                raise CeremonyError("accepted twice")
            clients = list(r.clients)
            clients[index] = store.ClientEntry(
                peer, clients[index].channel_sat, p.client_pubkey.hex()
            )
            s.record = r.replace(clients=tuple(clients))
            self._persist(s.record)
            if all(c.pubkey for c in s.record.clients):
                self._lsp_open_channels(s)
        elif isinstance(p, protocol.Ceremony) and r.state is store.LspState.SIGNING:
            assert s.coordinator is not None
            for c, data in s.coordinator.receive(index, p.message).items():
                self._send(
                    r.clients[c].node_id, protocol.Ceremony(bytes.fromhex(r.instance_id), data)
                )
        elif isinstance(p, protocol.Stored) and r.state is store.LspState.SIGNING:
            assert s.coordinator is not None
            if (
                s.coordinator.state is not CoordinatorState.DONE
                or p.session != s.coordinator.session
            ):
                raise CeremonyError("STORED before the ceremony finished")
            clients = list(r.clients)
            clients[index] = _replace_entry(clients[index], stored=True)
            s.record = r.replace(clients=tuple(clients))
            self._persist(s.record)
            if all(c.stored for c in s.record.clients):
                self._lsp_complete(s)
        else:
            raise CeremonyError(f"unexpected {type(p).__name__} in state {r.state.value}")

    def _lsp_open_channels(self, s: LspSession) -> None:
        r = s.record
        instance = bytes.fromhex(r.instance_id)
        keys = [bytes.fromhex(c.pubkey or "") for c in r.clients]
        lsp_pub = bytes.fromhex(r.lsp_pubkey)
        ewt = Topology.build(len(r.clients), r.params).ewt  # no keys needed: no second probe
        s.record = r = r.replace(state=store.LspState.OPENING)
        self._persist(r)
        scripts: list[str] = []
        for i, c in enumerate(r.clients):
            self._send(
                c.node_id,
                protocol.InFactory(
                    instance,
                    blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, instance, ewt),
                ),
            )
            try:
                res = self.rpc.call(
                    "fundchannel_start",
                    {
                        "id": c.node_id,
                        "amount": c.channel_sat,
                        "announce": False,
                        "mindepth": 0,
                        # A fundee that never held funds forgets an unconfirmed channel after 2016
                        # blocks (DESIGN 3.6); one pushed sat keeps it for the factory's lifetime.
                        "push_msat": FACTORY_PUSH_MSAT,
                    },
                )
            except Exception as e:
                self._lsp_abort(s, f"client {c.node_id}: fundchannel_start failed: {_why(e)}")
                return
            s.opened.add(i)
            scripts.append(str(res["scriptpubkey"]))
        slots = [
            ClientSlot(k, bytes.fromhex(sc), c.channel_sat)
            for k, sc, c in zip(keys, scripts, r.clients, strict=True)
        ]
        factory = Factory.create(r.params, lsp_pub, slots, r.timeout_height)
        if factory.funding_amount != r.funding_amount:
            self._lsp_abort(s, "channel scripts changed the funding amount (non-P2WSH channel?)")
            return
        funding_address = address.encode(factory.funding_output.script_pubkey, self._network())
        try:
            res = self.rpc.call(
                "addpsbtoutput",
                {
                    "satoshi": factory.funding_amount,
                    "initialpsbt": r.funding_psbt,
                    "destination": funding_address,
                },
            )
        except Exception as e:
            self._lsp_abort(s, f"cannot add the funding output: {_why(e)}")
            return
        funding_psbt = str(res["psbt"])
        vout = int(res["outnum"])
        txid = psbtmod.unsigned_txid(funding_psbt)
        clients = [
            _replace_entry(c, channel_script=sc) for c, sc in zip(r.clients, scripts, strict=True)
        ]
        s.record = r = r.replace(
            state=store.LspState.SIGNING,
            clients=tuple(clients),
            funding_psbt=funding_psbt,
            funding_txid=txid,
            funding_vout=vout,
        )
        s.factory = factory
        lsp_key = node_seckey(self._makesecret(b"superscalar/lsp/" + instance))
        s.coordinator = Coordinator(
            factory, lsp_key, (txid, vout), dw.initial_states(factory.topology)
        )
        self._persist(r)
        for index, data in s.coordinator.start().items():
            self._send(r.clients[index].node_id, protocol.Ceremony(instance, data))

    def _lsp_complete(self, s: LspSession) -> None:
        r = s.record
        assert s.coordinator is not None and s.factory is not None
        tree = tuple(
            store.PathEntry(
                n,
                s.coordinator.states[n],
                t.raw().hex(),
                t.unsigned.spent_amount,
                t.unsigned.spent_script.hex(),
            )
            for n, t in sorted(s.coordinator.signed.items())
        )
        s.record = r = r.replace(state=store.LspState.COMPLETING, tree=tree)
        self._persist(r)
        topo = s.factory.topology
        for i, c in enumerate(r.clients):
            leaf = s.coordinator.signed[topo.leaf_of_client[i]].unsigned
            try:
                res = self.rpc.call(
                    "fundchannel_complete", {"id": c.node_id, "psbt": psbtmod.leaf_psbt(leaf)}
                )
            except Exception as e:
                self._lsp_abort(s, f"client {c.node_id}: fundchannel_complete failed: {_why(e)}")
                return
            clients = list(r.clients)
            clients[i] = _replace_entry(c, channel_id=str(res["channel_id"]))
            s.record = r = r.replace(clients=tuple(clients))
            self._persist(r)  # a restart after this knows which channels exist
        self._lsp_broadcast_funding(s)

    def _lsp_broadcast_funding(self, s: LspSession, resumed: bool = False) -> None:
        """Sign and send the funding tx (the last step). A refusal aborts, as nothing is on chain;
        after a restart it may have been sent already, so then the chain decides (`OnChain`)."""
        r = s.record
        try:
            signed = self.rpc.call("signpsbt", {"psbt": r.funding_psbt})["signed_psbt"]
            txid = str(self.rpc.call("sendpsbt", {"psbt": signed})["txid"])
        except Exception as e:
            if not resumed:
                self._lsp_abort(s, f"the funding transaction was refused: {_why(e)}")
                return
            log.warning(
                "factory %s: funding not sent again (%s); waiting to see it confirm",
                r.instance_id[:16],
                _why(e),
            )
            return
        self.lsp_funded(s.record.replace(funding_txid=txid))

    def lsp_funded(self, record: store.LspRecord) -> None:
        """The funding is out: persist, tell the clients, answer factory-create."""
        s = self.lsp.setdefault(record.instance_id, LspSession(record, None, 0.0))
        s.record = r = record.replace(state=store.LspState.FUNDED)
        self._persist(r)
        txid = r.funding_txid or ""
        for c in r.clients:
            try:
                self._send(
                    c.node_id,
                    protocol.Funded(bytes.fromhex(r.instance_id), txid, r.funding_vout or 0),
                )
            except Exception as e:  # a client offline now learns it from the chain later
                log.info("could not tell %s about the funding: %s", c.node_id, _why(e))
        log.info("factory %s funded: %s", r.instance_id[:16], txid)
        self.refresh_guards()
        if s.reply is not None:
            s.reply.set_result(self.status_of(r))
            s.reply = None

    def _lsp_abort(self, s: LspSession, reason: str) -> None:
        r = s.record
        if r.state in (store.LspState.FUNDED, store.LspState.ABORTED):
            return
        for i, c in enumerate(r.clients):
            if i in s.opened or r.state in (store.LspState.SIGNING, store.LspState.COMPLETING):
                try:
                    self.rpc.call("fundchannel_cancel", {"id": c.node_id})
                except Exception as e:
                    log.info("fundchannel_cancel %s: %s", c.node_id, _why(e))
        if r.funding_psbt:
            try:
                self.rpc.call("unreserveinputs", {"psbt": r.funding_psbt, "reserve": 2016})
            except Exception as e:
                log.error("could not unreserve the funding inputs: %s", _why(e))
        s.record = r.replace(state=store.LspState.ABORTED, error=reason)
        self._persist(s.record)
        log.warning("factory %s aborted: %s", r.instance_id[:16], reason)
        if s.coordinator is not None:
            s.coordinator.abort(reason)
        for c in r.clients:
            try:
                self._send(
                    c.node_id,
                    protocol.Text(protocol.PayloadType.ABORT, bytes.fromhex(r.instance_id), reason),
                )
            except Exception as e:
                log.info("could not tell %s about the abort: %s", c.node_id, _why(e))
        if s.reply is not None:
            s.reply.set_exception(
                _rpc_exception(CeremonyError(f"factory creation failed: {reason}"))
            )
            s.reply = None

    # --- client -------------------------------------------------------------------------------

    def _client_on_payload(self, peer: str, instance: str, p: protocol.Payload) -> None:
        cs = self.clients.get(instance)
        if isinstance(p, protocol.Propose):
            if cs is not None or instance in self.records:
                raise CeremonyError("proposal for a factory we already know")
            self._client_consider(peer, p)
            return
        if cs is None or cs.record.lsp_node_id != peer:
            log.warning(
                "dropped a message from %s for a factory it does not run (%s)", peer, instance[:16]
            )
            return
        if isinstance(p, protocol.Ceremony):
            signed_before = cs.signer.state is SignerState.DONE  # a signer stays DONE for good
            reply = cs.signer.receive(p.message)
            if cs.record.state is store.ClientState.ACCEPTED:
                cs.record = cs.record.replace(state=store.ClientState.SIGNING)
            cs.deadline = time.monotonic() + 3 * self.config.ceremony_timeout
            if cs.signer.state is SignerState.DONE and not signed_before:
                self._client_store_path(cs)
                self._send(peer, protocol.Stored(bytes.fromhex(instance), cs.signer.session))
            elif reply is not None:
                self._send(peer, protocol.Ceremony(bytes.fromhex(instance), reply))
        elif isinstance(p, protocol.Funded):
            if cs.record.state is not store.ClientState.READY:
                raise CeremonyError("FUNDED before our path was stored")
            if p.txid != cs.record.funding_txid:
                raise CeremonyError(
                    f"FUNDED names {p.txid}, our path spends {cs.record.funding_txid}"
                )
            cs.record = cs.record.replace(state=store.ClientState.FUNDED)
            self._persist(cs.record)
            self.refresh_guards()
        elif isinstance(p, protocol.Text) and p.type is protocol.PayloadType.ABORT:
            self._client_abort(cs, f"LSP aborted: {p.reason}", tell_lsp=False)
        else:
            raise CeremonyError(f"unexpected {type(p).__name__}")

    def _client_consider(self, peer: str, p: protocol.Propose) -> None:
        cfg = self.config
        instance = p.instance_id
        reason = None
        if "any" not in cfg.accept_from and peer not in cfg.accept_from:
            reason = "this node does not accept factories from you (superscalar-accept-from)"
        else:
            try:
                topo = Topology.build(p.n_clients, p.params)
                if topo.ewt != p.early_warning_time:
                    reason = f"stated EWT {p.early_warning_time} but the shape gives {topo.ewt}"
                elif topo.ewt > cfg.max_ewt:
                    reason = f"EWT {topo.ewt} exceeds our limit {cfg.max_ewt}"
                elif p.params.fee_rate_kvb > cfg.max_fee_rate_kvb:
                    reason = f"fee rate {p.params.fee_rate_kvb} sat/kvB exceeds our limit"
                elif p.timeout_height <= self.blockheight + 2 * topo.ewt:
                    reason = f"timeout {p.timeout_height} leaves no time before the EWT"
                elif p.channel_sat < MIN_CHANNEL_SAT:
                    reason = f"channel of {p.channel_sat} sat is too small"
                musig2.xonly(p.lsp_pubkey)
            except (InvalidParameter, MuSigError) as e:
                reason = f"invalid proposal: {e}"
        if reason is not None:
            log.info("refusing factory %s from %s: %s", instance.hex()[:16], peer, reason)
            self._send(peer, protocol.Text(protocol.PayloadType.REJECT, instance, reason))
            return
        seckey = node_seckey(self._makesecret(b"superscalar/client/" + instance))
        pub = musig2.pubkey_from_secret(seckey)
        record = store.ClientRecord(
            instance_id=instance.hex(),
            lsp_node_id=peer,
            state=store.ClientState.ACCEPTED,
            client_index=p.client_index,
            n_clients=p.n_clients,
            params=p.params,
            timeout_height=p.timeout_height,
            lsp_pubkey=p.lsp_pubkey.hex(),
            pubkey=pub.hex(),
            channel_sat=p.channel_sat,
            early_warning_time=p.early_warning_time,
        )
        signer = Signer(
            seckey,
            ClientTerms.from_propose(p),
            ClientPolicy(max_ewt=cfg.max_ewt, max_fee_rate_kvb=cfg.max_fee_rate_kvb),
        )
        self.clients[record.instance_id] = ClientSession(
            record, signer, time.monotonic() + 3 * self.config.ceremony_timeout
        )
        self._persist(record)
        with self.lock:  # the open may reach us before the LSP's channel_in_factory record does
            self.expected_opens[(peer, p.channel_sat * 1000)] = record.instance_id
        self._send(peer, protocol.Accept(instance, pub))

    def _client_store_path(self, cs: ClientSession) -> None:
        header = cs.signer.header
        assert header is not None
        path = tuple(
            store.PathEntry(
                s.node,
                cs.signer.states[s.node],
                s.raw().hex(),
                s.unsigned.spent_amount,
                s.unsigned.spent_script.hex(),
            )
            for s in cs.signer.signed_path
        )
        cs.record = cs.record.replace(
            state=store.ClientState.READY,
            header=header.encode().hex(),
            path=path,
            funding_txid=header.funding_txid,  # watched on chain from now on
        )
        self._persist(cs.record)

    def _client_abort(self, cs: ClientSession, reason: str, tell_lsp: bool) -> None:
        if cs.record.state in (store.ClientState.FUNDED, store.ClientState.ABORTED):
            return
        cs.signer.forget()
        cs.record = cs.record.replace(state=store.ClientState.ABORTED, error=reason)
        self._persist(cs.record)
        log.warning("factory %s aborted: %s", cs.record.instance_id[:16], reason)
        with self.lock:
            for k, v in list(self.expected_opens.items()):
                if v == cs.record.instance_id:
                    del self.expected_opens[k]
        if tell_lsp:
            abort = protocol.Text(
                protocol.PayloadType.ABORT, bytes.fromhex(cs.record.instance_id), reason
            )
            try:
                self._send(cs.record.lsp_node_id, abort)
            except PeerUnreachable as e:
                log.info("could not tell the LSP: %s", e)

    def on_openchannel(self, peer: str, funding_msat: int, push_msat: int) -> dict[str, Any]:
        """The openchannel hook: a factory slot we accepted opens with mindepth 0; an open that a
        peer tied to a factory we do not know is refused; every other open is left alone."""
        with self.lock:
            instance = self.expected_opens.pop((peer, funding_msat), None)
            refused = self.refused_opens.pop((peer, 0), None)
        if instance is not None and push_msat <= FACTORY_PUSH_MSAT:
            log.info("accepting factory channel from %s (factory %s)", peer, instance[:16])
            return {"result": "continue", "mindepth": 0}
        if instance is not None or refused is not None:
            return {
                "result": "reject",
                "error_message": "superscalar: this channel is not a factory slot we accepted",
            }
        return {"result": "continue"}

    # --- status -------------------------------------------------------------------------------

    def status_of(self, record: store.Record) -> dict[str, Any]:
        topo = Topology.build(
            len(record.clients) if isinstance(record, store.LspRecord) else record.n_clients,
            record.params,
        )
        base: dict[str, Any] = {
            "instance": record.instance_id,
            "state": record.state.value,
            "early_warning_time": topo.ewt,
            "timeout_height": record.timeout_height,
            "params": store.to_json(record)["params"],
        }
        if record.error:
            base["error"] = record.error
        if record.exit is not None:
            base["exit"] = self._exit_progress(record, topo)
        if isinstance(record, store.LspRecord):
            base["role"] = "lsp"
            if record.sweeps:
                confirmed = dict(record.confirmed)
                base["sweeps"] = [
                    {
                        "outpoint": o,
                        "txid": Tx.deserialize(bytes.fromhex(raw)).txid,
                        "confirmed": Tx.deserialize(bytes.fromhex(raw)).txid in confirmed,
                    }
                    for o, raw in record.sweeps
                ]
            base["funding"] = {
                "txid": record.funding_txid,
                "vout": record.funding_vout,
                "amount_sat": record.funding_amount,
                "confirmations": self._confirmations(record, record.funding_txid),
            }
            channels = self._channels()
            states = {e.node: e.state for e in record.tree}
            base["clients"] = [
                {
                    "node_id": c.node_id,
                    "index": i,
                    "leaf": topo.leaf_of_client[i],
                    "channel_sat": c.channel_sat,
                    "channel_id": c.channel_id,
                    "channel_state": channels.get(c.channel_id or "", {}).get("state"),
                    # The DW digits on its path, root first (state nodes only).
                    "dw_state": [
                        states.get(n, 0) for n in topo.client_path(i) if topo.nodes[n].kind.is_state
                    ],
                }
                for i, c in enumerate(record.clients)
            ]
        else:
            base["role"] = "client"
            base["lsp"] = record.lsp_node_id
            base["index"] = record.client_index
            base["channel_sat"] = record.channel_sat
            base["funding_txid"] = record.funding_txid
            base["funding_confirmations"] = self._confirmations(record, record.funding_txid)
            base["exit_path"] = [
                {
                    "node": e.node,
                    "kind": topo.nodes[e.node].kind.value,
                    "dw_state": e.state,
                    "txid": Tx.deserialize(bytes.fromhex(e.raw)).txid,
                    "relative_delay": topo.relative_delay(e.node, e.state),
                    "raw": e.raw,  # signed: enough to exit by hand with any bitcoind
                }
                for e in record.path
            ]
        return base

    def _confirmations(self, record: store.Record, txid: str | None) -> int:
        height = dict(record.confirmed).get(txid or "")
        return 0 if height is None else max(0, self.blockheight - height + 1)

    def _exit_progress(self, record: store.Record, topo: Topology) -> dict[str, Any]:
        """What confirmed, what was broadcast, what waits for which height."""
        ex = record.exit
        assert ex is not None
        confirmed = dict(record.confirmed)
        sent = dict(ex.broadcast)
        entries = record.tree if isinstance(record, store.LspRecord) else record.path
        wanted = set()
        for c in ex.clients:
            wanted.update(topo.client_path(c))
        txs = []
        txid_of = {e.node: Tx.deserialize(bytes.fromhex(e.raw)).txid for e in entries}
        for e in sorted(entries, key=lambda e: e.node):
            if e.node not in wanted:
                continue
            txid = txid_of[e.node]
            node = topo.nodes[e.node]
            parent_txid = record.funding_txid if node.parent is None else txid_of.get(node.parent)
            parent_height = confirmed.get(parent_txid or "")
            delay = topo.relative_delay(e.node, e.state)
            item: dict[str, Any] = {"node": e.node, "kind": node.kind.value, "txid": txid}
            if txid in confirmed:
                item["status"], item["height"] = "confirmed", confirmed[txid]
            elif txid in sent:
                item["status"], item["height"] = "broadcast", sent[txid]
            else:
                item["status"] = "waiting"
                if parent_height is not None:
                    item["valid_from"] = parent_height + delay
            txs.append(item)
        return {
            "reason": ex.reason,
            "started_height": ex.started_height,
            "done": ex.done,
            "clients": list(ex.clients),
            "channels_closed": list(ex.closed),
            "txs": txs,
        }

    def _channels(self) -> dict[str, dict[str, Any]]:
        try:
            chans = self.rpc.call("listpeerchannels").get("channels", [])
        except Exception:
            return {}
        return {c["channel_id"]: c for c in chans if "channel_id" in c}

    def status(self, instance: str | None) -> dict[str, Any]:
        with self.lock:
            records = dict(self.records)
        if instance is not None:
            if instance not in records:
                raise InvalidParameter(f"instance: no factory {instance}")
            return {"factories": [self.status_of(records[instance])]}
        return {"factories": [self.status_of(r) for r in records.values()]}

    def _network(self) -> str:
        return str(self.rpc.call("getinfo").get("network", "regtest"))


# --- helpers ------------------------------------------------------------------------------------


def _probe_factory(
    params: FactoryParams, lsp_pub: bytes, channel_sat: list[int], timeout: int
) -> Factory:
    """A factory with stand-in keys and P2WSH scripts: amounts depend only on script sizes."""
    slots = []
    for i, sat in enumerate(channel_sat):
        pk = musig2.pubkey_from_secret(hashlib.sha256(b"probe%d" % i).digest())
        slots.append(ClientSlot(pk, b"\x00\x20" + bytes(32), sat))
    return Factory.create(params, lsp_pub, slots, timeout)


def _has_factory_feature(features_hex: str) -> bool:
    """Bit 270 or 271 (`pluggable_channel_factories`) in a peer's init features."""
    try:
        bits = int(features_hex, 16) if features_hex else 0
    except ValueError:
        return False
    return bool((bits >> (blip56.FEATURE_BIT - 1)) & 0b11)


def _msat(value: Any) -> int:
    return int(str(value).removesuffix("msat"))


def _replace_entry(entry: store.ClientEntry, **changes: Any) -> store.ClientEntry:
    import dataclasses

    return dataclasses.replace(entry, **changes)


def _why(e: Exception) -> str:
    err = getattr(e, "error", None)
    if isinstance(err, dict) and "message" in err:
        return str(err["message"])
    return str(e)


def _rpc_exception(e: SuperscalarError) -> Exception:
    from .rpcerror import make_rpc_exception

    return make_rpc_exception(str(e), e.rpc_code)
