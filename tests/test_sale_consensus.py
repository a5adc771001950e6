"""Liquidity sales and burn txs against Bitcoin Core's consensus rules (embedded kernel chain).

A published leaf's stock is sold twice in a chain; the burn tx of a stock output is final only
from block T+1 (nLockTime T); a second sale of a sold stock output conflicts on chain, and no
co-signer signs it. The stock output also has a path for L alone: after T and `stock_delay` blocks
after the stock output confirmed, never before (the last tests).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from superscalar_plugin.engine import musig2
from superscalar_plugin.engine.ceremony import sign_in_process
from superscalar_plugin.engine.client_checks import ClientPolicy
from superscalar_plugin.engine.errors import StockAlreadySold
from superscalar_plugin.engine.sale import (
    CHANNEL_VOUT,
    Sale,
    SoldStock,
    StockChain,
    StockRef,
    build_burn_tx,
    build_sale_tx,
    sign_sale_in_process,
    stock_script,
    stock_sweep,
    stock_sweep_valid_from,
)
from superscalar_plugin.engine.sale_checks import check_sale
from superscalar_plugin.engine.taproot import taproot_sighash
from superscalar_plugin.engine.tree import Factory, FactoryParams
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.simulate import Participants, channel_script, make_factory, seckey

pytest.importorskip("pbk", reason="py-bitcoinkernel is not installed (pip install -e '.[dev]')")

from superscalar_plugin.chain.kernel import COINBASE_MATURITY, KernelChain

# Every DW layer in its last state (no relative delays) keeps the chain short; L's leaf on the
# stock matures after T and 20 blocks after a stock output confirms.
PARAMS = FactoryParams(states_per_layer=2, step_blocks=1, ewt_margin=0, stock_delay=20)
NONFINAL = "bad-txns-nonfinal"  # Core's block-level reason for an unmet nLockTime or nSequence
SPENT = "bad-txns-inputs-missingorspent"
# OP_CHECKLOCKTIMEVERIFY or OP_CHECKSEQUENCEVERIFY unmet (the script ran: the tx itself was final)
LOCK_FAILED = "script-verify-flag-failed (Locktime requirement not satisfied)"
POLICY = ClientPolicy()


def _published_leaf(
    chain: KernelChain, timeout: int, client: int = 0
) -> tuple[Participants, StockChain]:
    """A funded 4-client factory (2 per leaf) whose path to `client`'s leaf is confirmed."""
    p = make_factory(4, PARAMS, timeout_height=timeout, seed="sale-consensus")
    f = p.factory
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    states = (PARAMS.states_per_layer - 1,) * len(f.topology.nodes)
    path = f.topology.client_path(client)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys, path)
    result = chain.mine([signed[n].raw() for n in path])  # no relative locks: one block
    assert result.accepted, (result.reason, result.detail)
    leaf = path[-1]
    return p, StockChain.of_leaf(f, leaf, signed[leaf].txid)


def _sale(f: Factory, chain: StockChain, buyer: int, sold: int) -> Sale:
    assert chain.latest is not None
    other = musig2.pubkey_from_secret(seckey("sale-consensus", f"peer-{len(chain.sales)}"))
    return Sale(chain.latest, buyer, sold, channel_script(f.client_pubkeys[buyer], other), 2000)


def _sell(p: Participants, chain: StockChain, buyer: int, sold: int) -> StockChain:
    """Checked by the other co-signer, recorded, then signed (burn first) by everyone."""
    f = p.factory
    sale = _sale(f, chain, buyer, sold)
    cosigner = 1 - buyer  # the leaf's other client
    checked = check_sale(
        f,
        chain,
        sale,
        build_sale_tx(f, sale).tx,
        build_burn_tx(f, sale.stock).tx,
        cosigner,
        POLICY,
    )
    chain = chain.record(checked)
    signed = sign_sale_in_process(f, checked, p.lsp_seckey, p.client_seckeys)
    return chain.with_signatures(
        f, sale.stock.outpoint, burn_sig=signed.burn_sig, sale_sig=signed.sale_sig
    )


def test_two_chained_sales_confirm_after_the_leaf_and_open_the_buyers_channels(
    kernel_chain: KernelChain,
) -> None:
    chain = kernel_chain
    timeout = COINBASE_MATURITY + 60
    p, stock = _published_leaf(chain, timeout)
    f = p.factory
    stock = _sell(p, stock, buyer=0, sold=30_000)
    stock = _sell(p, stock, buyer=1, sold=20_000)
    first, second = stock.sales
    # The second sale cannot go before the first: its stock output does not exist yet.
    early = chain.mine([second.signed_sale().raw()])
    assert not early.accepted and early.reason == SPENT
    assert chain.mine([first.signed_sale().raw()]).accepted
    assert chain.mine([second.signed_sale().raw()]).accepted
    for sold in (first, second):
        assert chain.utxo(sold.sale_tx.txid, CHANNEL_VOUT) == (
            sold.sale.sold_sat,
            sold.sale.channel_script,
        )
    latest = stock.latest
    assert latest is not None
    assert chain.utxo(*latest.outpoint) == (latest.amount, stock_script(f, stock.leaf))
    # Sold stock outputs are gone: their burn txs can never confirm, even after T.
    chain.mine_empty(timeout - chain.height)
    for sold in (first, second):
        late = chain.mine([sold.signed_burn().raw()])
        assert not late.accepted and late.reason == SPENT


