"""A client's side of liquidity sales: co-sign the sales of its leaf's stock, and accept its own.

Only the factory's LSP is heard (anyone else's message is dropped), and only while the factory is
ours, signed, not compromised, not exiting and not moving out.

- OFFER (we are the buyer): accepted for the purchase we are paying for (`buyer`: same amount and
  price) or a gift (price 0). A factory OFFER makes us expect the LSP's zero-conf open of that
  amount (`opens`, as at creation); we answer ACCEPT.
- SALE (to every co-signer of the leaf, the buyer too): `SaleCosigner` checks all of it against our
  stored stock chain before any nonce leaves (NONCES).
- AGG_NONCES: our burn partial signature. BURN_SIG: the sale recorded with its signed burn and
  persisted, and only then our sale partial signature. SALE_SIG (during the sale, or sent again
  later): verified, persisted, DONE.
- Anything unsafe: REJECT to the LSP naming the field, and the sale in flight is forgotten; a sale
  we recorded stays (it is a promise), and our guards fail every HTLC into its channel until it is
  fully signed.
- An incomplete sale, recoverable: if our sale partial signature never left (refused by our
  checks, or the LSP unreachable when it was due), its secret nonce is forgotten and the sale is
  dropped from our chain, so the stock can be sold again. Once our partial signature has left,
  the sale may complete at any time (the LSP holds it and the others'), so the stock is spent for
  it: we keep it and sign only that exact sale again (`check_stock` allows a retried ceremony of
  the same sale with fresh nonces; the SALE_SIG completes it whenever it comes). A co-client that
  withholds its partial signature after ours left can thus stall the leaf's sales, as it could by
  refusing to sign at all; the LSP then opens on-chain channels (its fallback).

Owns: the sales in flight (`CosignSession`: the SaleCosigner with its secret nonces, never
persisted). Worker only. May call: `records`, `peers`, `opens`, `guards.refresh`, `buyer`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ...engine import protocol, store
from ...engine.client_checks import ClientPolicy
from ...engine.errors import CeremonyError, SuperscalarError, UnsafeSale
from ...engine.sale import CHANNEL_VOUT, StockChain
from ...engine.sale_checks import Purchase
from ...engine.sale_sign import SaleCosigner, attach_sale_sig
from ...engine.sale_store import Payment, chain_of, merge_chain, without_sale
from ...engine.solvency import Step, check_channel_bound
from ...engine.tree import FactoryKeys
from ..creation.opens import ChannelOpens
from ..lightningd.config import MIN_CHANNEL_SAT
from ..lightningd.guards import Guards
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import LIVE, Records, held_updates, is_compromised
from ..lightningd.runtime import PeerUnreachable
from .buyer import Buyer

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)


@dataclass
class CosignSession:
    session: bytes
    deadline: float
    offer: protocol.Offer | None = None  # set when we are the buyer
    signer: SaleCosigner | None = None
    payment_hash: str | None = None  # our payment for it (a priced purchase of ours)


def client_chain(record: store.ClientRecord) -> tuple[FactoryKeys, StockChain]:
    """Our leaf's stock chain as we stored it, with the keys of the factory we signed."""
    header = record.signed_header()
    if header is None or not record.path:
        raise CeremonyError("we hold no signed path in this factory")
    keys = header.factory_keys()
    leaf = record.path[-1]
    return keys, chain_of(keys, leaf.node, leaf.raw, record.sales)


