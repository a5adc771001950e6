"""The client side of a factory: consider a proposal, sign, store the path, watch for funding.

Owns: the factories this node is signing as a client (`ClientSession`: record, the engine's
`Signer` with its secret nonces, a deadline). Worker thread only. What a client checks before it
signs is the engine's (`ceremony.check_header`, `check_path`); what it checks before it even joins
is `refusal` below. May call: `peers` (messages to the LSP), `records`, `opens` (the channel it
expects), `guards.refresh`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ...engine import musig2, protocol, store
from ...engine.ceremony import ChannelBinder, ClientPolicy, ClientTerms, Signer, SignerState
from ...engine.errors import CeremonyError, InvalidParameter, MuSigError
from ...engine.solvency import Step
from ...engine.tree import Topology
from ..lightningd.config import MIN_CHANNEL_SAT, Config
from ..lightningd.guards import Guards
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import Records
from ..lightningd.runtime import PeerUnreachable
from .opens import ChannelOpens

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)  # what a peer can trigger at will: once a minute per peer

# Before our path is signed: the only states a message (or a timeout) may abort.
IN_CEREMONY = (store.ClientState.ACCEPTED, store.ClientState.SIGNING)
MAX_PENDING_PER_PEER = 4  # proposals of one LSP we are signing at once; more are refused
CLOSE_WAIT = 60  # seconds a close of an unsigned factory's channel waits for the LSP to agree


@dataclass
class ClientSession:
    record: store.ClientRecord
    signer: Signer
    deadline: float


def refusal(
    peer: str, p: protocol.Propose, cfg: Config, height: int, unbindable: str | None = None
) -> str | None:
    """Why this node will not join the proposed factory, or None to accept it. `unbindable`: why
    our node's database cannot give our channel's funding keys (`NodeDb.usable`)."""
    if "any" not in cfg.accept_from and peer not in cfg.accept_from:
        return "this node does not accept factories from you (superscalar-accept-from)"
    if unbindable is not None and not cfg.trust_channel_script:
        return f"this node cannot check its channel's script ({unbindable})"
    try:
        topo = Topology.build(p.n_clients, p.params)
        musig2.xonly(p.lsp_pubkey)
    except (InvalidParameter, MuSigError) as e:
        return f"invalid proposal: {e}"
    if topo.ewt != p.early_warning_time:
        return f"stated EWT {p.early_warning_time} but the shape gives {topo.ewt}"
    if topo.ewt > cfg.max_ewt:
        return f"EWT {topo.ewt} exceeds our limit {cfg.max_ewt}"
    if p.params.fee_rate_kvb > cfg.max_fee_rate_kvb:
        return f"fee rate {p.params.fee_rate_kvb} sat/kvB exceeds our limit"
    if p.params.fee_rate_kvb < cfg.min_fee_rate_kvb:  # superscalar-min-feerate
        return f"fee rate {p.params.fee_rate_kvb} sat/kvB is below our floor of {cfg.min_fee_rate_kvb} sat/kvB"
    if p.params.stock_delay < cfg.min_stock_delay:  # superscalar-min-stock-delay
        return (
            f"stock delay {p.params.stock_delay} blocks is below our floor of"
            f" {cfg.min_stock_delay}: the LSP could take an unconfirmed sale that soon after"
            " its stock confirmed"
        )
    if p.timeout_height <= height + 2 * topo.ewt:
        return f"timeout {p.timeout_height} leaves no time before the EWT"
    if p.channel_sat < MIN_CHANNEL_SAT:
        return f"channel of {p.channel_sat} sat is too small"
    return None


class ClientRole:
    def __init__(
        self, node: Node, records: Records, peers: Peers, opens: ChannelOpens, guards: Guards
    ) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._opens = opens
        self._guards = guards
        self._sessions: dict[str, ClientSession] = {}

    def resume(self, record: store.ClientRecord) -> None:
        """After a restart a ceremony cannot resume (its nonces are gone): abort it."""
        if record.state in (store.ClientState.ACCEPTED, store.ClientState.SIGNING):
            record = record.replace(
                state=store.ClientState.ABORTED, error="restarted before the factory was signed"
            )
            self._records.persist(record)
            self._close_unsigned(record)

    def _close_unsigned(self, record: store.ClientRecord) -> None:
        """The LSP may have completed our channel before the creation aborted: it never held a
        signed tree, so it takes no HTLC (guards) and we close it (in the background: a close
        waits for the LSP). Ours is the one we bound; if the tree never arrived, the unbound ones
        with this LSP of this amount, but only while nothing else with it is in flight (another
        creation's or a sale's channel could be among them: the LSP closes those, and the guards
        fail their HTLCs meanwhile)."""
        self._guards.refresh()
        if record.channel_bound:
            cids = [record.channel_bound]
        elif (
            self._guards.expected
            or any(
                cs.record.lsp_node_id == record.lsp_node_id and cs.record.state in IN_CEREMONY
                for cs in self._sessions.values()
                if cs.record.instance_id != record.instance_id
            )
            or any(  # a DW update's new channel is unbound until the update is stored
                isinstance(r, store.ClientRecord)
                and r.lsp_node_id == record.lsp_node_id
                and r.update is not None
                for r in self._records.all()
            )
        ):
            cids = []
        else:
            try:
                listed = self._node.channels()
            except ChannelsUnavailable as e:  # the guards keep failing its HTLCs meanwhile
                log.info("not closing factory %s's channel now: %s", record.instance_id[:16], e)
                return
            cids = [
                cid
                for cid, ch in listed.items()
                if cid in self._guards.unbound
                and ch.get("peer_id") == record.lsp_node_id
                and int(str(ch.get("total_msat", 0)).removesuffix("msat"))
                == record.channel_sat * 1000
            ]
        for cid in cids:
            threading.Thread(target=self._close, args=(cid,), daemon=True).start()

    def _close(self, channel_id: str) -> None:
        try:
            self._node.rpc.call("close", {"id": channel_id, "unilateraltimeout": CLOSE_WAIT})
            log.info("closed channel %s of an unsigned factory", channel_id[:16])
        except Exception as e:  # e.g. the LSP cancelled it first: nothing left to close
            log.info("close of channel %s of an unsigned factory: %s", channel_id[:16], e)

    def check_deadlines(self, now: float) -> None:
        for cs in list(self._sessions.values()):
            # The LSP times out first and tells us; our own, longer deadline only frees state.
            if cs.record.state in IN_CEREMONY and now > cs.deadline:
                self._abort(cs, "the LSP went silent during the ceremony", tell_lsp=False)

    def _deadline(self) -> float:
        return time.monotonic() + 3 * self._node.config.ceremony_timeout

    def on_payload(self, peer: str, instance: str, p: protocol.Payload) -> None:
        """A message from `peer` about a factory that is not ours as LSP. Only the factory's LSP
        may change our state, and nothing changes a signed factory (READY, FUNDED)."""
        cs = self._sessions.get(instance)
        known = self._records.get(instance)
        if isinstance(p, protocol.Propose) and known is None:
            self._consider(peer, p)
            return
        if not isinstance(known, store.ClientRecord) or known.lsp_node_id != peer or cs is None:
            peer_log.warning(
                peer,
                "dropped a message from %s for factory %s (not its LSP, or no ceremony in flight)",
                peer,
                instance[:16],
            )
            return
        if cs.record.state not in IN_CEREMONY:
            self._after_signing(cs, p)
            return
        if isinstance(p, protocol.Ceremony):
            self._on_ceremony(cs, p)
        elif isinstance(p, protocol.Text) and p.type is protocol.PayloadType.ABORT:
            self._abort(cs, f"LSP aborted: {p.reason}", tell_lsp=False)
        else:
            raise CeremonyError(f"unexpected {type(p).__name__} during the ceremony")

    def _after_signing(self, cs: ClientSession, p: protocol.Payload) -> None:
        """The LSP's messages once our path is signed: FUNDED is welcome; nothing else changes
        what we watch and guard."""
        if isinstance(p, protocol.Funded) and cs.record.state is store.ClientState.READY:
            self._on_funded(cs, p)
        elif isinstance(p, protocol.Text) and p.type is protocol.PayloadType.ABORT:
            log.warning(
                "factory %s: the LSP aborted after our path was signed (%s); still watching it",
                cs.record.instance_id[:16],
                p.reason,
            )
        else:
            peer_log.warning(
                cs.record.lsp_node_id,
                "ignored %s from the LSP for factory %s (%s)",
                type(p).__name__,
                cs.record.instance_id[:16],
                cs.record.state.value,
            )

    def _consider(self, peer: str, p: protocol.Propose) -> None:
        cfg = self._node.config
        pending = sum(
            1
            for cs in self._sessions.values()
            if cs.record.lsp_node_id == peer and cs.record.state in IN_CEREMONY
        )
        reason = refusal(peer, p, cfg, self._node.height, self._node.db.usable())
        if reason is None and pending >= MAX_PENDING_PER_PEER:
            reason = f"{pending} of your proposals are already pending here"
        if reason is not None:
            peer_log.warning(
                peer, "refusing factory %s from %s: %s", p.instance_id.hex()[:16], peer, reason
            )
            self._peers.send(
                peer, protocol.Text(protocol.PayloadType.REJECT, p.instance_id, reason)
            )
            return
        instance = p.instance_id.hex()
        seckey = self._node.client_key(instance)
        pub = musig2.pubkey_from_secret(seckey)
        record = store.ClientRecord(
            instance_id=instance,
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
            binder=self._binder(peer),
        )
        # Our nonces for our path in the proposed shape (in memory only, used once): the LSP
        # aggregates them into its SIGN_REQUEST, which we answer with partial signatures once
        # every check of it passed.
        path = Topology.build(p.n_clients, p.params).client_path(p.client_index)
        nonces = signer.precommit(path)
        self._sessions[instance] = ClientSession(record, signer, self._deadline())
        self._records.persist(record)
        # A ceremony in flight: an HTLC on a channel the guards have not mapped yet (the LSP may
        # complete ours at any moment) makes the hook map it first, not wait for our worker.
        self._guards.ceremony_started()
        self._opens.accepted(instance, peer, p.channel_sat)
        self._peers.send(peer, protocol.Accept(p.instance_id, pub, nonces))

    def _binder(self, lsp: str) -> ChannelBinder | None:
        """Our node's own record of the channel the tree pays us (`nodedb`); None only when the
        operator accepted trusting the LSP for it (`trust-channel-script`) and it cannot be read."""
        db = self._node.db
        if db.usable() is not None and self._node.config.trust_channel_script:
            return None
        return lambda txid, vout: db.bound_channel(Step.TREE_SIGNATURE, lsp, txid, vout)

    def _on_ceremony(self, cs: ClientSession, p: protocol.Ceremony) -> None:
        signed_before = cs.signer.state is SignerState.DONE  # a signer stays DONE for good
        reply = cs.signer.receive(p.message)
        if cs.signer.state is SignerState.FAILED:  # the LSP's ceremony-level ABORT: it is over
            self._abort(cs, "the LSP aborted the signing ceremony", tell_lsp=False)
            return
        if cs.record.state is store.ClientState.ACCEPTED:
            cs.record = cs.record.replace(state=store.ClientState.SIGNING)
        bound = cs.signer.bound
        if bound is not None and cs.record.channel_bound != bound.channel_id:
            # Persisted before our signatures leave: this factory's channel is the one we checked.
            cs.record = cs.record.replace(channel_bound=bound.channel_id)
            self._records.persist(cs.record)
        cs.deadline = self._deadline()
        if cs.signer.state is SignerState.DONE and not signed_before:
            self._store_path(cs)
            self._peers.send(
                cs.record.lsp_node_id, protocol.Stored(p.instance_id, cs.signer.session)
            )
        elif reply is not None:
            self._peers.send(cs.record.lsp_node_id, protocol.Ceremony(p.instance_id, reply))

    def _on_funded(self, cs: ClientSession, p: protocol.Funded) -> None:
        if cs.record.state is not store.ClientState.READY:
            raise CeremonyError("FUNDED before our path was stored")
        if p.txid != cs.record.funding_txid:
            raise CeremonyError(f"FUNDED names {p.txid}, our path spends {cs.record.funding_txid}")
        latest = self._records.get(cs.record.instance_id)  # e.g. marked compromised meanwhile
        assert isinstance(latest, store.ClientRecord)
        cs.record = latest.replace(state=store.ClientState.FUNDED)
        self._records.persist(cs.record)
        # Nothing more to hear from the LSP. No guard changes: READY and FUNDED carry the same
        # rules (a channel change refreshes them anyway).
        del self._sessions[cs.record.instance_id]

    def _store_path(self, cs: ClientSession) -> None:
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
        self._records.persist(cs.record)
        self._guards.refresh()  # from now on our invoices carry the EWT and HTLCs are checked

    def abort(self, instance: str, peer: str, reason: str) -> None:
        """A message of the factory's LSP broke the ceremony: abort and tell the LSP. Anyone
        else's message changes nothing (it was only dropped)."""
        cs = self._sessions.get(instance)
        if cs is not None and cs.record.lsp_node_id == peer:
            self._abort(cs, reason, tell_lsp=True)

    def _abort(self, cs: ClientSession, reason: str, tell_lsp: bool) -> None:
        if cs.record.state not in IN_CEREMONY:  # signed: never stop protecting it
            return
        cs.signer.forget()
        cs.record = cs.record.replace(state=store.ClientState.ABORTED, error=reason)
        self._records.persist(cs.record)  # deleted PRUNE_AFTER blocks on (records.prune)
        self._sessions.pop(cs.record.instance_id, None)
        log.warning("factory %s aborted: %s", cs.record.instance_id[:16], reason)
        self._opens.forget(cs.record.instance_id)
        self._close_unsigned(cs.record)
        if tell_lsp:
            abort = protocol.Text(
                protocol.PayloadType.ABORT, bytes.fromhex(cs.record.instance_id), reason
            )
            try:
                self._peers.send(cs.record.lsp_node_id, abort)
            except PeerUnreachable as e:
                log.info("could not tell the LSP: %s", e)