def test_the_burn_of_a_stalled_sale_waits_for_T_and_the_stock_delay_then_burns_the_stock(
    kernel_chain: KernelChain,
) -> None:
    chain = kernel_chain
    timeout = COINBASE_MATURITY + 12
    p, stock = _published_leaf(chain, timeout)
    stock = _sell(p, stock, buyer=0, sold=30_000)
    assert chain.mine([stock.sales[0].signed_sale().raw()]).accepted
    change_height = chain.height  # where the stock output of the next sale confirmed
    # The second sale is signed, then stalled: the LSP never lets it confirm.
    stock = _sell(p, stock, buyer=1, sold=20_000)
    stalled = stock.sales[1]
    burn = stalled.signed_burn()
    assert burn.unsigned.tx.locktime == timeout
    assert chain.height < timeout - 1
    chain.mine_empty(timeout - 1 - chain.height)
    at_t = chain.mine([burn.raw()])  # would be block T: nLockTime T is final only from T+1
    assert not at_t.accepted and at_t.reason == NONFINAL
    chain.mine_empty(1)  # block T
    # From T+1 until L's own stock path opens (`stock_delay` after the stock output confirmed)
    # the burn waits too (BIP68): a complete sale held by an absent buyer can still go in.
    assert chain.height + 1 < change_height + PARAMS.stock_delay
    early = chain.mine([burn.raw()])
    assert not early.accepted and "BIP68" in early.detail
    chain.mine_empty(change_height + PARAMS.stock_delay - 1 - chain.height)
    after = chain.mine([burn.raw()])
    assert after.accepted and after.height == change_height + PARAMS.stock_delay
    assert chain.utxo(*stalled.sale.stock.outpoint) is None  # all of it went to the miner
    # The stalled sale can never confirm now, and the first buyer's channel stands.
    late = chain.mine([stalled.signed_sale().raw()])
    assert not late.accepted and late.reason == SPENT
    assert chain.utxo(stock.sales[0].sale_tx.txid, CHANNEL_VOUT) is not None


def test_a_second_sale_of_the_same_stock_conflicts_and_no_co_signer_signs_it(
    kernel_chain: KernelChain,
) -> None:
    chain = kernel_chain
    p, stock = _published_leaf(chain, COINBASE_MATURITY + 60)
    f = p.factory
    stock = _sell(p, stock, buyer=0, sold=30_000)
    first = stock.sales[0]
    # The LSP asks again for the same stock output, now for itself as "buyer" 1.
    second_sale = replace(_sale(f, stock, 1, 60_000), stock=first.sale.stock)
    second_tx, burn = build_sale_tx(f, second_sale), build_burn_tx(f, second_sale.stock)
    for cosigner in (0, 1):
        with pytest.raises(StockAlreadySold):
            check_sale(f, stock, second_sale, second_tx.tx, burn.tx, cosigner, POLICY)
    # Had every co-signer been the LSP's sockpuppet, the two sales still conflict on chain.
    forged = sign_sale_in_process(
        f, SoldStock(second_sale, second_tx, burn), p.lsp_seckey, p.client_seckeys
    )
    both = chain.mine([first.signed_sale().raw(), forged.signed_sale().raw()])
    assert not both.accepted and both.reason == SPENT
    assert chain.mine([first.signed_sale().raw()]).accepted
    late = chain.mine([forged.signed_sale().raw()])
    assert not late.accepted and late.reason == SPENT


def _lsp_sweep(
    f: Factory, stock: StockRef, lsp_seckey: bytes, dest: bytes, *, locktime: int, sequence: int
) -> bytes:
    """L alone spends a stock output through its script path, with the given locks (the honest
    sweep is `stock_sweep`: nLockTime T, nSequence stock_delay)."""
    node = f.topology.nodes[stock.leaf]
    out = f.stock_output(node.lo, node.hi)
    leaf = f.stock_leaf
    tx = Tx(
        2, (TxIn(stock.txid, stock.vout, sequence),), (TxOut(stock.amount - 1000, dest),), locktime
    )
    digest = taproot_sighash(tx, 0, [(stock.amount, out.script_pubkey)], leaf=leaf)
    sig = musig2.schnorr_sign(digest, lsp_seckey)
    return tx.with_witnesses([[sig, leaf.script, out.control_block(leaf)]]).serialize()