class Cosigner:
    def __init__(
        self,
        node: Node,
        records: Records,
        peers: Peers,
        opens: ChannelOpens,
        guards: Guards,
        buyer: Buyer,
    ) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._opens = opens
        self._guards = guards
        self._buyer = buyer
        self._sessions: dict[str, CosignSession] = {}

    def expects(self, instance: str) -> bool:
        """A sale or a purchase of ours is in flight: the LSP's ABORT or REJECT is for it."""
        return instance in self._sessions or self._buyer.waiting(instance)

    def on_payload(self, record: store.ClientRecord, peer: str, p: protocol.Payload) -> None:
        instance = record.instance_id
        if peer != record.lsp_node_id:
            peer_log.warning(peer, "dropped a sale message from %s: not the LSP", peer)
            return
        if isinstance(p, protocol.Quote):
            self._buyer.on_quote(record, p)
            return
        if isinstance(p, protocol.Text):
            self._buyer.on_refusal(instance, p.reason)
            if self._forget(instance):
                log.info("factory %s: the LSP ended the sale: %s", instance[:16], p.reason)
            return
        try:
            if isinstance(p, protocol.SaleStep) and p.kind is protocol.SaleStepKind.SALE_SIG:
                self._on_sale_sig(record, p)  # completing a sale we promised is always welcome
                return
            self._check_live(record)
            if isinstance(p, protocol.Offer):
                self._on_offer(record, p)
            elif isinstance(p, protocol.SaleProposal):
                self._on_proposal(record, p)
            elif isinstance(p, protocol.SaleStep):
                self._on_step(record, p)
        except SuperscalarError as e:
            peer_log.warning(peer, "factory %s: refusing the sale: %s", instance[:16], e)
            self._forget(instance)
            self._tell(record, str(e))

    def _check_live(self, record: store.ClientRecord) -> None:
        if record.state not in LIVE or is_compromised(record):
            raise UnsafeSale("factory", f"is {record.state.value}, not a live signed factory")
        if record.exit is not None or record.moving_to is not None:
            raise UnsafeSale("factory", "is ending (exiting or moving out)")
        if record.update is not None or held_updates(record):
            # A DW update we agreed to, or signed and never stored, may replace our leaf (and the
            # stock a sale spends) at any moment: a purchase would lose its burn (red team,
            # rounds 11 and 12).
            raise UnsafeSale("factory", "a DW update of ours is in flight")

    def _tell(self, record: store.ClientRecord, reason: str) -> None:
        text = protocol.Text(protocol.PayloadType.REJECT, bytes.fromhex(record.instance_id), reason)
        try:
            self._peers.send(record.lsp_node_id, text)
        except PeerUnreachable as e:
            log.info("could not tell the LSP: %s", e)

    def _forget(self, instance: str) -> bool:
        cs = self._sessions.pop(instance, None)
        if cs is None:
            return False
        if cs.signer is not None:
            cs.signer.forget()
        self._opens.forget(cs.session.hex())
        self._guards.expected.discard(cs.session.hex())
        return True

    def _deadline(self) -> float:
        return time.monotonic() + 3 * self._node.config.ceremony_timeout

    # --- the steps -----------------------------------------------------------------------------

    def _on_offer(self, record: store.ClientRecord, offer: protocol.Offer) -> None:
        instance = record.instance_id
        paid = self._buyer.paying(instance, offer.sold_sat, offer.fee_sat)
        if not paid and offer.fee_sat != 0:
            raise UnsafeSale("offer", "a priced offer we did not ask for")
        if not paid and self._buyer.waiting(instance):
            # Our purchase is being paid: a gift now would be signed as costing us nothing, and
            # its burn never published however our payment ends (red-team finding, round 9).
            raise UnsafeSale("offer", "a gift while a purchase of ours is in flight")
        if offer.sold_sat < MIN_CHANNEL_SAT:
            raise UnsafeSale("offer", f"{offer.sold_sat} sat is below {MIN_CHANNEL_SAT}")
        self._forget(instance)
        self._sessions[instance] = CosignSession(
            offer.session,
            self._deadline(),
            offer=offer,
            payment_hash=self._buyer.payment_hash(instance) if paid else None,
        )
        if offer.kind is protocol.OfferKind.FACTORY:
            self._opens.accepted(offer.session.hex(), record.lsp_node_id, offer.sold_sat)
            self._guards.expected.add(offer.session.hex())  # its channel may come at any time
        self._buyer.offered(instance, offer)
        step = protocol.SaleStep(
            offer.instance_id, offer.session, protocol.SaleStepKind.ACCEPT, b""
        )
        self._peers.send(record.lsp_node_id, step)

    def _on_proposal(self, record: store.ClientRecord, p: protocol.SaleProposal) -> None:
        instance = record.instance_id
        cs = self._sessions.get(instance)
        me = record.client_index
        purchase = None
        offer = cs.offer if cs is not None and cs.session == p.session else None
        if p.buyer == me:
            if offer is None or offer.kind is not protocol.OfferKind.FACTORY:
                raise UnsafeSale("purchase", "a sale to us that we did not accept")
            purchase = Purchase(offer.sold_sat)
        keys, chain = client_chain(record)
        cfg = self._node.config
        policy = ClientPolicy(
            max_ewt=cfg.max_ewt,
            max_fee_rate_kvb=cfg.max_fee_rate_kvb,
            min_fee_rate_kvb=cfg.min_fee_rate_kvb,
        )
        seckey = self._node.client_key(instance)
        signer = SaleCosigner(keys, me, seckey, chain, p, policy, purchase)
        if purchase is not None:
            txid = signer.sold.sale_tx.txid
            if any(e.sale_txid == txid for e in record.sales):
                # An honest LSP never runs a purchase twice; signed again, the sale we paid for
                # once would take another purchase's terms, a gift's or a failed payment's, and
                # lose its burn (red-team findings, rounds 9 and 10).
                raise UnsafeSale(
                    "purchase", f"sale {txid} is ours already: a purchase is signed once"
                )
            self._bind_purchase(record, signer)
        if offer is None:
            self._forget(instance)  # a new sale replaces one the LSP gave up
        payment_hash = cs.payment_hash if cs is not None and offer is not None else None
        self._sessions[instance] = CosignSession(
            p.session, self._deadline(), offer, signer, payment_hash
        )
        self._peers.send(record.lsp_node_id, signer.nonces())

    def _bind_purchase(self, record: store.ClientRecord, signer: SaleCosigner) -> None:
        """Before any nonce for a sale to us: our own node holds the channel the LSP completed
        on it, at the sale's channel output, and that output is the 2-of-2 of the funding keys
        our node recorded, for the amount (`nodedb`). The co-signers' checks (`check_sale`) stay
        as they are: their own outputs are untouched whatever the buyer's channel is."""
        db = self._node.db
        if db.usable() is not None and self._node.config.trust_channel_script:
            return  # the operator accepted trusting the LSP for the script
        sale, txid = signer.sold.sale, signer.sold.sale_tx.txid
        bound = db.bound_channel(Step.SALE_SIGNATURE, record.lsp_node_id, txid, CHANNEL_VOUT)
        check_channel_bound(
            Step.SALE_SIGNATURE, bound, txid, CHANNEL_VOUT, sale.channel_script, sale.sold_sat
        )

    def _on_step(self, record: store.ClientRecord, step: protocol.SaleStep) -> None:
        instance = record.instance_id
        cs = self._sessions.get(instance)
        if cs is None or cs.signer is None or cs.session != step.session:
            raise CeremonyError(f"{step.kind.name} for no sale in flight")
        if step.kind is protocol.SaleStepKind.AGG_NONCES:
            self._peers.send(record.lsp_node_id, cs.signer.on_agg_nonces(step))
        elif step.kind is protocol.SaleStepKind.BURN_SIG:
            _, chain = client_chain(record)
            chain = cs.signer.on_burn_sig(step, chain)
            # before our sale signature; our own purchase with how we pay for it (its burn is
            # never published for a purchase that cost us nothing)
            record = self._persist(record, chain, cs.session, **self._payment_terms(cs))
            _, stored = client_chain(record)
            try:
                psig = cs.signer.sale_psig(stored)
                self._peers.send(record.lsp_node_id, psig)
            except (SuperscalarError, PeerUnreachable) as e:
                self._drop_unsent(record, cs)  # our sale signature never left
                raise CeremonyError(f"the sale was not signed: {e}") from e
        else:
            raise CeremonyError(f"unexpected {step.kind.name} from the LSP")

    def _on_sale_sig(self, record: store.ClientRecord, step: protocol.SaleStep) -> None:
        """The sale's final signature: during the sale, or again later (until we ack)."""
        entry = next((e for e in record.sales if e.session == step.session.hex()), None)
        if entry is None:
            raise CeremonyError("SALE_SIG for a sale we never recorded")
        if not entry.complete:
            keys, chain = client_chain(record)
            chain = attach_sale_sig(keys, chain, entry.sale_txid, step.value)
            record = self._persist(record, chain, step.session)
            log.info(
                "factory %s: sale %s signed and stored", record.instance_id[:16], entry.sale_txid
            )
        cs = self._sessions.get(record.instance_id)
        if cs is not None and cs.session == step.session:
            del self._sessions[record.instance_id]
            self._guards.expected.discard(step.session.hex())
        done = protocol.SaleStep(step.instance_id, step.session, protocol.SaleStepKind.DONE, b"")
        self._peers.send(record.lsp_node_id, done)

    def _drop_unsent(self, record: store.ClientRecord, cs: CosignSession) -> None:
        """Our sale partial signature never left: its secret nonce is forgotten first (it was
        never persisted), so the sale can never complete; then the sale is dropped from our
        chain and its stock may be sold again (`StockChain.drop_unsent`)."""
        assert cs.signer is not None
        cs.signer.forget()
        if cs.offer is not None and cs.offer.fee_sat != 0:
            # Our own purchase: its price may still settle, and its burn (signed and stored) is
            # then our one recourse. Kept, as a restart would keep it (red team, round 11).
            log.info("factory %s: our purchase kept with its burn", record.instance_id[:16])
            return
        _, chain = client_chain(record)
        sold = cs.signer.sold
        try:
            chain.drop_unsent(sold.sale.stock.outpoint)
        except SuperscalarError as e:
            log.warning("factory %s: sale kept: %s", record.instance_id[:16], e)
            return
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.ClientRecord)
        self._records.persist(latest.replace(sales=without_sale(latest.sales, sold.sale_tx.txid)))
        self._guards.refresh()
        log.info(
            "factory %s: sale %s dropped: our signature of it never left",
            record.instance_id[:16],
            sold.sale_tx.txid,
        )

    @staticmethod
    def _payment_terms(cs: CosignSession) -> dict[str, Any]:
        if cs.offer is None:  # another client's sale
            return {}
        if cs.offer.fee_sat == 0:
            return {"payment": Payment.GIFT}
        return {"payment": Payment.PENDING, "payment_hash": cs.payment_hash}

    def _persist(
        self, record: store.ClientRecord, chain: StockChain, session: bytes, **extra: Any
    ) -> store.ClientRecord:
        """Our stock chain into the record; `extra` (our payment, for our own purchase) goes
        with a sale we did not hold yet."""
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.ClientRecord)
        sales = merge_chain(latest.sales, chain, session, **extra)
        if sales == latest.sales:
            return latest  # a retried sale we hold already: nothing to write
        latest = latest.replace(sales=sales)
        self._records.persist(latest)
        self._guards.refresh()  # our new channel is guarded (no HTLC until fully signed)
        return latest

    def check_deadlines(self, now: float) -> None:
        """The LSP times out first and tells us; our longer deadline only frees the state."""
        for instance, cs in list(self._sessions.items()):
            if now > cs.deadline:
                self._forget(instance)
