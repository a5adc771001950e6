"""The stored form of liquidity sales: what a co-signer (and the LSP) keeps of a leaf's stock chain,
the LSP's paid orders and its on-chain fallback channels. JSON-able values, read back strictly.

- `SaleEntry`: one sale of a leaf's stock (terms, the unsigned sale and burn txs, the final
  signatures once known). A co-signer writes it before its sale partial signature leaves, with the
  signed burn (`StockChain` says which stock is next); `chain_of` rebuilds the `StockChain`.
- `Order` (LSP): a quoted price and its invoice, whose HTLC the LSP holds until the liquidity is
  delivered (then settles it) or the sale failed (then fails it).
- `JitChannel` (LSP): an ordinary channel opened from the wallet instead of a sale.
Every record written before sales existed reads as having none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .errors import InvalidRecord, StoreError, SuperscalarError
from .jsonfields import get, hexfield
from .sale import Sale, SoldStock, StockChain, StockRef, stock_script
from .tree import FactoryKeys, NodeKind, Topology, UnsignedNodeTx
from .tx import Tx


class Payment(StrEnum):
    """What the buyer paid for its own purchase, as its own node shows it: it may burn the stock
    of a purchase it paid for and does not hold signed, never of one it paid nothing for."""

    GIFT = "gift"  # price 0: nothing to pay
    PENDING = "pending"  # our payment is in flight (or its end was not seen: ask our node)
    PAID = "paid"  # settled: the LSP has our money
    FAILED = "failed"  # failed back, every part: we paid nothing


@dataclass(frozen=True)
class SaleEntry:
    session: str  # the sale's session id (SALE_STEP messages name it)
    leaf: int
    stock_txid: str
    stock_vout: int
    stock_amount: int
    buyer: int
    sold_sat: int
    channel_script: str
    fee_rate_kvb: int
    sale_tx: str  # unsigned, without witness
    burn_tx: str
    burn_sig: str | None = None
    sale_sig: str | None = None
    channel_id: str | None = None  # the sale's channel (LSP: from fundchannel_complete)
    acked: tuple[int, ...] = ()  # LSP: co-signers that stored the signed sale
    price_sat: int = 0  # LSP: what the buyer paid for it
    # Buyer, its own purchase: how it paid (None: another client's sale, or a record written
    # before payments were recorded) and the payment's hash.
    payment: Payment | None = None
    payment_hash: str | None = None

    @property
    def complete(self) -> bool:
        return self.burn_sig is not None and self.sale_sig is not None

    @property
    def sale_txid(self) -> str:
        return Tx.deserialize(bytes.fromhex(self.sale_tx)).txid


class OrderState(StrEnum):
    QUOTED = "quoted"  # invoice issued; its HTLC is held when it comes
    PAID = "paid"  # the HTLC is held; the liquidity is being made
    DELIVERED = "delivered"  # the HTLC was (or is, on replay) let through: settled
    FAILED = "failed"  # the HTLC was (or is, on replay) failed: nothing delivered, nothing paid


@dataclass(frozen=True)
class Order:
    payment_hash: str
    label: str
    client: int
    sold_sat: int
    fee_sat: int
    state: OrderState
    created_height: int
    preimage: str  # ours (the invoice was made with it): the held HTLC is resolved with it
    expires_at: int  # unix time the invoice expires: a later HTLC is failed, never held
    result: str | None = None  # "sale <txid>" or "onchain <channel id>"
    error: str | None = None
    # The invoice's payment_secret and min_final_cltv_expiry: a held HTLC must carry the one and
    # leave the other (None in orders written before they were checked: their HTLCs are failed).
    payment_secret: str | None = None
    min_final_cltv: int = 0


@dataclass(frozen=True)
class JitChannel:
    client: int
    channel_id: str
    sat: int
    reason: str


# --- engine values <-> entries -----------------------------------------------------------------


def sold_of(keys: FactoryKeys, e: SaleEntry) -> SoldStock:
    stock = StockRef(e.leaf, e.stock_txid, e.stock_vout, e.stock_amount)
    sale = Sale(stock, e.buyer, e.sold_sat, bytes.fromhex(e.channel_script), e.fee_rate_kvb)
    script = stock_script(keys, e.leaf)

    def utx(raw: str) -> UnsignedNodeTx:
        return UnsignedNodeTx(e.leaf, Tx.deserialize(bytes.fromhex(raw)), e.stock_amount, script)

    return SoldStock(
        sale,
        utx(e.sale_tx),
        utx(e.burn_tx),
        None if e.sale_sig is None else bytes.fromhex(e.sale_sig),
        None if e.burn_sig is None else bytes.fromhex(e.burn_sig),
    )


def entry_of(sold: SoldStock, session: bytes | str, **extra: Any) -> SaleEntry:
    s = sold.sale
    return SaleEntry(
        session=session if isinstance(session, str) else session.hex(),
        leaf=s.stock.leaf,
        stock_txid=s.stock.txid,
        stock_vout=s.stock.vout,
        stock_amount=s.stock.amount,
        buyer=s.buyer,
        sold_sat=s.sold_sat,
        channel_script=s.channel_script.hex(),
        fee_rate_kvb=s.fee_rate_kvb,
        sale_tx=sold.sale_tx.tx.serialize(include_witness=False).hex(),
        burn_tx=sold.burn_tx.tx.serialize(include_witness=False).hex(),
        burn_sig=None if sold.burn_sig is None else sold.burn_sig.hex(),
        sale_sig=None if sold.sale_sig is None else sold.sale_sig.hex(),
        **extra,
    )


def chain_of(
    keys: FactoryKeys, leaf: int, leaf_raw: str, entries: tuple[SaleEntry, ...]
) -> StockChain:
    """The leaf's stock chain as stored: the stock output of the leaf tx (`leaf_raw`, hex; its
    amount is the state's, which a DW update may have changed), then its recorded sales in
    order."""
    tx = Tx.deserialize(bytes.fromhex(leaf_raw))
    chain = StockChain.of_leaf(keys, leaf, tx.txid, tx.outputs[-2].amount)
    return replace(chain, sales=tuple(sold_of(keys, e) for e in entries if e.leaf == leaf))


def merge_chain(
    entries: tuple[SaleEntry, ...], chain: StockChain, session: bytes | str, **extra: Any
) -> tuple[SaleEntry, ...]:
    """`entries` with `chain`'s sales written in: each sale's entry updated (signatures), the new
    one appended with `session` and `extra`; other leaves' entries kept."""
    by_txid = {e.sale_txid: e for e in entries}
    out = [e for e in entries if e.leaf != chain.leaf]
    for sold in chain.sales:
        old = by_txid.get(sold.sale_tx.txid)
        if old is None:
            out.append(entry_of(sold, session, **extra))
        else:
            out.append(
                replace(
                    old,
                    burn_sig=None if sold.burn_sig is None else sold.burn_sig.hex(),
                    sale_sig=None if sold.sale_sig is None else sold.sale_sig.hex(),
                )
            )
    return tuple(out)


