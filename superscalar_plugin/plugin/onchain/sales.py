"""What liquidity sales add to the on-chain duties (`onchain`, chain thread): pure functions of a
record and the chain's view (and, for a purchase whose payment's end we did not see, of what our
node says of it), no RPC of their own.

The stock's path for L alone needs T and `stock_delay` blocks after the stock output confirmed
(engine `sale`): before T a stock output leaves only by a sale or a burn every co-signer signed.

- Exit paths: a buyer's unilateral exit publishes its root-to-leaf path and then, for each of its
  sale channels, the sales from the leaf's stock down to the one that made it (engine
  `sale_chain_path`): sale txs carry no relative lock, so each goes out right behind its parent.
  The exit of a client starts `ewt + one block per sale + exit-margin` blocks before T, so its
  sales confirm before L's path opens (from T+1 at the earliest); the driver warns when a sale of
  ours is still not on chain half the stock delay before L's path opens (`stale_sales`).
- Sales on chain (`stock_duties`, every co-signer, the buyer too): a sale we hold complete whose
  stock output is on chain is published as it is, at any time: it is harmless to us and gives
  its buyer its channel; a leaf-mate's exit thus confirms our own sales without an exit of ours.
- Burns (the buyer only): a sale of OUR purchase that we hold NOT complete (the LSP withheld its
  last signature), that never confirmed while the stock output it spends is on chain, has its
  burn published when L's own path on the stock opens at the next block: the whole stock goes to
  miners, so an LSP that stalled our sale to take its stock back gains nothing. The solvency guard
  decides (`check_burn_publish`): never the burn of a complete sale, never of a purchase we paid
  nothing for (a gift, or our payment failed back: a co-client's stall), never another client's sale
  (a buyer withholding its own signature must not get honest co-signers to burn the LSP's
  stock), never before L's path opens (a complete sale held by an absent buyer can still go in).
- Stock sweeps (LSP): after T, the latest stock output of each leaf's chain (unsold, spent by no
  sale we signed) is taken through L's stock leaf once it is valid (`stock_sweep_valid_from`).
"""

from __future__ import annotations

from collections.abc import Callable

from ...engine import store
from ...engine.exit import PathTx
from ...engine.sale import StockRef, sale_chain_path, stock_sweep_valid_from
from ...engine.sale_store import Payment, SaleEntry, chain_of, sold_of
from ...engine.solvency import SolvencyRefused, StockSpend, check_burn_publish
from ...engine.tree import FactoryKeys
from ..lightningd.records import factory_of, txid_of


def _client_keys(record: store.ClientRecord) -> FactoryKeys | None:
    header = record.signed_header()
    return None if header is None else header.factory_keys()


def client_sale_paths(record: store.ClientRecord) -> list[tuple[list[PathTx], str]]:
    """For each of our sale channels whose sale we hold fully signed: the sale txs from our leaf
    down to it, and the channel's funding txid (the last sale's)."""
    keys = _client_keys(record)
    if keys is None or not record.path or not record.sales:
        return []
    leaf = record.path[-1]
    chain = chain_of(keys, leaf.node, leaf.raw, record.sales)
    return [(e.path_txs(), e.txs[-1].txid) for e in sale_chain_path(chain, record.client_index)]


def lsp_sale_paths(record: store.LspRecord, client: int) -> list[tuple[list[PathTx], str]]:
    """The same for one client, from the LSP's own record of its leaf's stock chain."""
    if not any(e.buyer == client for e in record.sales):
        return []
    keys = factory_of(record)
    leaf = keys.topology.leaf_of_client[client]
    leaf_raw = next(e.raw for e in record.tree if e.node == leaf)
    chain = chain_of(keys, leaf, leaf_raw, record.sales)
    return [(e.path_txs(), e.txs[-1].txid) for e in sale_chain_path(chain, client)]


def sale_txids(record: store.Record) -> set[str]:
    """Every sale and burn tx we hold: watched on chain."""
    out = set()
    for e in record.sales:
        out.add(e.sale_txid)
        out.add(txid_of(e.burn_tx))
    return out


PaymentOf = Callable[[str], Payment | None]  # our node's view of a payment, by its hash


