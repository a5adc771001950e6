"""The LSP's side of liquidity sales: a new channel for a client from its leaf's stock, or an
ordinary on-chain channel when the leaf cannot sign.

`start` (worker; from `factory-sell`, or from `payments` once a buyer's HTLC is held):
1. Check: a funded factory that is not ending, the client in it, no other sale of this factory in
   flight. If a co-signer of the client's leaf is offline, the stock is too small or sold out, its
   last sale is not complete, or the leaf is on chain: the on-chain fallback (below).
2. OFFER to the buyer; it answers ACCEPT once it expects the channel (zero-conf, as at creation).
3. `fundchannel_start` with the buyer (the sold amount, all on our side): its funding script. The
   sale of the leaf's latest stock output into that script, with its burn, goes to every
   co-signer (SALE); two MuSig2 rounds, the burn's signature to everyone before anyone signs the
   sale (`engine.sale_sign.SaleCoordinator`).
   Before SALE, `fundchannel_complete` with the unsigned sale PSBT (a sale's txid does not depend
   on its witness): the buyer gives no nonce until its own node holds that channel with the sale
   output's exact 2-of-2 (`nodedb`), and no last signature is ever sent without the channel.
4. The sale's signature: persist the sale (our stock chain) with its channel id, send SALE_SIG,
   report the delivery. Co-signers ack (DONE); until each has, SALE_SIG goes again at every block.
Any failure before the sale's signature aborts: the open cancelled (or the completed channel
closed), every co-signer told, the caller told (a paid order's HTLC is then failed). The fallback: OFFER (on-chain) to the buyer, then
`fundchannel` from the wallet; at most one such channel per client of a factory.

Owns: the sales in flight (`SaleRun`: deadline, the coordinator with its secret nonces, never
persisted). Worker only. May call: `funding`, `peers`, `records`, `guards.refresh`, lightningd's
`listpeers`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine import protocol, store
from ...engine.errors import CeremonyError, InvalidParameter, SuperscalarError
from ...engine.sale import Sale, StockChain, max_sold_sat, stock_cosigners
from ...engine.sale_sign import SaleCoordinator, SaleState
from ...engine.sale_store import JitChannel, chain_of, merge_chain
from ...engine.tree import FactoryKeys
from ..creation import funding
from ..lightningd.config import MIN_CHANNEL_SAT
from ..lightningd.guards import Guards
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import Records, factory_of, is_compromised, txid_of
from ..lightningd.runtime import PeerUnreachable, Reply, RpcFailed, fail
from ..operator import events

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)

P2WSH_PROBE = b"\x00\x20" + bytes(32)  # a channel script's size: what a sale's fee depends on

Done = Callable[[dict[str, Any]], None]
Failed = Callable[[Exception], None]


@dataclass
class SaleRun:
    instance: str
    client: int
    sold_sat: int
    price_sat: int
    kind: protocol.OfferKind
    session: bytes
    deadline: float
    done: Done
    failed: Failed
    reason: str = ""  # why the on-chain fallback
    accepted: bool = False
    opened: bool = False  # fundchannel_start went out: cancel it on abort
    channel_id: str | None = None  # fundchannel_complete returned (before SALE): close on abort
    coordinator: SaleCoordinator | None = None


REFILL_EVERY = 144  # blocks between two refills (DW updates) a client's purchases may cause
REFILL_MARGIN_SAT = 10_000  # stock asked for beyond a sale's amount: its fee and anchor, and some


def leaf_txid(record: store.LspRecord, leaf: int) -> str:
    return next(txid_of(e.raw) for e in record.tree if e.node == leaf)


def lsp_chain(record: store.LspRecord, keys: FactoryKeys, leaf: int) -> StockChain:
    """A leaf's stock chain as the LSP stored it."""
    return chain_of(keys, leaf, next(e.raw for e in record.tree if e.node == leaf), record.sales)