def test_l_alone_cannot_take_a_stock_before_T_however_long_it_has_been_on_chain(
    kernel_chain: KernelChain,
) -> None:
    """The claw-back of issue 16: the LSP publishes a leaf, waits `stock_delay` blocks and takes
    the stock with the unconfirmed sale chained on it. The stock's path for L alone now needs T:
    with any nLockTime below T the script fails (CLTV), with nLockTime T the tx is not final
    before block T+1; a complete sale stays publishable meanwhile."""
    chain = kernel_chain
    timeout = COINBASE_MATURITY + 2 * PARAMS.stock_delay + 10
    p, stock = _published_leaf(chain, timeout)
    f = p.factory
    leaf_height = chain.height
    stock = _sell(p, stock, buyer=0, sold=30_000)
    sale = stock.sales[0]
    dest = chain.wallet_script_pubkey
    chain.mine_empty(timeout - 1 - chain.height)  # the next block is T: the delay is long past
    assert chain.height >= leaf_height + PARAMS.stock_delay
    for locktime in (0, timeout - 1):
        sweep = _lsp_sweep(
            f, stock.origin, p.lsp_seckey, dest, locktime=locktime, sequence=PARAMS.stock_delay
        )
        early = chain.mine([sweep])
        assert not early.accepted and (early.reason or "").endswith(LOCK_FAILED), locktime
    honest = stock_sweep(f, stock.origin, p.lsp_seckey, dest, 2000)
    assert Tx.deserialize(honest).locktime == timeout
    early = chain.mine([honest])
    assert not early.accepted and early.reason == NONFINAL
    # Before T only the co-signed key path spends the stock: the buyer's sale goes in whenever.
    assert chain.mine([sale.signed_sale().raw()]).accepted
    assert chain.utxo(sale.sale_tx.txid, CHANNEL_VOUT) == (
        sale.sale.sold_sat,
        sale.sale.channel_script,
    )


def test_l_alone_takes_an_unsold_stock_only_after_T_and_the_stock_delay(
    kernel_chain: KernelChain,
) -> None:
    """A stock output that confirms just before T: L's sweep is not final at T+1 (BIP68: the
    stock delay counts from the output's confirmation), nor with a shorter nSequence (CSV fails);
    it goes in `stock_delay` blocks after the output confirmed."""
    chain = kernel_chain
    timeout = COINBASE_MATURITY + 12
    p, stock = _published_leaf(chain, timeout)
    f = p.factory
    leaf_height = chain.height
    assert leaf_height + PARAMS.stock_delay > timeout + 2  # the delay ends well after T
    dest = chain.wallet_script_pubkey
    honest = stock_sweep(f, stock.origin, p.lsp_seckey, dest, 2000)
    assert stock_sweep_valid_from(f, leaf_height) == leaf_height + PARAMS.stock_delay
    chain.mine_empty(timeout - chain.height)  # block T: the next block may hold nLockTime T
    at_t1 = chain.mine([honest])
    assert not at_t1.accepted and at_t1.reason == NONFINAL  # BIP68: the delay is not over
    chain.mine_empty(leaf_height + PARAMS.stock_delay - 2 - chain.height)
    # Block leaf + stock_delay - 1: a sweep asking one block less is final, and its script fails.
    short = _lsp_sweep(
        f, stock.origin, p.lsp_seckey, dest, locktime=timeout, sequence=PARAMS.stock_delay - 1
    )
    bad = chain.mine([short])
    assert not bad.accepted and (bad.reason or "").endswith(LOCK_FAILED)
    early = chain.mine([honest])
    assert not early.accepted and early.reason == NONFINAL
    chain.mine_empty(1)
    taken = chain.mine([honest])  # block leaf + stock_delay
    assert taken.accepted and taken.height == leaf_height + PARAMS.stock_delay
    assert chain.utxo(*stock.origin.outpoint) is None


def test_l_alone_takes_a_long_confirmed_stock_from_T_plus_1(kernel_chain: KernelChain) -> None:
    """A stock output on chain for longer than the delay: L's sweep is final from block T+1
    (not at T), the same block from which the burn could go in."""
    chain = kernel_chain
    timeout = COINBASE_MATURITY + PARAMS.stock_delay + 8
    p, stock = _published_leaf(chain, timeout)
    f = p.factory
    leaf_height = chain.height
    assert stock_sweep_valid_from(f, leaf_height) == timeout + 1
    honest = stock_sweep(f, stock.origin, p.lsp_seckey, chain.wallet_script_pubkey, 2000)
    chain.mine_empty(timeout - 1 - chain.height)
    at_t = chain.mine([honest])  # block T
    assert not at_t.accepted and at_t.reason == NONFINAL
    chain.mine_empty(1)  # block T
    taken = chain.mine([honest])
    assert taken.accepted and taken.height == timeout + 1