def stock_duties(
    record: store.ClientRecord, height: int, payment_of: PaymentOf | None = None
) -> list[tuple[str, str, bytes]]:
    """(what, txid, raw) to publish now for the sales we co-signed: the sale itself when we hold
    it complete and its stock output is on chain, else its burn when the solvency guard allows.
    `payment_of`: asked about a purchase of ours whose payment's end we did not record."""
    if not record.sales:
        return []
    keys = _client_keys(record)
    if keys is None:
        return []
    confirmed = dict(record.confirmed)
    out: list[tuple[str, str, bytes]] = []
    for e in record.sales:
        sold = sold_of(keys, e)
        if e.complete and e.stock_txid in confirmed and e.sale_txid not in confirmed:
            out.append(("sale", e.sale_txid, sold.signed_sale().raw()))
            continue
        spend = StockSpend(
            sale_txid=e.sale_txid,
            we_are_buyer=e.buyer == record.client_index,
            sale_complete=e.complete,
            burn_signed=e.burn_sig is not None,
            stock_on_chain=e.stock_txid in confirmed,
            sale_on_chain=e.sale_txid in confirmed,
            # asked (an RPC, for a payment in flight) only where a burn could follow
            paid=e.complete
            or e.buyer != record.client_index
            or e.stock_txid not in confirmed
            or _paid(e, payment_of),
        )
        stock_at = confirmed.get(e.stock_txid)
        opens = stock_sweep_valid_from(keys, stock_at) if stock_at is not None else height + 2
        try:
            check_burn_publish(spend, height, opens)
        except SolvencyRefused:
            continue
        burn = sold.signed_burn()
        if burn.txid not in confirmed:
            out.append(("burn", burn.txid, burn.raw()))
    return out


def withheld_purchases(record: store.ClientRecord, payment_of: PaymentOf | None) -> list[str]:
    """Our purchases we paid for (or may have) whose last signature we never got, their burn
    signed: the sales' txids (`solvency.check_no_withheld_purchase`)."""
    return [
        e.sale_txid
        for e in record.sales
        if e.buyer == record.client_index
        and not e.complete
        and e.burn_sig is not None
        and _paid(e, payment_of)
    ]


def _paid(e: SaleEntry, payment_of: PaymentOf | None) -> bool:
    """We paid for this purchase, or may have: only a gift and a payment every part of which
    failed back cost us nothing. A payment still in flight, or one our node no longer knows
    (an operator's autoclean), counts as paid: a stalled sale we paid for must stay punishable."""
    payment = e.payment
    if payment is Payment.PENDING and e.payment_hash and payment_of is not None:
        payment = payment_of(e.payment_hash) or payment
    return payment not in (Payment.GIFT, Payment.FAILED)


def unsold_stocks(record: store.LspRecord, height: int) -> list[StockRef]:
    """After T: per leaf, the latest stock output of its chain if it is on chain and L's stock leaf
    is valid in the next block (T+1 and `stock_delay` blocks after the tx that made it confirmed)."""
    if height < record.timeout_height or not record.tree:
        return []
    keys = factory_of(record)
    confirmed = dict(record.confirmed)
    out = []
    for leaf in keys.topology.leaves:
        entry = next((e for e in record.tree if e.node == leaf), None)
        if entry is None:
            continue
        latest = chain_of(keys, leaf, entry.raw, record.sales).latest
        if latest is None or latest.txid not in confirmed:
            continue
        if height + 1 >= stock_sweep_valid_from(keys, confirmed[latest.txid]):
            out.append(latest)
    return out


def stale_sales(record: store.Record, height: int) -> list[SaleEntry]:
    """Sales of ours not on chain while their stock output is, half the stock's delay (or less)
    before L's path on that stock opens (the exit driver's warning)."""
    keys = factory_of(record) if isinstance(record, store.LspRecord) else _client_keys(record)
    if keys is None:
        return []
    confirmed = dict(record.confirmed)
    half = record.params.stock_delay // 2
    return [
        e
        for e in record.sales
        if e.stock_txid in confirmed
        and e.sale_txid not in confirmed
        and height + half >= stock_sweep_valid_from(keys, confirmed[e.stock_txid])
    ]
