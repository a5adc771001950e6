"""Signing a liquidity sale over the wire: the LSP's `SaleCoordinator`, a co-signer's `SaleCosigner`.

Two MuSig2 signatures of the same stock output, the burn's before the sale's (spec-notes 3.6):

1. LSP -> every co-signer of the leaf: SALE (terms, the unsigned sale and burn txs). Each checks
   everything (`sale_checks.check_sale`) and answers NONCES (burn, then sale).
2. LSP -> every co-signer: AGG_NONCES. Each answers BURN_PSIG only.
3. LSP -> every co-signer: BURN_SIG, the burn's final signature. Each verifies it, records the sale
   with it in its `StockChain` (the caller persists that record), and only then answers SALE_PSIG
   (`check_may_sign_sale`): nobody releases a sale signature without the signed burn in hand.
4. LSP: the sale's final signature (SALE_SIG to every co-signer, who verifies and records it).

Message in, state updated, message out; nothing here does I/O. Secret nonces live only in memory
(single-use `SecretNonce`s); an interrupted sale restarts with fresh ones. A co-signer that never
released its sale partial signature has promised nothing: its burn signature is the same for any
sale of that stock, so a different sale of the same stock may still be signed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from enum import Enum

from . import musig2
from .client_checks import ClientPolicy
from .errors import CeremonyError, InvalidPartialSignature, MuSigError, SuperscalarError, UnsafeSale
from .protocol import SaleProposal, SaleStep, SaleStepKind
from .sale import (
    Sale,
    SoldStock,
    StockChain,
    StockRef,
    build_burn_tx,
    build_sale_tx,
    stock_cosigners,
    stock_signing_keyagg,
)
from .sale_checks import Purchase, check_may_sign_sale, check_sale
from .tree import FactoryKeys
from .tx import Tx

BURN, SALE = 0, 1  # order of the two signatures in NONCES and AGG_NONCES


class SaleState(Enum):
    NONCES = "nonces"  # waiting for every co-signer's nonces
    BURN_PSIGS = "burn_psigs"
    SALE_PSIGS = "sale_psigs"
    DONE = "done"


def _pair(value: bytes) -> tuple[bytes, bytes]:
    return value[:66], value[66:]


class SaleCoordinator:
    """The LSP's side of one sale: `sale` of `chain.latest`, signed with the leaf's clients."""

    def __init__(
        self,
        keys: FactoryKeys,
        chain: StockChain,
        sale: Sale,
        lsp_seckey: bytes,
        instance: bytes,
        session: bytes | None = None,
    ) -> None:
        self.keys = keys
        self.instance = instance
        self.session = session or os.urandom(32)
        self.sold = SoldStock(sale, build_sale_tx(keys, sale), build_burn_tx(keys, sale.stock))
        chain.record(self.sold)  # the latest stock, never sold: or it raises
        leaf = sale.stock.leaf
        self.cosigners = tuple(stock_cosigners(keys, leaf))
        self._keyagg = stock_signing_keyagg(keys, leaf)
        self._seckey = lsp_seckey
        self._msgs = (self.sold.burn_tx.sighash, self.sold.sale_tx.sighash)
        self._lsp_nonces = [
            musig2.nonce_gen(keys.lsp_pubkey, seckey=lsp_seckey, keyagg=self._keyagg, msg=m)
            for m in self._msgs
        ]
        self._pubnonces: dict[int, tuple[bytes, bytes]] = {}
        self._sessions: list[musig2.Session] = []
        self._psigs: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self.state = SaleState.NONCES
        self.burn_sig: bytes | None = None
        self.sale_sig: bytes | None = None

    def proposal(self) -> SaleProposal:
        s = self.sold.sale
        return SaleProposal(
            self.instance,
            self.session,
            s.stock.txid,
            s.stock.vout,
            s.stock.amount,
            s.buyer,
            s.sold_sat,
            s.fee_rate_kvb,
            s.channel_script,
            self.sold.sale_tx.tx.serialize(include_witness=False),
            self.sold.burn_tx.tx.serialize(include_witness=False),
        )

    @property
    def waiting_for(self) -> list[int]:
        got: set[int] | None = {
            SaleState.NONCES: set(self._pubnonces),
            SaleState.BURN_PSIGS: set(self._psigs[BURN]),
            SaleState.SALE_PSIGS: set(self._psigs[SALE]),
        }.get(self.state)
        return [] if got is None else [c for c in self.cosigners if c not in got]

    def signed(self) -> SoldStock:
        if self.burn_sig is None or self.sale_sig is None:
            raise CeremonyError("the sale is not signed yet")
        return replace(self.sold, burn_sig=self.burn_sig, sale_sig=self.sale_sig)

    def forget(self) -> None:
        """Drop our secret nonces (abort)."""
        self._lsp_nonces.clear()

    def _step(self, kind: SaleStepKind, value: bytes) -> SaleStep:
        return SaleStep(self.instance, self.session, kind, value)

    def receive(self, client: int, step: SaleStep) -> dict[int, SaleStep]:
        """One co-signer's step; the steps to send (to every co-signer) once a round is complete.
        Anything unexpected or invalid raises naming the client."""
        if client not in self.cosigners:
            raise CeremonyError(f"client {client} does not co-sign this stock")
        if step.session != self.session:
            raise CeremonyError(f"client {client}: a step of another sale")
        expected = {
            SaleState.NONCES: SaleStepKind.NONCES,
            SaleState.BURN_PSIGS: SaleStepKind.BURN_PSIG,
            SaleState.SALE_PSIGS: SaleStepKind.SALE_PSIG,
        }.get(self.state)
        if step.kind is not expected:
            raise CeremonyError(
                f"client {client}: unexpected {step.kind.name} ({self.state.value})"
            )
        if client not in self.waiting_for:
            raise CeremonyError(f"client {client}: {step.kind.name} sent twice")
        if self.state is SaleState.NONCES:
            return self._on_nonces(client, step.value)
        return self._on_psig(client, BURN if self.state is SaleState.BURN_PSIGS else SALE, step)

    def _on_nonces(self, client: int, value: bytes) -> dict[int, SaleStep]:
        nonces = _pair(value)
        for n in nonces:
            try:
                musig2.nonce_agg([n])
            except MuSigError as e:
                raise CeremonyError(f"client {client}: invalid nonce") from e
        self._pubnonces[client] = nonces
        if self.waiting_for:
            return {}
        aggs = []
        for i, msg in enumerate(self._msgs):
            pubs = [self._pubnonces[c][i] for c in self.cosigners] + [self._lsp_nonces[i][1]]
            agg = musig2.nonce_agg(pubs)
            aggs.append(agg)
            self._sessions.append(musig2.Session.create(agg, msg, self._keyagg))
        self.state = SaleState.BURN_PSIGS
        step = self._step(SaleStepKind.AGG_NONCES, b"".join(aggs))
        return dict.fromkeys(self.cosigners, step)

    def _on_psig(self, client: int, which: int, step: SaleStep) -> dict[int, SaleStep]:
        pubkey = self.keys.client_pubkeys[client]
        session = self._sessions[which]
        if not musig2.partial_sig_verify(
            step.value, self._pubnonces[client][which], pubkey, session
        ):
            raise InvalidPartialSignature(f"client {client}", ("burn", "sale")[which])
        self._psigs[which][client] = step.value
        if self.waiting_for:
            return {}
        secnonce, _ = self._lsp_nonces[which]
        psigs = [*self._psigs[which].values(), musig2.partial_sign(secnonce, self._seckey, session)]
        sig = musig2.partial_sig_agg(psigs, session)
        if not musig2.schnorr_verify(sig, self._msgs[which], self._keyagg.xonly_pubkey):
            raise InvalidPartialSignature("lsp", "own sale signature invalid")
        if which == BURN:
            self.burn_sig, self.state = sig, SaleState.SALE_PSIGS
            return dict.fromkeys(self.cosigners, self._step(SaleStepKind.BURN_SIG, sig))
        self.sale_sig, self.state = sig, SaleState.DONE
        return dict.fromkeys(self.cosigners, self._step(SaleStepKind.SALE_SIG, sig))


class SaleCosigner:
    """A co-signer's side of one sale (the buyer's too): checks the proposal before anything,
    signs the burn, and the sale only once the signed burn is recorded."""

    def __init__(
        self,
        keys: FactoryKeys,
        me: int,
        seckey: bytes,
        chain: StockChain,
        proposal: SaleProposal,
        policy: ClientPolicy,
        purchase: Purchase | None = None,
    ) -> None:
        p = proposal
        self.keys, self.me, self.session = keys, me, p.session
        self.instance = p.instance_id
        stock = StockRef(chain.leaf, p.stock_txid, p.stock_vout, p.stock_amount)
        sale = Sale(stock, p.buyer, p.sold_sat, p.channel_script, p.fee_rate_kvb)
        try:
            sale_tx, burn_tx = Tx.deserialize(p.sale_tx), Tx.deserialize(p.burn_tx)
        except SuperscalarError as e:
            raise UnsafeSale("tx", f"not a transaction: {e}") from e
        self.sold = check_sale(keys, chain, sale, sale_tx, burn_tx, me, policy, purchase)
        self._seckey = seckey
        self._pubkey = keys.client_pubkeys[me]
        keyagg = stock_signing_keyagg(keys, chain.leaf)
        self._keyagg = keyagg
        self._msgs = (self.sold.burn_tx.sighash, self.sold.sale_tx.sighash)
        self._nonces = [
            musig2.nonce_gen(self._pubkey, seckey=seckey, keyagg=keyagg, msg=m) for m in self._msgs
        ]
        self._sessions: list[musig2.Session] = []
        self.state = SaleState.NONCES

    @property
    def stock(self) -> StockRef:
        return self.sold.sale.stock

    def _step(self, kind: SaleStepKind, value: bytes) -> SaleStep:
        return SaleStep(self.instance, self.session, kind, value)

    def _expect(self, step: SaleStep, kind: SaleStepKind, state: SaleState) -> None:
        if step.session != self.session:
            raise CeremonyError("a step of another sale")
        if step.kind is not kind or self.state is not state:
            raise CeremonyError(f"unexpected {step.kind.name} while {self.state.value}")

    def nonces(self) -> SaleStep:
        return self._step(SaleStepKind.NONCES, self._nonces[BURN][1] + self._nonces[SALE][1])

    def on_agg_nonces(self, step: SaleStep) -> SaleStep:
        """The aggregate nonces: our burn partial signature (never the sale's yet)."""
        self._expect(step, SaleStepKind.AGG_NONCES, SaleState.NONCES)
        for agg, msg in zip(_pair(step.value), self._msgs, strict=True):
            self._sessions.append(musig2.Session.create(agg, msg, self._keyagg))
        secnonce, _ = self._nonces[BURN]
        psig = musig2.partial_sign(secnonce, self._seckey, self._sessions[BURN])
        self.state = SaleState.BURN_PSIGS
        return self._step(SaleStepKind.BURN_PSIG, psig)

    def on_burn_sig(self, step: SaleStep, chain: StockChain) -> StockChain:
        """The burn's final signature: the chain with this sale recorded and its signed burn
        (verified). The caller persists it before `sale_psig`."""
        self._expect(step, SaleStepKind.BURN_SIG, SaleState.BURN_PSIGS)
        chain = chain.record(self.sold)
        chain = chain.with_signatures(self.keys, self.stock.outpoint, burn_sig=step.value)
        self.state = SaleState.SALE_PSIGS
        return chain

    def sale_psig(self, chain: StockChain) -> SaleStep:
        """Our sale partial signature, from a chain that holds the sale and its signed burn
        (the one persisted)."""
        if self.state is not SaleState.SALE_PSIGS:
            raise CeremonyError(f"the sale cannot be signed while {self.state.value}")
        sold = check_may_sign_sale(chain, self.stock)
        if sold.sale_tx.txid != self.sold.sale_tx.txid:
            raise UnsafeSale("stock", "the recorded sale of this stock is another one")
        secnonce, _ = self._nonces[SALE]
        psig = musig2.partial_sign(secnonce, self._seckey, self._sessions[SALE])
        self.state = SaleState.DONE
        return self._step(SaleStepKind.SALE_PSIG, psig)

    def forget(self) -> None:
        self._nonces.clear()


def attach_sale_sig(
    keys: FactoryKeys, chain: StockChain, session_of: str, sig: bytes
) -> StockChain:
    """A SALE_SIG for a sale we recorded (`session_of`: its sale txid): the chain with it
    (verified), during the sale or any time later (the LSP sends it again until we ack)."""
    sold = next((s for s in chain.sales if s.sale_tx.txid == session_of), None)
    if sold is None:
        raise CeremonyError(f"no recorded sale {session_of}")
    return chain.with_signatures(keys, sold.sale.stock.outpoint, sale_sig=sig)
