"""Liquidity sales from a leaf's stock: every hostile sale or burn tx is refused, by field.

The honest path first (so the hostile cases below are known to start from something a co-signer
signs), then each attack: a mutation of the honest tx or terms, and the field that refuses it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from superscalar_plugin.engine import dw, musig2
from superscalar_plugin.engine.ceremony import SignedNodeTx, sign_in_process
from superscalar_plugin.engine.client_checks import ClientPolicy
from superscalar_plugin.engine.errors import (
    CeremonyError,
    InvalidParameter,
    StockAlreadySold,
    UnsafeSale,
)
from superscalar_plugin.engine.exit import Broadcast, ChainView, PathTx, exit_step
from superscalar_plugin.engine.sale import (
    BURN_SCRIPT,
    CHANGE_VOUT,
    CHANNEL_VOUT,
    MIN_TX_NONWITNESS_SIZE,
    Sale,
    SoldStock,
    StockChain,
    StockRef,
    build_burn_tx,
    build_sale_tx,
    max_sold_sat,
    sale_chain_path,
    sign_sale_in_process,
    signed_vsize,
    stock_script,
    stock_signing_keyagg,
)
from superscalar_plugin.engine.sale_checks import (
    Purchase,
    check_burn_tx,
    check_may_sign_sale,
    check_sale,
)
from superscalar_plugin.engine.tree import (
    SEQUENCE_NO_RELATIVE_LOCK,
    Factory,
    FactoryParams,
    fee_for,
    keypath_tx_vsize,
)
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.simulate import Participants, channel_script, seckey

from helpers import OUTPOINT, participants

POLICY = ClientPolicy()  # max 50,000 sat/kvB
RATE = 2000
SOLD = 30_000
BUYER, OTHER = 0, 1  # the two clients of the first leaf
OUTSIDER = 2  # a client of the other leaf


def _setup() -> tuple[Participants, Factory, int, StockChain]:
    p = participants(4, FactoryParams(clients_per_leaf=2))
    f = p.factory
    leaf = f.topology.leaf_of_client[BUYER]
    leaf_tx = f.transactions(OUTPOINT, dw.initial_states(f.topology), [leaf])[leaf]
    return p, f, leaf, StockChain.of_leaf(f, leaf, leaf_tx.txid)


def _new_channel(f: Factory, client: int, label: str = "sale") -> bytes:
    """A fresh channel funding script for `client` (what fundchannel_start returns)."""
    from superscalar_plugin.engine.musig2 import pubkey_from_secret

    other = pubkey_from_secret(seckey(label, f"channel-{client}"))
    return channel_script(f.client_pubkeys[client], other)


def _sale(f: Factory, chain: StockChain, buyer: int = BUYER, sold: int = SOLD) -> Sale:
    assert chain.latest is not None
    return Sale(chain.latest, buyer, sold, _new_channel(f, buyer, str(len(chain.sales))), RATE)


def _sell(p: Participants, chain: StockChain, buyer: int = BUYER, sold: int = SOLD) -> StockChain:
    """One honest sale, checked by a non-buyer co-signer, recorded and signed by everyone."""
    f = p.factory
    sale = _sale(f, chain, buyer, sold)
    sold_stock = check_sale(
        f,
        chain,
        sale,
        build_sale_tx(f, sale).tx,
        build_burn_tx(f, sale.stock).tx,
        OTHER if buyer != OTHER else BUYER,
        POLICY,
    )
    chain = chain.record(sold_stock)
    signed = sign_sale_in_process(f, sold_stock, p.lsp_seckey, p.client_seckeys)
    return chain.with_signatures(
        f, sale.stock.outpoint, burn_sig=signed.burn_sig, sale_sig=signed.sale_sig
    )


def _refused(field: str, f: Factory, chain: StockChain, sale: Sale, **kw: object) -> UnsafeSale:
    """check_sale refuses, naming `field`. kw: sale_tx, burn_tx, me, purchase, policy."""
    sale_tx = kw.get("sale_tx") or build_sale_tx(f, sale).tx
    burn_tx = kw.get("burn_tx") or build_burn_tx(f, sale.stock).tx
    with pytest.raises(UnsafeSale) as e:
        check_sale(
            f,
            chain,
            sale,
            sale_tx,  # type: ignore[arg-type]
            burn_tx,  # type: ignore[arg-type]
            kw.get("me", OTHER),  # type: ignore[arg-type]
            kw.get("policy", POLICY),  # type: ignore[arg-type]
            kw.get("purchase"),  # type: ignore[arg-type]
        )
    assert e.value.field == field, e.value
    return e.value


# --- the honest path ----------------------------------------------------------------------------


def test_an_honest_sale_pays_the_buyer_the_change_and_the_anchor_at_the_fee_rule() -> None:
    p, f, leaf, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    change_script = stock_script(f, leaf)
    assert f.outputs[leaf][chain.origin.vout].script_pubkey == change_script  # the leaf's stock
    assert [o.script_pubkey for o in tx.outputs] == [
        sale.channel_script,
        change_script,
        bytes.fromhex("51024e73"),
    ]
    fee = fee_for(keypath_tx_vsize([o.script_pubkey for o in tx.outputs]), RATE)
    assert tx.outputs[CHANNEL_VOUT].amount == SOLD
    assert tx.outputs[CHANGE_VOUT].amount == f.params.stock_sat - SOLD - fee - 240
    assert [(i.txid, i.vout) for i in tx.inputs] == [chain.origin.outpoint]
    assert tx.locktime == 0 and tx.inputs[0].sequence == SEQUENCE_NO_RELATIVE_LOCK
    # Both co-signers accept it (the buyer with its purchase), and it signs and verifies.
    purchase = Purchase(SOLD, sale.channel_script)
    burn = build_burn_tx(f, sale.stock).tx
    sold = check_sale(f, chain, sale, tx, burn, BUYER, POLICY, purchase)
    assert check_sale(f, chain, sale, tx, burn, OTHER, POLICY) == sold
    assert check_sale(f, chain, sale, tx, burn, None, POLICY) == sold  # the LSP
    signed = sign_sale_in_process(f, sold, p.lsp_seckey, p.client_seckeys)
    agg = stock_signing_keyagg(f, leaf).xonly_pubkey
    assert agg == f.stock_output(0, 2).output_key
    for utx, sig in ((sold.sale_tx, signed.sale_sig), (sold.burn_tx, signed.burn_sig)):
        assert sig is not None and musig2.schnorr_verify(sig, utx.sighash, agg)


def test_the_burn_tx_is_65_bytes_locked_to_T_and_burns_the_whole_stock() -> None:
    _, f, _, chain = _setup()
    burn = build_burn_tx(f, chain.origin)
    assert burn.tx.locktime == f.timeout_height
    assert burn.tx.inputs[0].sequence < 0xFFFFFFFF  # non-final: nLockTime is enforced
    assert burn.tx.outputs == (TxOut(0, BURN_SCRIPT),)
    assert len(burn.tx.serialize(include_witness=False)) == MIN_TX_NONWITNESS_SIZE
    assert burn.spent_amount - sum(o.amount for o in burn.tx.outputs) == f.params.stock_sat


def test_sales_chain_on_the_change_and_each_buyer_exits_through_its_own_chain() -> None:
    p, _, _, chain = _setup()
    chain = _sell(p, chain, BUYER)
    chain = _sell(p, chain, OTHER, 20_000)
    chain = _sell(p, chain, BUYER, 10_000)
    assert [s.sale.stock.outpoint for s in chain.sales[1:]] == [
        (s.sale_tx.txid, CHANGE_VOUT) for s in chain.sales[:-1]
    ]
    exits = sale_chain_path(chain, BUYER)
    assert [e.channel_outpoint for e in exits] == [
        (chain.sales[0].sale_tx.txid, 0),
        (chain.sales[2].sale_tx.txid, 0),
    ]
    assert [len(e.txs) for e in exits] == [1, 3]
    assert [e.channel_sat for e in exits] == [SOLD, 10_000]
    [other] = sale_chain_path(chain, OTHER)
    assert [t.txid for t in other.txs] == [s.sale_tx.txid for s in chain.sales[:2]]
    per_sale = {signed_vsize(t) for t in exits[1].txs}
    assert per_sale == {167}  # P2WSH channel + P2TR change + P2A, key-path signed
    assert exits[1].vsize == 3 * 167


def test_a_sale_leaving_dust_has_no_change_and_max_sold_leaves_exactly_the_fee() -> None:
    p, f, _, chain = _setup()
    assert chain.latest is not None
    script = _new_channel(f, BUYER)
    most = max_sold_sat(f, chain.latest, script, RATE)
    tx = build_sale_tx(f, Sale(chain.latest, BUYER, most, script, RATE)).tx
    assert len(tx.outputs) == 2
    assert f.params.stock_sat - sum(o.amount for o in tx.outputs) == fee_for(
        keypath_tx_vsize([script, bytes.fromhex("51024e73")]), RATE
    )
    near = build_sale_tx(f, Sale(chain.latest, BUYER, most - 300, script, RATE)).tx
    assert len(near.outputs) == 2  # 300 sat of change would be dust: it goes to the fee
    chain = _sell(p, chain, BUYER, most)
    assert chain.latest is None  # exhausted
    gone = StockRef(chain.leaf, chain.sales[0].sale_tx.txid, CHANGE_VOUT, 10_000)
    e = _refused(
        "stock", f, chain, Sale(gone, BUYER, SOLD, script, RATE), sale_tx=chain.sales[0].sale_tx.tx
    )
    assert "exhausted" in str(e)


def test_the_buyers_exit_broadcasts_its_sales_right_after_the_leaf() -> None:
    p, f, _, chain = _setup()
    chain = _sell(p, _sell(p, chain, OTHER), BUYER)
    [mine] = sale_chain_path(chain, BUYER)
    signed = {n: s for n, s in _signed_tree(p).items() if n in f.topology.client_path(BUYER)}
    path = [PathTx.of(signed[n], 0) for n in f.topology.client_path(BUYER)] + mine.path_txs()
    confirmed = {OUTPOINT[0]: 100} | {signed[n].txid: 100 for n in signed}
    view = ChainView(101, confirmed, frozenset(), RATE, {})
    assert exit_step(OUTPOINT[0], path, view) == [
        Broadcast(mine.txs[0].txid, mine.txs[0].raw()),
        Broadcast(mine.txs[1].txid, mine.txs[1].raw()),  # no relative lock: same block
    ]


def _signed_tree(p: Participants) -> dict[int, SignedNodeTx]:
    f = p.factory
    states = (f.params.states_per_layer - 1,) * len(f.topology.nodes)
    return dict(sign_in_process(f, OUTPOINT, states, p.lsp_seckey, p.client_seckeys))


# --- hostile sale txs ---------------------------------------------------------------------------


def _with_input(tx: Tx, *inputs: TxIn) -> Tx:
    return replace(tx, inputs=inputs)


def test_a_sale_spending_a_co_signers_channel_instead_of_the_stock_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    other_channel = TxIn(chain.origin.txid, OTHER, SEQUENCE_NO_RELATIVE_LOCK)  # leaf vout 1
    e = _refused("input", f, chain, sale, sale_tx=_with_input(tx, other_channel))
    assert "touch nothing else" in str(e)


def test_a_sale_spending_the_stock_and_anything_else_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    extra = TxIn(chain.origin.txid, OTHER, SEQUENCE_NO_RELATIVE_LOCK)
    _refused("inputs", f, chain, sale, sale_tx=_with_input(tx, tx.inputs[0], extra))
    _refused("inputs", f, chain, sale, sale_tx=_with_input(tx, extra, tx.inputs[0]))


def _with_output(tx: Tx, vout: int, out: TxOut) -> Tx:
    outs = list(tx.outputs)
    outs[vout] = out
    return replace(tx, outputs=tuple(outs))


def test_a_change_output_with_another_script_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    change = tx.outputs[CHANGE_VOUT]
    # L's key alone, and the leaf's aggregate without L's CSV leaf: both look like the stock.
    lsp_only = b"\x51\x20" + f.lsp_xonly
    keypath_only = f.branch_output(0, 2, with_timeout=False).script_pubkey
    for script in (lsp_only, keypath_only, sale.channel_script):
        bad = _with_output(tx, CHANGE_VOUT, TxOut(change.amount, script))
        _refused("change.script", f, chain, sale, sale_tx=bad)


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_change_amount_off_by_one_sat_is_refused(delta: int) -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    change = tx.outputs[CHANGE_VOUT]
    bad = _with_output(tx, CHANGE_VOUT, TxOut(change.amount + delta, change.script_pubkey))
    _refused("change.amount", f, chain, sale, sale_tx=bad)


def test_a_buyer_channel_other_than_agreed_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    chan = tx.outputs[CHANNEL_VOUT]
    _refused(
        "channel.amount",
        f,
        chain,
        sale,
        sale_tx=_with_output(tx, CHANNEL_VOUT, TxOut(chan.amount - 1, chan.script_pubkey)),
    )
    thief = _new_channel(f, OTHER, "thief")
    _refused(
        "channel.script",
        f,
        chain,
        sale,
        sale_tx=_with_output(tx, CHANNEL_VOUT, TxOut(chan.amount, thief)),
    )
    # The buyer checks the sale's terms against what it agreed to buy.
    _refused("sold_sat", f, chain, sale, me=BUYER, purchase=Purchase(SOLD + 1))
    _refused("channel_script", f, chain, sale, me=BUYER, purchase=Purchase(SOLD, thief))
    _refused("purchase", f, chain, sale, me=BUYER)
    # Nobody signs a new channel that is not a standard P2WSH.
    _refused("channel_script", f, chain, replace(sale, channel_script=b"\x51\x20" + bytes(32)))


def test_an_extra_output_or_a_missing_change_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    change = tx.outputs[CHANGE_VOUT]
    skim = (TxOut(1000, b"\x51\x20" + f.lsp_xonly),)
    _refused("outputs", f, chain, sale, sale_tx=replace(tx, outputs=tx.outputs + skim))
    split = (
        tx.outputs[0],
        TxOut(change.amount - 1000, change.script_pubkey),
        *skim,
        tx.outputs[-1],
    )
    _refused("outputs", f, chain, sale, sale_tx=replace(tx, outputs=split))
    no_change = (tx.outputs[0], tx.outputs[-1])
    _refused("outputs", f, chain, sale, sale_tx=replace(tx, outputs=no_change))
    no_anchor = _with_output(tx, 2, TxOut(240, b"\x51\x20" + f.lsp_xonly))
    _refused("anchor", f, chain, sale, sale_tx=no_anchor)


def test_a_sale_with_a_locktime_a_relative_lock_or_another_version_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    _refused("locktime", f, chain, sale, sale_tx=replace(tx, locktime=f.timeout_height + 1))
    locked = TxIn(tx.inputs[0].txid, tx.inputs[0].vout, 144)
    _refused("sequence", f, chain, sale, sale_tx=_with_input(tx, locked))
    _refused("version", f, chain, sale, sale_tx=replace(tx, version=3))


def test_a_fee_rate_above_the_limit_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = replace(_sale(f, chain), fee_rate_kvb=POLICY.max_fee_rate_kvb + 1)
    e = _refused("fee_rate", f, chain, sale)
    assert "exceeds our limit" in str(e)
    # At the limit it is signed, and a stricter co-signer refuses the same sale.
    at_limit = replace(sale, fee_rate_kvb=POLICY.max_fee_rate_kvb)
    check_sale(
        f,
        chain,
        at_limit,
        build_sale_tx(f, at_limit).tx,
        build_burn_tx(f, at_limit.stock).tx,
        OTHER,
        POLICY,
    )
    _refused("fee_rate", f, chain, at_limit, policy=ClientPolicy(max_fee_rate_kvb=5000))


def test_a_fee_rate_below_the_floor_is_refused_by_the_buyer_and_every_co_signer() -> None:
    """`min-feerate` applies to sales as to the tree: a sale that may not confirm behind its
    stock when fees rise is refused, naming the field; at the floor it is signed."""
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    floor = ClientPolicy(min_fee_rate_kvb=sale.fee_rate_kvb + 1)
    for me, purchase in ((OTHER, None), (BUYER, Purchase(sale.sold_sat))):
        e = _refused("fee_rate", f, chain, sale, policy=floor, me=me, purchase=purchase)
        assert "below our floor" in str(e)
    at_floor = ClientPolicy(min_fee_rate_kvb=sale.fee_rate_kvb)
    check_sale(
        f, chain, sale, build_sale_tx(f, sale).tx, build_burn_tx(f, sale.stock).tx, OTHER, at_floor
    )


# --- each stock output is spent at most once ---------------------------------------------------


def test_a_second_different_sale_of_the_same_stock_output_is_refused() -> None:
    p, f, _, chain = _setup()
    first = _sale(f, chain)
    recorded = chain.record(
        check_sale(
            f,
            chain,
            first,
            build_sale_tx(f, first).tx,
            build_burn_tx(f, first.stock).tx,
            OTHER,
            POLICY,
        )
    )
    # The partial signature is out: the same stock output sold again, to anyone, is refused ...
    for second in (
        replace(first, sold_sat=SOLD + 1),
        replace(first, buyer=OTHER, channel_script=_new_channel(f, OTHER)),
        replace(first, fee_rate_kvb=RATE + 1000),
    ):
        with pytest.raises(StockAlreadySold) as e:
            check_sale(
                f,
                recorded,
                second,
                build_sale_tx(f, second).tx,
                build_burn_tx(f, second.stock).tx,
                OTHER,
                POLICY,
            )
        assert e.value.field == "stock"
        # ... and the chain itself will not take it either.
        with pytest.raises(StockAlreadySold):
            recorded.record(
                SoldStock(second, build_sale_tx(f, second), build_burn_tx(f, second.stock))
            )
    # The same sale again (a retried ceremony) is the same message: accepted, nothing added.
    again = check_sale(
        f,
        recorded,
        first,
        build_sale_tx(f, first).tx,
        build_burn_tx(f, first.stock).tx,
        OTHER,
        POLICY,
    )
    assert recorded.record(again) == recorded
    # Once complete, not even the same sale is signed again.
    done = _sell(p, chain)
    _refused("stock", f, done, first)
    with pytest.raises(StockAlreadySold):
        check_sale(
            f, done, first, build_sale_tx(f, first).tx, build_burn_tx(f, first.stock).tx, 1, POLICY
        )


def test_a_stale_unknown_or_unfinished_stock_is_refused() -> None:
    p, f, _, chain = _setup()
    after_one = _sell(p, chain)
    # A sale of the leaf's own stock output after it was sold: already sold.
    with pytest.raises(StockAlreadySold):
        check_sale(
            f,
            after_one,
            _sale(f, chain),
            build_sale_tx(f, _sale(f, chain)).tx,
            build_burn_tx(f, chain.origin).tx,
            OTHER,
            POLICY,
        )
    latest = after_one.latest
    assert latest is not None
    honest = _sale(f, after_one)
    _refused("stock", f, after_one, replace(honest, stock=replace(latest, vout=5)))
    _refused("stock", f, after_one, replace(honest, stock=replace(latest, amount=50_000)))
    tx = build_sale_tx(f, honest).tx  # another leaf's stock: refused before any tx is built
    _refused("stock.leaf", f, after_one, replace(honest, stock=replace(latest, leaf=2)), sale_tx=tx)
    # The previous sale is recorded but its signatures never came: nothing chains on it.
    sale = _sale(f, chain)
    pending = chain.record(SoldStock(sale, build_sale_tx(f, sale), build_burn_tx(f, sale.stock)))
    e = _refused("stock", f, pending, _sale(f, pending))
    assert "completed first" in str(e)


def test_only_the_stocks_co_signers_sign_and_only_for_its_clients() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    _refused("signer", f, chain, sale, me=OUTSIDER)
    outsider_buyer = replace(sale, buyer=OUTSIDER, channel_script=_new_channel(f, OUTSIDER))
    with pytest.raises(UnsafeSale) as e:
        check_sale(
            f,
            chain,
            outsider_buyer,
            build_sale_tx(f, sale).tx,
            build_burn_tx(f, sale.stock).tx,
            OTHER,
            POLICY,
        )
    assert e.value.field == "buyer"


def test_a_sale_the_stock_cannot_pay_or_of_dust_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    tx = build_sale_tx(f, sale).tx
    _refused("sold_sat", f, chain, replace(sale, sold_sat=f.params.stock_sat), sale_tx=tx)
    _refused("sold_sat", f, chain, replace(sale, sold_sat=329), sale_tx=tx)


# --- hostile burn txs ---------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [-1, 1, None])
def test_a_burn_tx_locked_to_anything_but_T_is_refused(shift: int | None) -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    burn = build_burn_tx(f, sale.stock).tx
    lock = 0 if shift is None else f.timeout_height + shift
    _refused("burn.locktime", f, chain, sale, burn_tx=replace(burn, locktime=lock))


def test_a_burn_tx_paying_anything_but_one_op_return_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    burn = build_burn_tx(f, sale.stock).tx
    to_lsp = TxOut(f.params.stock_sat - 500, b"\x51\x20" + f.lsp_xonly)
    _refused("burn.output", f, chain, sale, burn_tx=replace(burn, outputs=(to_lsp,)))
    with_value = (TxOut(1000, BURN_SCRIPT),)
    _refused("burn.output.amount", f, chain, sale, burn_tx=replace(burn, outputs=with_value))
    two = (TxOut(0, BURN_SCRIPT), to_lsp)
    _refused("burn.outputs", f, chain, sale, burn_tx=replace(burn, outputs=two))
    bare = (TxOut(0, b"\x6a"),)  # 61 bytes without witness: never relayed
    _refused("burn.size", f, chain, sale, burn_tx=replace(burn, outputs=bare))
    other_data = (TxOut(0, b"\x6a\x03abc"),)  # relayable, but not the burn we build
    _refused("burn.tx", f, chain, sale, burn_tx=replace(burn, outputs=other_data))


def test_a_burn_tx_of_another_outpoint_is_refused() -> None:
    _, f, _, chain = _setup()
    sale = _sale(f, chain)
    burn = build_burn_tx(f, sale.stock).tx
    elsewhere = TxIn(chain.origin.txid, OTHER, burn.inputs[0].sequence)
    _refused("burn.input", f, chain, sale, burn_tx=_with_input(burn, elsewhere))
    _refused("burn.inputs", f, chain, sale, burn_tx=_with_input(burn, burn.inputs[0], elsewhere))
    final = TxIn(chain.origin.txid, chain.origin.vout, 0xFFFFFFFF)  # would ignore nLockTime
    _refused("burn.sequence", f, chain, sale, burn_tx=_with_input(burn, final))
    with pytest.raises(UnsafeSale):
        check_burn_tx(f, chain.origin, replace(burn, version=1))


# --- signatures -----------------------------------------------------------------------------------


def test_the_sale_signature_leaves_only_after_the_signed_burn_is_held() -> None:
    p, f, _, chain = _setup()
    sale = _sale(f, chain)
    with pytest.raises(UnsafeSale) as e:
        check_may_sign_sale(chain, sale.stock)
    assert e.value.field == "stock"
    sold = SoldStock(sale, build_sale_tx(f, sale), build_burn_tx(f, sale.stock))
    chain = chain.record(sold)
    with pytest.raises(UnsafeSale) as e:
        check_may_sign_sale(chain, sale.stock)
    assert e.value.field == "burn"
    signed = sign_sale_in_process(f, sold, p.lsp_seckey, p.client_seckeys)
    with_burn = chain.with_signatures(f, sale.stock.outpoint, burn_sig=signed.burn_sig)
    assert check_may_sign_sale(with_burn, sale.stock).burn_sig == signed.burn_sig
    assert not with_burn.sales[0].complete and sale_chain_path(with_burn, BUYER) == []


def test_an_invalid_final_signature_is_not_stored() -> None:
    p, f, _, chain = _setup()
    sale = _sale(f, chain)
    sold = SoldStock(sale, build_sale_tx(f, sale), build_burn_tx(f, sale.stock))
    chain = chain.record(sold)
    signed = sign_sale_in_process(f, sold, p.lsp_seckey, p.client_seckeys)
    assert signed.sale_sig is not None and signed.burn_sig is not None
    for kw in ({"sale_sig": signed.burn_sig}, {"burn_sig": signed.sale_sig}):
        with pytest.raises(CeremonyError):
            chain.with_signatures(f, sale.stock.outpoint, **kw)
    tampered = bytes([signed.sale_sig[0] ^ 1]) + signed.sale_sig[1:]
    with pytest.raises(CeremonyError):
        chain.with_signatures(f, sale.stock.outpoint, sale_sig=tampered)
    assert chain.sales[0].sale_sig is None


def test_a_retried_sale_signed_again_changes_nothing_we_hold() -> None:
    """A hostile LSP retrying a recorded sale with fresh nonces gets other valid signatures of
    the same txs: the first ones are kept and the chain is the same value (nothing to write)."""
    p, f, _, chain = _setup()
    chain = _sell(p, chain)
    sold = chain.sales[0]
    again = sign_sale_in_process(
        f, replace(sold, burn_sig=None, sale_sig=None), p.lsp_seckey, p.client_seckeys
    )
    assert again.sale_sig != sold.sale_sig  # fresh nonces: another valid signature
    same = chain.with_signatures(
        f, sold.sale.stock.outpoint, burn_sig=again.burn_sig, sale_sig=again.sale_sig
    )
    assert same is chain


def test_a_sale_whose_signature_never_left_is_dropped_and_the_stock_sold_again() -> None:
    """An incomplete sale is recoverable: a co-signer whose sale partial signature never left
    drops it (nobody can complete it without that signature), and the same stock output can be
    sold to another buyer. A complete sale, or one not last, is never dropped."""
    p, f, _, chain = _setup()
    sale = _sale(f, chain)
    checked = check_sale(
        f, chain, sale, build_sale_tx(f, sale).tx, build_burn_tx(f, sale.stock).tx, OTHER, POLICY
    )
    burn = sign_sale_in_process(f, checked, p.lsp_seckey, p.client_seckeys).burn_sig
    stalled = chain.record(checked).with_signatures(f, sale.stock.outpoint, burn_sig=burn)
    other = replace(_sale(f, chain, buyer=OTHER), stock=sale.stock)
    with pytest.raises(StockAlreadySold):  # recorded: the stock is spent for it
        check_sale(
            f,
            stalled,
            other,
            build_sale_tx(f, other).tx,
            build_burn_tx(f, other.stock).tx,
            BUYER,
            POLICY,
        )
    dropped = stalled.drop_unsent(sale.stock.outpoint)
    assert dropped == chain
    check_sale(
        f,
        dropped,
        other,
        build_sale_tx(f, other).tx,
        build_burn_tx(f, other.stock).tx,
        BUYER,
        POLICY,
        Purchase(other.sold_sat),
    )
    done = _sell(p, chain)
    with pytest.raises(InvalidParameter, match="complete"):
        done.drop_unsent(sale.stock.outpoint)
    with pytest.raises(InvalidParameter, match="last sale"):
        _sell(p, done).drop_unsent(sale.stock.outpoint)
