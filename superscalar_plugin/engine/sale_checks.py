"""What a co-signer checks before it signs a liquidity sale and its burn tx.

A leaf's clients and the LSP co-sign every spend of the leaf's stock. Before giving any partial
signature a co-signer checks, each refusal an `UnsafeSale` naming the field:

- the sale itself (`check_sale_terms`): it is one of the stock's co-signers; the sale spends the
  stock output it knows as the latest (`StockChain.latest`), created by a sale it holds fully
  signed, and never sold before (`StockAlreadySold`); the buyer is one of the leaf's clients;
  the fee rate is within its policy (`max-feerate`, and the `min-feerate` floor); the buyer checks the amount and channel it agreed to
  (`Purchase`), the others that the new channel is a standard P2WSH;
- the sale tx the LSP sent (`check_sale_tx`), against the one it builds itself: version,
  nLockTime 0, exactly one input, the stock output (so nothing else, no co-signer's channel, is
  touched), no relative lock, the buyer channel's amount and script, the change's exact stock
  script and amount, the anchor, and no other output;
- the burn tx (`check_burn_tx`): nLockTime = T exactly, the same stock output as its only input,
  one 0-sat OP_RETURN output and nothing else, at least 65 bytes without witness.

`check_sale` runs all three and returns the `SoldStock` to record in the `StockChain` before any
partial signature leaves; `check_may_sign_sale` says when the sale's own partial signature may go
(once the signed burn is held).
"""

from __future__ import annotations

from dataclasses import dataclass

from .client_checks import ClientPolicy
from .errors import InvalidParameter, StockAlreadySold, UnsafeSale
from .sale import (
    MIN_TX_NONWITNESS_SIZE,
    OP_RETURN,
    SALE_SEQUENCE,
    Sale,
    SoldStock,
    StockChain,
    StockRef,
    build_burn_tx,
    build_sale_tx,
    burn_sequence,
    stock_cosigners,
    stock_script,
)
from .taproot import DUST_P2WSH
from .tree import TX_VERSION, FactoryKeys, UnsignedNodeTx
from .tx import Tx


@dataclass(frozen=True)
class Purchase:
    """What the buyer agreed to buy: an amount of inbound liquidity in a new channel whose script
    it checks exactly when it knows it (None: any standard P2WSH)."""

    sold_sat: int
    channel_script: bytes | None = None


def _is_standard_p2wsh(script: bytes) -> bool:
    return len(script) == 34 and script[:2] == b"\x00\x20"


def _expect(field: str, got: object, expected: object) -> None:
    if got != expected:
        shown = [v.hex() if isinstance(v, bytes) else v for v in (got, expected)]
        raise UnsafeSale(field, f"is {shown[0]}, expected {shown[1]}")


def check_stock(chain: StockChain, sale: Sale) -> None:
    """The sale spends the latest stock output we know, which no other sale of ours spent, and
    which the previous sale (if any) created with both its signatures in our hands. The same
    sale again is allowed while it is not complete (a retried ceremony)."""
    stock = sale.stock
    if stock.leaf != chain.leaf:
        raise UnsafeSale("stock.leaf", f"leaf {stock.leaf}, our stock is leaf {chain.leaf}'s")
    before = chain.sold(stock.outpoint)
    if before is not None:
        if before.sale == sale and not before.complete:
            return  # a retried ceremony: the same sale, the same message to sign again
        raise StockAlreadySold(
            "stock",
            f"{stock} was already sold by {before.sale_tx.txid}: a stock output is spent by at"
            " most one sale",
        )
    latest = chain.latest
    if latest is None:
        raise UnsafeSale("stock", "the stock is exhausted: the last sale left no change")
    if stock != latest:
        raise UnsafeSale("stock", f"spends {stock}, the latest stock we know is {latest}")
    if chain.sales and not chain.sales[-1].complete:
        raise UnsafeSale(
            "stock",
            f"{stock} comes from sale {chain.sales[-1].sale_tx.txid}, whose signatures we do not"
            " hold: its sale and burn must be completed first",
        )


def check_sale_terms(
    keys: FactoryKeys,
    chain: StockChain,
    sale: Sale,
    me: int | None,
    policy: ClientPolicy,
    purchase: Purchase | None = None,
) -> None:
    """The sale as proposed, before any tx: `me` is our client index (None: the LSP)."""
    leaf = chain.leaf
    cosigners = stock_cosigners(keys, leaf)
    if me is not None and me not in cosigners:
        raise UnsafeSale("signer", f"client {me} does not co-sign leaf {leaf}'s stock")
    check_stock(chain, sale)
    if sale.buyer not in cosigners:
        raise UnsafeSale("buyer", f"client {sale.buyer} is not a client of leaf {leaf}")
    if sale.fee_rate_kvb > policy.max_fee_rate_kvb:
        raise UnsafeSale(
            "fee_rate",
            f"{sale.fee_rate_kvb} sat/kvB exceeds our limit of {policy.max_fee_rate_kvb}",
        )
    if sale.fee_rate_kvb < policy.min_fee_rate_kvb:
        raise UnsafeSale(
            "fee_rate",
            f"{sale.fee_rate_kvb} sat/kvB is below our floor of {policy.min_fee_rate_kvb} sat/kvB:"
            " the sale may not confirm behind its stock when fees rise",
        )
    if me is not None and me == sale.buyer:
        if purchase is None:
            raise UnsafeSale("purchase", "we are the buyer but agreed to no purchase")
        _expect("sold_sat", sale.sold_sat, purchase.sold_sat)
        if purchase.channel_script is not None:
            _expect("channel_script", sale.channel_script, purchase.channel_script)
    if not _is_standard_p2wsh(sale.channel_script):
        raise UnsafeSale("channel_script", "the new channel is not a standard P2WSH output")
    if sale.sold_sat < DUST_P2WSH:
        raise UnsafeSale("sold_sat", f"{sale.sold_sat} sat is below dust ({DUST_P2WSH})")


