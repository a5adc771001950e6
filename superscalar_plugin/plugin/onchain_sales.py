"""What liquidity sales add to the on-chain duties (`onchain`, chain thread): pure functions of a
record and the chain's view, no RPC.

- Exit paths: a buyer's unilateral exit publishes its root-to-leaf path and then, for each of its
  sale channels, the sales from the leaf's stock down to the one that made it (engine
  `sale_chain_path`): sale txs carry no relative lock, so each goes out right behind its parent,
  in the same block if the fee allows. They must: the stock's CSV leaf lets L alone take a stock
  output `stock_delay` blocks after it confirmed, so each sale must confirm within `stock_delay`
  blocks of the tx before it. A buyer whose leaf another client put on chain starts its exit at
  once for that reason (`sale_exit_reason`), and the driver warns when half that delay is gone.
- Burns (co-signer): from the factory's timeout T on (final in block T+1), a sale we signed that
  never confirmed while the stock output it spends is on chain has its burn published: the whole
  stock goes to miners, so an LSP that stalled a sale to claw its stock back gains nothing.
- Stock sweeps (LSP): after T, the latest stock output of each leaf's chain (unsold, spent by no
  sale we signed) is taken through the stock's CSV leaf once it matured.
"""

from __future__ import annotations

from ..engine import store
from ..engine.exit import PathTx
from ..engine.sale import StockRef, sale_chain_path
from ..engine.sale_store import SaleEntry, chain_of, sold_of
from ..engine.tree import FactoryKeys
from .records import factory_of, txid_of


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
    chain = chain_of(keys, leaf.node, txid_of(leaf.raw), record.sales)
    return [(e.path_txs(), e.txs[-1].txid) for e in sale_chain_path(chain, record.client_index)]


def lsp_sale_paths(record: store.LspRecord, client: int) -> list[tuple[list[PathTx], str]]:
    """The same for one client, from the LSP's own record of its leaf's stock chain."""
    if not any(e.buyer == client for e in record.sales):
        return []
    keys = factory_of(record)
    leaf = keys.topology.leaf_of_client[client]
    leaf_txid = next(txid_of(e.raw) for e in record.tree if e.node == leaf)
    chain = chain_of(keys, leaf, leaf_txid, record.sales)
    return [(e.path_txs(), e.txs[-1].txid) for e in sale_chain_path(chain, client)]


def sale_txids(record: store.Record) -> set[str]:
    """Every sale and burn tx we hold: watched on chain."""
    out = set()
    for e in record.sales:
        out.add(e.sale_txid)
        out.add(txid_of(e.burn_tx))
    return out


def sale_exit_reason(record: store.ClientRecord) -> str | None:
    """Our leaf is on chain (anyone's exit) and a sale of ours is not: it must confirm within
    `stock_delay` of its parent, so our exit starts now."""
    if not record.path or record.exit is not None:
        return None
    confirmed = dict(record.confirmed)
    if txid_of(record.path[-1].raw) not in confirmed:
        return None
    mine = [e for e in record.sales if e.buyer == record.client_index and e.complete]
    if any(e.sale_txid not in confirmed for e in mine):
        return "our leaf is on chain: our sales must confirm within the stock's delay"
    return None


def burns_due(record: store.ClientRecord, height: int) -> list[bytes]:
    """The signed burns to publish now: from T on, for each sale we signed whose stock output is
    on chain while the sale is not."""
    if height < record.timeout_height or not record.sales:
        return []
    keys = _client_keys(record)
    if keys is None:
        return []
    confirmed = dict(record.confirmed)
    out = []
    for e in record.sales:
        if e.burn_sig is None or e.stock_txid not in confirmed or e.sale_txid in confirmed:
            continue
        burn = sold_of(keys, e).signed_burn()
        if burn.txid not in confirmed:
            out.append(burn.raw())
    return out


def unsold_stocks(record: store.LspRecord, height: int) -> list[StockRef]:
    """After T: per leaf, the latest stock output of its chain if it is on chain and its CSV leaf
    has matured (`stock_delay` blocks after the tx that made it confirmed)."""
    if height < record.timeout_height or not record.tree:
        return []
    keys = factory_of(record)
    confirmed = dict(record.confirmed)
    out = []
    for leaf in keys.topology.leaves:
        entry = next((e for e in record.tree if e.node == leaf), None)
        if entry is None:
            continue
        latest = chain_of(keys, leaf, txid_of(entry.raw), record.sales).latest
        if latest is None or latest.txid not in confirmed:
            continue
        if height + 1 >= confirmed[latest.txid] + record.params.stock_delay:
            out.append(latest)
    return out


def stale_sales(record: store.Record, height: int, stock_delay: int) -> list[SaleEntry]:
    """Sales of ours whose stock output has been on chain for half the stock's delay without them
    (the exit driver's warning)."""
    confirmed = dict(record.confirmed)
    return [
        e
        for e in record.sales
        if e.stock_txid in confirmed
        and e.sale_txid not in confirmed
        and height - confirmed[e.stock_txid] >= stock_delay // 2
    ]