class SalesRole:
    # A DW update that moves stock to a client's leaf (`updates.lsp.UpdateLsp.refill`), set by
    # the service: (instance, client, stock wanted in its leaf, what to do after, ok or not).
    refill: Callable[[str, int, int, Callable[[], None]], None] | None = None

    def __init__(self, node: Node, records: Records, peers: Peers, guards: Guards) -> None:
        self._refilled: dict[tuple[str, int], int] = {}  # (factory, client) -> height
        self._node = node
        self._records = records
        self._peers = peers
        self._guards = guards
        self._runs: dict[str, SaleRun] = {}

    def running(self, instance: str) -> bool:
        return instance in self._runs

    # --- starting ------------------------------------------------------------------------------

    def sell(self, reply: Reply, instance: str, client_id: str, sold_sat: int) -> None:
        """`factory-sell`: the LSP gives `sold_sat` of inbound liquidity to a client (no price)."""
        record = self._records.get(instance)
        index = (
            next((i for i, c in enumerate(record.clients) if c.node_id == client_id), None)
            if isinstance(record, store.LspRecord)
            else None
        )
        if index is None:
            fail(reply, InvalidParameter(f"client: {client_id} is not in factory {instance}"), "")
            return

        def sell_now() -> None:
            self.start(
                instance,
                index,
                sold_sat,
                0,
                reply.set_result,
                lambda e: fail(reply, e, "factory-sell failed"),
            )

        self.refill_first(instance, index, sold_sat, sell_now)

    def refill_first(self, instance: str, client: int, sold: int, then: Callable[[], None]) -> None:
        """Before a sale (never while a buyer's payment is held: an update needs the channels
        free of HTLCs): when the client's leaf cannot sell `sold` but a DW update can move stock
        to it from a sibling leaf (`refill`, the update role), update first; then `then`, which
        sells, or falls back on chain if the update could not be made."""
        record = self._records.get(instance)
        short, reason = False, None
        last = self._refilled.get((instance, client))
        recent = last is not None and self._node.height < last + REFILL_EVERY
        if isinstance(record, store.LspRecord) and self.refill is not None and not recent:
            try:
                reason = self._fallback_reason(record, client, sold)
                short = reason is not None and "stock" in reason
            except Exception as e:  # the sale itself will say what is wrong
                log.info("factory %s: no refill: %s", instance[:16], e)
        if short and self.refill is not None:
            # One refill per client per REFILL_EVERY blocks: a buyer that never pays cannot wake
            # its co-clients again and again, nor spend the factory's DW states.
            self._refilled[(instance, client)] = self._node.height
            log.info("factory %s: %s (for %d sat): updating first", instance[:16], reason, sold)
            self.refill(instance, client, sold + REFILL_MARGIN_SAT, then)
        else:
            then()

    def start(
        self, instance: str, client: int, sold: int, price: int, done: Done, failed: Failed
    ) -> None:
        """Make `sold` sat of inbound liquidity for `client`: a sale, else the fallback."""
        try:
            record = self._live(instance)
            if instance in self._runs:
                raise InvalidParameter(f"instance: a sale of {instance} is in progress")
            if not 0 <= client < len(record.clients):
                raise InvalidParameter(f"client {client} is not in the factory")
            if sold < MIN_CHANNEL_SAT:
                raise InvalidParameter(f"sat: {sold} is below the minimum of {MIN_CHANNEL_SAT}")
            reason = self._fallback_reason(record, client, sold)
            if reason is not None and any(j.client == client for j in record.jit):
                raise InvalidParameter(
                    f"no sale possible ({reason}) and the client already has its on-chain channel"
                )
        except Exception as e:
            failed(e)
            return
        kind = protocol.OfferKind.FACTORY if reason is None else protocol.OfferKind.ONCHAIN
        run = SaleRun(
            instance, client, sold, price, kind, os.urandom(32), self._deadline(), done, failed
        )
        run.reason = reason or ""
        self._runs[instance] = run
        offer = protocol.Offer(bytes.fromhex(instance), run.session, kind, sold, price)
        log.info(
            "factory %s: offering %d sat to client %d (%s)%s",
            instance[:16],
            sold,
            client,
            kind.name.lower(),
            f": {reason}" if reason else "",
        )
        try:
            self._peers.send(record.clients[client].node_id, offer)
        except PeerUnreachable as e:
            self._abort(run, f"the buyer is unreachable: {e}")

    def _deadline(self) -> float:
        return time.monotonic() + self._node.config.ceremony_timeout

    def _live(self, instance: str) -> store.LspRecord:
        record = self._records.get(instance)
        if not isinstance(record, store.LspRecord):
            raise InvalidParameter(f"instance: no factory {instance} of ours as LSP")
        ending = record.exit or record.wind_down or record.handover_tx
        if record.state is not store.LspState.FUNDED or ending or is_compromised(record):
            raise InvalidParameter(f"instance: factory {instance[:16]} is not selling")
        return record

    def _fallback_reason(self, record: store.LspRecord, client: int, sold: int) -> str | None:
        """Why the leaf cannot sell `sold` to `client` now (None: it can)."""
        keys = factory_of(record)
        leaf = keys.topology.leaf_of_client[client]
        peers = {p["id"]: p for p in self._node.rpc.call("listpeers").get("peers", [])}
        for c in stock_cosigners(keys, leaf):
            node_id = record.clients[c].node_id
            if not peers.get(node_id, {}).get("connected"):
                return f"co-signer {node_id} of the leaf is offline"
            if not self._peers.speaks_superscalar(node_id):
                return f"co-signer {node_id} of the leaf has not greeted us yet"
        chain = lsp_chain(record, keys, leaf)
        ewt = keys.topology.ewt + len(chain.sales) + 1
        if self._node.height + 2 * ewt + self._node.config.exit_margin >= record.timeout_height:
            return "the factory is too close to its timeout"
        if chain.latest is None:
            return "the leaf's stock is sold out"
        if chain.sales and not chain.sales[-1].complete:
            return "the leaf's last sale is not complete"
        if chain.latest.txid in record.burn_sent:
            # Its co-signers hold that sale and sign no other of this stock: it stalled.
            return "a sale on this leaf stalled after its burn was signed"
        confirmed = dict(record.confirmed)
        if any(t in confirmed for t in (chain.origin.txid, *(s.sale_tx.txid for s in chain.sales))):
            return "the leaf is on chain"
        most = max_sold_sat(keys, chain.latest, P2WSH_PROBE, record.params.fee_rate_kvb)
        if sold > most:
            return f"the leaf's stock can sell at most {most} sat"
        return None

    # --- messages from the factory's clients ---------------------------------------------------

    def on_payload(self, record: store.LspRecord, index: int, p: protocol.Payload) -> None:
        """A SALE_STEP (or a refusal) from client `index` of a funded factory of ours."""
        if isinstance(p, protocol.SaleStep) and p.kind is protocol.SaleStepKind.DONE:
            self._ack(record, index, p)
            return
        run = self._runs.get(record.instance_id)
        peer = record.clients[index].node_id
        if run is None or (isinstance(p, protocol.SaleStep) and p.session != run.session):
            peer_log.warning(peer, "dropped a sale message from %s: no such sale in flight", peer)
            return
        involved = {run.client} | (
            set(run.coordinator.cosigners) if run.coordinator is not None else set()
        )
        if index not in involved:
            peer_log.warning(peer, "dropped a sale message from %s: not in this sale", peer)
            return
        run.deadline = self._deadline()
        try:
            if isinstance(p, protocol.Text):
                raise CeremonyError(f"refused: {p.reason}")
            if not isinstance(p, protocol.SaleStep):
                raise CeremonyError(f"unexpected {type(p).__name__} during a sale")
            self._on_step(run, index, p)
        except SuperscalarError as e:
            self._abort(run, f"client {peer}: {e}")

    def _on_step(self, run: SaleRun, index: int, p: protocol.SaleStep) -> None:
        if p.kind is protocol.SaleStepKind.ACCEPT:
            if index != run.client or run.accepted:
                raise CeremonyError("unexpected ACCEPT")
            run.accepted = True
            if run.kind is protocol.OfferKind.FACTORY:
                self._propose(run)
            else:
                self._open_onchain(run)
            return
        if run.coordinator is None:
            raise CeremonyError(f"unexpected {p.kind.name} before the sale was proposed")
        before = run.coordinator.state
        outbox = run.coordinator.receive(index, p)
        if run.coordinator.state is SaleState.DONE:
            self._complete(run, outbox)
            return
        if before is not SaleState.SALE_PSIGS and run.coordinator.state is SaleState.SALE_PSIGS:
            self._burn_sent(run.instance, run.coordinator.sold.sale.stock.txid)  # before BURN_SIG
        self._send(run, outbox)

    def _burn_sent(self, instance: str, stock_txid: str) -> None:
        """Before the burn's signature goes out: from then on co-signers hold this sale and sign
        no other of its stock, so if it never completes (a co-signer withholding its sale
        signature, a restart) the leaf's later sales are on-chain channels (`_fallback_reason`)."""
        record = self._records.get(instance)
        assert isinstance(record, store.LspRecord)
        if stock_txid not in record.burn_sent:
            self._records.persist(record.replace(burn_sent=(*record.burn_sent, stock_txid)))

    def _send(self, run: SaleRun, outbox: dict[int, protocol.SaleStep]) -> None:
        record = self._records.get(run.instance)
        assert isinstance(record, store.LspRecord)
        for c, step in outbox.items():
            self._peers.send(record.clients[c].node_id, step)

    # --- the sale ------------------------------------------------------------------------------

    def _propose(self, run: SaleRun) -> None:
        """The buyer expects the channel: open it, build the sale on its script, send SALE."""
        record = self._live(run.instance)
        buyer = store.ClientEntry(record.clients[run.client].node_id, run.sold_sat)
        run.opened = True
        [script] = funding.per_client(
            [buyer],
            lambda c: funding.start_channel(self._node.rpc, c),
            "fundchannel_start",
            self._node.config.ceremony_timeout,
        )
        if isinstance(script, RpcFailed):
            raise CeremonyError(str(script))
        keys = factory_of(record)
        leaf = keys.topology.leaf_of_client[run.client]
        chain = lsp_chain(record, keys, leaf)
        assert chain.latest is not None
        sale = Sale(
            chain.latest,
            run.client,
            run.sold_sat,
            bytes.fromhex(script),
            record.params.fee_rate_kvb,
        )
        lsp_key = self._node.lsp_key(run.instance)
        run.coordinator = SaleCoordinator(
            keys, chain, sale, lsp_key, bytes.fromhex(run.instance), run.session
        )
        sold_tx = run.coordinator.sold.sale_tx
        # The channel is completed on the unsigned sale BEFORE anyone signs: the buyer gives no
        # nonce until its own node holds it (`nodedb`), and no last signature can leave without it.
        [channel] = funding.per_client(
            [buyer],
            lambda c: funding.complete_channel(self._node.rpc, c, sold_tx),
            "fundchannel_complete",
            self._node.config.ceremony_timeout,
        )
        if isinstance(channel, RpcFailed):
            raise CeremonyError(str(channel))
        run.channel_id = channel
        proposal = run.coordinator.proposal()
        for c in run.coordinator.cosigners:
            self._peers.send(record.clients[c].node_id, proposal)

    def _complete(self, run: SaleRun, outbox: dict[int, protocol.SaleStep]) -> None:
        """Signed: persist, complete the channel, persist its id, send SALE_SIG, report."""
        assert run.coordinator is not None
        del self._runs[run.instance]
        signed = run.coordinator.signed()
        record = self._records.get(run.instance)
        assert isinstance(record, store.LspRecord)
        keys = factory_of(record)
        chain = lsp_chain(record, keys, signed.sale.stock.leaf).record(signed)
        sales = merge_chain(record.sales, chain, run.session, price_sat=run.price_sat)
        self._records.persist(record.replace(sales=sales))
        txid = signed.sale_tx.txid
        channel = run.channel_id
        assert channel is not None  # completed before the sale was proposed
        self._set_sale(run.instance, txid, channel_id=channel)
        self._send(run, outbox)  # persisted first: what the co-signers now hold, we hold
        self._guards.refresh()
        change = signed.change
        log.info("factory %s: sold %d sat in %s", run.instance[:16], run.sold_sat, txid)
        events.sale(run.instance, run.client, run.sold_sat, run.price_sat, "factory", txid)
        run.done(
            {
                "kind": "factory",
                "instance": run.instance,
                "sold_sat": run.sold_sat,
                "price_sat": run.price_sat,
                "sale_txid": txid,
                "channel_id": channel,
                "stock_left_sat": 0 if change is None else change.amount,
            }
        )

    def _set_sale(self, instance: str, txid: str, **changes: Any) -> None:
        record = self._records.get(instance)
        assert isinstance(record, store.LspRecord)
        sales = tuple(
            dataclasses.replace(e, **changes) if e.sale_txid == txid else e for e in record.sales
        )
        self._records.persist(record.replace(sales=sales))

    def _ack(self, record: store.LspRecord, index: int, p: protocol.SaleStep) -> None:
        entry = next((e for e in record.sales if e.session == p.session.hex()), None)
        if entry is None or index in entry.acked or not entry.complete:
            return
        keys = factory_of(record)
        if index not in stock_cosigners(keys, entry.leaf):
            return
        self._set_sale(record.instance_id, entry.sale_txid, acked=(*entry.acked, index))

    # --- the fallback --------------------------------------------------------------------------

    def _open_onchain(self, run: SaleRun) -> None:
        record = self._live(run.instance)
        buyer = store.ClientEntry(record.clients[run.client].node_id, run.sold_sat)
        [opened] = funding.per_client(
            [buyer],
            lambda c: funding.open_ordinary(self._node.rpc, c),
            "fundchannel",
            self._node.config.ceremony_timeout,
        )
        if isinstance(opened, RpcFailed):
            raise CeremonyError(str(opened))
        del self._runs[run.instance]
        channel_id, txid = opened
        record = self._live(run.instance)
        jit = JitChannel(run.client, channel_id, run.sold_sat, run.reason)
        self._records.persist(record.replace(jit=(*record.jit, jit)))
        log.info(
            "factory %s: opened an on-chain channel %s to client %d instead of a sale (%s)",
            run.instance[:16],
            channel_id[:16],
            run.client,
            run.reason,
        )
        events.sale(run.instance, run.client, run.sold_sat, run.price_sat, "onchain", channel_id)
        run.done(
            {
                "kind": "onchain",
                "instance": run.instance,
                "sold_sat": run.sold_sat,
                "price_sat": run.price_sat,
                "channel_id": channel_id,
                "funding_txid": txid,
                "reason": run.reason,
            }
        )

    # --- failures, deadlines, blocks -----------------------------------------------------------

    def _abort(self, run: SaleRun, reason: str) -> None:
        if self._runs.get(run.instance) is not run:
            return
        del self._runs[run.instance]
        record = self._records.get(run.instance)
        assert isinstance(record, store.LspRecord)
        buyer = record.clients[run.client].node_id
        if run.coordinator is not None:
            run.coordinator.forget()
        if run.channel_id is not None:  # completed on a sale never signed: close it
            entry = store.ClientEntry(buyer, run.sold_sat, channel_id=run.channel_id)
            funding.close_unfunded(self._node.rpc, entry)
        elif run.opened and run.kind is protocol.OfferKind.FACTORY:
            funding.cancel(self._node.rpc, buyer)
        told = {run.client} | (
            set(run.coordinator.cosigners) if run.coordinator is not None else set()
        )
        text = protocol.Text(
            protocol.PayloadType.ABORT, bytes.fromhex(run.instance), "sale aborted"
        )
        for c in sorted(told):
            try:
                self._peers.send(record.clients[c].node_id, text)
            except PeerUnreachable as e:
                log.info("could not tell %s of the aborted sale: %s", record.clients[c].node_id, e)
        log.warning(
            "factory %s: sale to client %d aborted: %s", run.instance[:16], run.client, reason
        )
        run.failed(CeremonyError(f"sale failed: {reason}"))

    def abort(self, instance: str, reason: str) -> None:
        run = self._runs.get(instance)
        if run is not None:
            self._abort(run, reason)

    def check_deadlines(self, now: float) -> None:
        for run in list(self._runs.values()):
            if now > run.deadline:
                waiting = (
                    "accept the offer"
                    if not run.accepted
                    else "sign"
                    if run.coordinator is None
                    else f"sign (clients {run.coordinator.waiting_for})"
                )
                timeout = self._node.config.ceremony_timeout
                self._abort(run, f"timed out: nobody answered ({waiting}) within {timeout:g}s")

    def on_block(self, height: int) -> None:
        """SALE_SIG again to every co-signer that has not acked a signed sale (after a restart
        of theirs or ours it may be all they lack to hold the sale)."""
        for record in self._records.all():
            if not isinstance(record, store.LspRecord) or record.state is not store.LspState.FUNDED:
                continue
            keys = factory_of(record) if record.sales else None
            for e in record.sales:
                if not e.complete or keys is None:
                    continue
                for c in stock_cosigners(keys, e.leaf):
                    if c in e.acked:
                        continue
                    step = protocol.SaleStep(
                        bytes.fromhex(record.instance_id),
                        bytes.fromhex(e.session),
                        protocol.SaleStepKind.SALE_SIG,
                        bytes.fromhex(e.sale_sig or ""),
                    )
                    try:
                        self._peers.send(record.clients[c].node_id, step)
                    except PeerUnreachable:
                        continue