def _expected(keys: FactoryKeys, build: str, sale_or_stock: Sale | StockRef) -> UnsignedNodeTx:
    try:
        if isinstance(sale_or_stock, Sale):
            return build_sale_tx(keys, sale_or_stock)
        return build_burn_tx(keys, sale_or_stock)
    except InvalidParameter as e:  # InvalidAmount included: the stock cannot pay this sale
        raise UnsafeSale(build, str(e)) from e


def _check_single_input(prefix: str, tx: Tx, stock: StockRef, sequence: int) -> None:
    if len(tx.inputs) != 1:
        raise UnsafeSale(
            f"{prefix}inputs",
            f"{len(tx.inputs)} inputs: a spend of the stock spends the stock output alone",
        )
    txin = tx.inputs[0]
    if (txin.txid, txin.vout) != stock.outpoint:
        raise UnsafeSale(
            f"{prefix}input",
            f"spends {txin.txid}:{txin.vout}, not the stock output {stock}: it must touch nothing"
            " else",
        )
    _expect(f"{prefix}sequence", txin.sequence, sequence)


def check_sale_tx(keys: FactoryKeys, sale: Sale, tx: Tx) -> UnsignedNodeTx:
    """The LSP's sale tx against the one we build from `sale`; returns ours (what we sign)."""
    ours = _expected(keys, "sold_sat", sale)
    _expect("version", tx.version, TX_VERSION)
    _expect("locktime", tx.locktime, 0)
    _check_single_input("", tx, sale.stock, SALE_SEQUENCE)
    want = ours.tx.outputs
    if len(tx.outputs) != len(want):
        raise UnsafeSale(
            "outputs",
            f"{len(tx.outputs)} outputs, expected {len(want)}: the buyer's channel,"
            f" {'the change, ' if len(want) == 3 else ''}the anchor, nothing else",
        )
    _expect("channel.script", tx.outputs[0].script_pubkey, sale.channel_script)
    _expect("channel.amount", tx.outputs[0].amount, sale.sold_sat)
    if len(want) == 3:
        _expect("change.script", tx.outputs[1].script_pubkey, stock_script(keys, sale.stock.leaf))
        _expect("change.amount", tx.outputs[1].amount, want[1].amount)
    _expect("anchor", tx.outputs[-1], want[-1])
    _expect("tx", tx.serialize(include_witness=False), ours.tx.serialize(include_witness=False))
    return ours


def check_burn_tx(keys: FactoryKeys, stock: StockRef, tx: Tx) -> UnsignedNodeTx:
    """The LSP's burn tx of `stock` against ours; returns ours (what we sign)."""
    ours = _expected(keys, "burn", stock)
    _expect("burn.version", tx.version, TX_VERSION)
    _expect("burn.locktime", tx.locktime, keys.timeout_height)
    _check_single_input("burn.", tx, stock, burn_sequence(keys))
    if len(tx.outputs) != 1:
        raise UnsafeSale("burn.outputs", f"{len(tx.outputs)} outputs, expected one OP_RETURN")
    out = tx.outputs[0]
    if not out.script_pubkey or out.script_pubkey[0] != OP_RETURN:
        raise UnsafeSale("burn.output", f"pays {out.script_pubkey.hex()}, not an OP_RETURN")
    _expect("burn.output.amount", out.amount, 0)
    size = len(tx.serialize(include_witness=False))
    if size < MIN_TX_NONWITNESS_SIZE:
        raise UnsafeSale(
            "burn.size", f"{size} bytes without witness: not relayed under {MIN_TX_NONWITNESS_SIZE}"
        )
    _expect(
        "burn.tx", tx.serialize(include_witness=False), ours.tx.serialize(include_witness=False)
    )
    return ours


def check_sale(
    keys: FactoryKeys,
    chain: StockChain,
    sale: Sale,
    sale_tx: Tx,
    burn_tx: Tx,
    me: int | None,
    policy: ClientPolicy,
    purchase: Purchase | None = None,
) -> SoldStock:
    """Everything a co-signer checks before signing a sale and its burn; the `SoldStock` to record
    (`StockChain.record`) before any partial signature leaves."""
    check_sale_terms(keys, chain, sale, me, policy, purchase)
    ours_sale = check_sale_tx(keys, sale, sale_tx)
    ours_burn = check_burn_tx(keys, sale.stock, burn_tx)
    return SoldStock(sale, ours_sale, ours_burn)


def check_may_sign_sale(chain: StockChain, stock: StockRef) -> SoldStock:
    """Our sale partial signature may leave only once the sale is recorded and we hold its signed
    burn tx (else a stalled sale could not be answered by burning the stock at T)."""
    sold = chain.sold(stock.outpoint)
    if sold is None:
        raise UnsafeSale("stock", f"no sale of {stock} was recorded before signing")
    if sold.burn_sig is None:
        raise UnsafeSale("burn", "we do not hold the signed burn tx yet: burn first, then sale")
    return sold