def without_sale(entries: tuple[SaleEntry, ...], sale_txid: str) -> tuple[SaleEntry, ...]:
    """`entries` less the sale `sale_txid` (one `StockChain.drop_unsent` allowed to drop)."""
    return tuple(e for e in entries if e.sale_txid != sale_txid)


# --- JSON -----------------------------------------------------------------------------------


def _ints(d: dict[str, Any], key: str) -> tuple[int, ...]:
    values = d.get(key) or []
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise StoreError(f"record field {key!r} must be a list of integers")
    return tuple(values)


def _objects(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    values = data.get(key) or []  # absent in records written before sales
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise StoreError(f"record field {key!r} must be a list of objects")
    return values


def sales_from(data: dict[str, Any]) -> tuple[SaleEntry, ...]:
    return tuple(
        SaleEntry(
            session=hexfield(e, "session", 32),
            leaf=get(e, "leaf", int),
            stock_txid=hexfield(e, "stock_txid", 32),
            stock_vout=get(e, "stock_vout", int),
            stock_amount=get(e, "stock_amount", int),
            buyer=get(e, "buyer", int),
            sold_sat=get(e, "sold_sat", int),
            channel_script=hexfield(e, "channel_script"),
            fee_rate_kvb=get(e, "fee_rate_kvb", int),
            sale_tx=hexfield(e, "sale_tx"),
            burn_tx=hexfield(e, "burn_tx"),
            burn_sig=hexfield(e, "burn_sig", 64, optional=True),
            sale_sig=hexfield(e, "sale_sig", 64, optional=True),
            channel_id=hexfield(e, "channel_id", 32, optional=True),
            acked=_ints(e, "acked"),
            price_sat=get(e, "price_sat", int, optional=True) or 0,
            payment=_payment(e),
            payment_hash=hexfield(e, "payment_hash", 32, optional=True),
        )
        for e in _objects(data, "sales")
    )


def _payment(e: dict[str, Any]) -> Payment | None:
    value = get(e, "payment", str, optional=True)
    if value is None:
        return None
    try:
        return Payment(value)
    except ValueError as err:
        raise StoreError(
            f"record field 'payment': {value!r} is not one of {list(Payment)}"
        ) from err


def orders_from(data: dict[str, Any]) -> tuple[Order, ...]:
    out = []
    for e in _objects(data, "orders"):
        try:
            state = OrderState(get(e, "state", str))
        except ValueError as err:
            raise StoreError(f"order state: {err}") from err
        out.append(
            Order(
                payment_hash=hexfield(e, "payment_hash", 32),
                label=get(e, "label", str),
                client=get(e, "client", int),
                sold_sat=get(e, "sold_sat", int),
                fee_sat=get(e, "fee_sat", int),
                state=state,
                created_height=get(e, "created_height", int),
                preimage=hexfield(e, "preimage", 32),
                expires_at=get(e, "expires_at", int),
                result=get(e, "result", str, optional=True),
                error=get(e, "error", str, optional=True),
                payment_secret=hexfield(e, "payment_secret", 32, optional=True),
                min_final_cltv=get(e, "min_final_cltv", int, optional=True) or 0,
            )
        )
    return tuple(out)


def jit_from(data: dict[str, Any]) -> tuple[JitChannel, ...]:
    return tuple(
        JitChannel(
            client=get(e, "client", int),
            channel_id=hexfield(e, "channel_id", 32),
            sat=get(e, "sat", int),
            reason=get(e, "reason", str),
        )
        for e in _objects(data, "jit")
    )


def strings_from(data: dict[str, Any], key: str, length: int) -> tuple[str, ...]:
    values = data.get(key) or []
    if not isinstance(values, list):
        raise StoreError(f"record field {key!r} must be a list")
    return tuple(hexfield({key: v}, key, length) for v in values)


# --- content ---------------------------------------------------------------------------------


def _expect(ok: bool, field_name: str, detail: str) -> None:
    if not ok:
        raise InvalidRecord(field_name, detail)


def validate_sales(entries: tuple[SaleEntry, ...], topo: Topology, n_clients: int) -> None:
    """Each entry names a leaf and one of its clients, holds two one-input txs of its stock, and
    the sales of one leaf chain: each spends the change of the one before."""
    last: dict[int, tuple[str, int] | None] = {}
    for i, e in enumerate(entries):
        where = f"sales[{i}]"
        ok_leaf = 0 <= e.leaf < len(topo.nodes) and topo.nodes[e.leaf].kind is NodeKind.LEAF
        _expect(ok_leaf, f"{where}.leaf", f"{e.leaf} is not a leaf")
        node = topo.nodes[e.leaf]
        _expect(node.lo <= e.buyer < node.hi, f"{where}.buyer", f"not a client of {e.leaf}")
        _expect(e.buyer < n_clients, f"{where}.buyer", "out of range")
        _expect(0 < e.sold_sat < e.stock_amount, f"{where}.sold_sat", "not below the stock")
        _expect(e.stock_vout >= 0, f"{where}.stock_vout", "negative")
        _expect(all(0 <= a < n_clients for a in e.acked), f"{where}.acked", "out of range")
        try:
            txs = [Tx.deserialize(bytes.fromhex(raw)) for raw in (e.sale_tx, e.burn_tx)]
        except SuperscalarError as err:
            raise InvalidRecord(f"{where}.sale_tx", f"not a transaction: {err}") from err
        for tx in txs:
            spent = (tx.inputs[0].txid, tx.inputs[0].vout) if len(tx.inputs) == 1 else None
            _expect(spent == (e.stock_txid, e.stock_vout), where, "a tx that is not its stock's")
        before = last.get(e.leaf)
        if e.leaf in last:
            _expect(before == (e.stock_txid, e.stock_vout), where, "does not spend the change")
        last[e.leaf] = (txs[0].txid, 1) if len(txs[0].outputs) == 3 else None
