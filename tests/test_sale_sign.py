"""A sale signed over bytes: the LSP's SaleCoordinator and each co-signer's SaleCosigner exchange
only encoded SuperScalar payloads; the burn is signed and held by every co-signer before any sale
partial signature exists; a co-signer refuses hostile proposals; a stock is sold at most once."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from superscalar_plugin.engine import dw, protocol
from superscalar_plugin.engine.client_checks import ClientPolicy
from superscalar_plugin.engine.errors import CeremonyError, StockAlreadySold, UnsafeSale
from superscalar_plugin.engine.musig2 import pubkey_from_secret
from superscalar_plugin.engine.sale import Sale, StockChain, sale_chain_path, stock_cosigners
from superscalar_plugin.engine.sale_checks import Purchase
from superscalar_plugin.engine.sale_sign import (
    SaleCoordinator,
    SaleCosigner,
    SaleState,
    attach_sale_sig,
)
from superscalar_plugin.engine.sale_store import chain_of, merge_chain
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.engine.tx import Tx, TxOut
from superscalar_plugin.simulate import Participants, channel_script, seckey

from helpers import OUTPOINT, participants

INSTANCE = bytes(32)
POLICY = ClientPolicy()


def _wire(p: protocol.Payload) -> protocol.Payload:
    """Every message crosses as bytes."""
    return protocol.decode(protocol.encode(p))


def _setup(per_leaf: int = 2) -> tuple[Participants, int, StockChain]:
    p = participants(2 * per_leaf, FactoryParams(clients_per_leaf=per_leaf))
    f = p.factory
    leaf = f.topology.leaf_of_client[0]
    leaf_tx = f.transactions(OUTPOINT, dw.initial_states(f.topology), [leaf])[leaf]
    return p, leaf, StockChain.of_leaf(f, leaf, leaf_tx.txid)


def _sale(p: Participants, chain: StockChain, sold: int = 30_000, buyer: int = 0) -> Sale:
    assert chain.latest is not None
    other = pubkey_from_secret(seckey("sale", f"{len(chain.sales)}-{os.urandom(4).hex()}"))
    script = channel_script(p.factory.client_pubkeys[buyer], other)
    return Sale(chain.latest, buyer, sold, script, 2000)


def run_sale(
    p: Participants, chains: dict[int, StockChain], lsp_chain: StockChain, sale: Sale
) -> tuple[dict[int, StockChain], StockChain]:
    """One sale over bytes; every co-signer persists (here: keeps) its chain where it must."""
    f = p.factory
    co = SaleCoordinator(f, lsp_chain, sale, p.lsp_seckey, INSTANCE)
    proposal = _wire(co.proposal())
    assert isinstance(proposal, protocol.SaleProposal)
    signers = {
        c: SaleCosigner(
            f,
            c,
            p.client_seckeys[c],
            chains[c],
            proposal,
            POLICY,
            Purchase(sale.sold_sat) if c == sale.buyer else None,
        )
        for c in co.cosigners
    }
    out: dict[int, protocol.SaleStep] = {}
    for c, s in signers.items():
        out.update(co.receive(c, _wire(s.nonces())))  # type: ignore[arg-type]
    burn_psigs = {c: s.on_agg_nonces(_wire(out[c])) for c, s in signers.items()}  # type: ignore[arg-type]
    assert co.burn_sig is None
    out = {}
    for c, step in burn_psigs.items():
        out.update(co.receive(c, _wire(step)))  # type: ignore[arg-type]
    assert co.burn_sig is not None and co.sale_sig is None  # no sale signature exists yet
    for c, s in signers.items():
        chains[c] = s.on_burn_sig(_wire(out[c]), chains[c])  # type: ignore[arg-type]
        assert chains[c].sold(sale.stock.outpoint).burn_sig is not None  # type: ignore[union-attr]
    sale_psigs = {c: s.sale_psig(chains[c]) for c, s in signers.items()}
    out = {}
    for c, step in sale_psigs.items():
        out.update(co.receive(c, _wire(step)))  # type: ignore[arg-type]
    assert co.state is SaleState.DONE
    txid = co.sold.sale_tx.txid
    for c in signers:
        step = _wire(out[c])
        assert isinstance(step, protocol.SaleStep)
        chains[c] = attach_sale_sig(f, chains[c], txid, step.value)
    return chains, lsp_chain.record(co.signed())


@pytest.mark.parametrize("per_leaf", [2, 4])
def test_two_chained_sales_signed_over_bytes(per_leaf: int) -> None:
    p, leaf, origin = _setup(per_leaf)
    f = p.factory
    cos = stock_cosigners(f, leaf)
    chains = dict.fromkeys(cos, origin)
    lsp_chain = origin
    for sold in (30_000, 20_000):
        chains, lsp_chain = run_sale(p, chains, lsp_chain, _sale(p, lsp_chain, sold))
    assert all(c.sales == lsp_chain.sales for c in chains.values())
    assert all(s.complete for s in lsp_chain.sales)
    second = lsp_chain.sales[1]
    assert second.sale.stock.txid == lsp_chain.sales[0].sale_tx.txid  # chained on the change
    exits = sale_chain_path(chains[0], 0)
    assert [len(e.txs) for e in exits] == [1, 2]


def test_a_hostile_proposal_is_refused_before_any_nonce() -> None:
    p, _leaf, chain = _setup()
    f = p.factory
    co = SaleCoordinator(f, chain, _sale(p, chain), p.lsp_seckey, INSTANCE)
    honest = co.proposal()
    sale_tx = Tx.deserialize(honest.sale_tx)
    change = sale_tx.outputs[1]
    other_script = b"\x51\x20" + bytes(32)
    cases = {
        "change.script": replace(
            sale_tx,
            outputs=(sale_tx.outputs[0], TxOut(change.amount, other_script), sale_tx.outputs[2]),
        ),
        "change.amount": replace(
            sale_tx,
            outputs=(
                sale_tx.outputs[0],
                TxOut(change.amount - 1000, change.script_pubkey),
                sale_tx.outputs[2],
            ),
        ),
    }
    for field, tx in cases.items():
        bad = replace(honest, sale_tx=tx.serialize(include_witness=False))
        with pytest.raises(UnsafeSale) as e:
            SaleCosigner(f, 1, p.client_seckeys[1], chain, bad, POLICY)
        assert e.value.field == field
    with pytest.raises(UnsafeSale) as e:  # the buyer refuses an amount it did not agree to
        SaleCosigner(f, 0, p.client_seckeys[0], chain, honest, POLICY, Purchase(20_000))
    assert e.value.field == "sold_sat"
    with pytest.raises(UnsafeSale):
        SaleCosigner(f, 1, p.client_seckeys[1], chain, replace(honest, sale_tx=b"\x00"), POLICY)


def test_a_stock_is_sold_once_once_a_sale_signature_left() -> None:
    p, leaf, origin = _setup()
    f = p.factory
    chains = dict.fromkeys(stock_cosigners(f, leaf), origin)
    chains, lsp_chain = run_sale(p, chains, origin, _sale(p, origin))
    first = lsp_chain.sales[0].sale
    # The LSP asks again for the stock output it just sold, for another channel.
    again = SaleCoordinator(
        f, origin, replace(_sale(p, origin), stock=first.stock), p.lsp_seckey, INSTANCE
    )
    with pytest.raises(StockAlreadySold):
        SaleCosigner(f, 1, p.client_seckeys[1], chains[1], again.proposal(), POLICY)


def test_an_interrupted_sale_before_the_sale_signature_promises_nothing() -> None:
    """A co-signer that signed only the burn (the same for any sale of that stock) may sign a
    different sale of the same stock; one that recorded its sale signature may not."""
    p, _leaf, chain = _setup()
    f = p.factory
    first = SaleCoordinator(f, chain, _sale(p, chain), p.lsp_seckey, INSTANCE)
    s = SaleCosigner(f, 1, p.client_seckeys[1], chain, first.proposal(), POLICY)
    s.forget()  # aborted after nonces: nothing recorded
    other = SaleCoordinator(f, chain, _sale(p, chain, 25_000), p.lsp_seckey, INSTANCE)
    SaleCosigner(f, 1, p.client_seckeys[1], chain, other.proposal(), POLICY)  # accepted


def test_no_sale_signature_without_the_recorded_burn() -> None:
    p, _leaf, chain = _setup()
    f = p.factory
    co = SaleCoordinator(f, chain, _sale(p, chain), p.lsp_seckey, INSTANCE)
    s = SaleCosigner(f, 1, p.client_seckeys[1], chain, co.proposal(), POLICY)
    with pytest.raises(CeremonyError):
        s.sale_psig(chain)  # before the burn's signature
    step = protocol.SaleStep(INSTANCE, co.session, protocol.SaleStepKind.BURN_SIG, bytes(64))
    with pytest.raises(CeremonyError):
        s.on_burn_sig(step, chain)  # out of order (no aggregate nonces yet)


def test_sales_round_trip_through_records() -> None:
    p, leaf, origin = _setup()
    f = p.factory
    chains = dict.fromkeys(stock_cosigners(f, leaf), origin)
    chains, lsp_chain = run_sale(p, chains, origin, _sale(p, origin))
    entries = merge_chain((), lsp_chain, b"\x01" * 32, channel_id="ab" * 32)
    leaf_tx = f.transactions(OUTPOINT, dw.initial_states(f.topology), [leaf])[leaf]
    back = chain_of(f, leaf, leaf_tx.tx.serialize(include_witness=False).hex(), entries)
    assert back.sales == lsp_chain.sales and entries[0].channel_id == "ab" * 32
