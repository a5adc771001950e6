"""Liquidity sales from a leaf's stock (pseudo-Spilman, spec-notes 2.5, 3.6): the transactions.

A leaf's stock output (`FactoryKeys.stock_output`: the leaf's clients and L by MuSig2 key path, or
L alone after T and `stock_delay` blocks after it confirmed) is sold by a *sale* tx that the leaf's clients and
L sign on that key path. Its outputs, in this order:

- vout 0: the buyer's NEW channel: Core Lightning's funding output (P2WSH 2-of-2, script and amount
  from `fundchannel_start`), the sold amount all on the LSP's side; not a splice (S1 #16);
- vout 1: the change: exactly the stock script again, `stock - sold - fee - anchor` (left out when
  below dust: the remainder then goes to the fee);
- last: the P2A anchor, as on every tree tx.

Version 2 like the tree's txs (S1 #16 says nVersion 3 with 0 fee; the tree pays its fees instead,
S1 #13, and a v3 (TRUC) tx may have only one unconfirmed ancestor while an exit chains several). The fee follows the
tree's rule (`fee_for` on the key-path vsize) at the sale's own rate. Later sales chain on the
latest change output; each stock output is spent by at most one sale, which the co-signers
enforce by refusing (`sale_checks`) and remember (`StockChain`).

With every sale the same co-signers sign a *burn* tx of the same stock output: nLockTime = T (the
factory timeout), one 0-sat OP_RETURN output (padded to Core's 65-byte minimum non-witness size),
fee = the whole stock, so an LSP that stalls a sale until T loses the stock to miners (S1 #16
L967-1008).

The stock's only path for L alone is `FactoryKeys.stock_leaf`:
`<T> CLTV DROP <stock_delay> CSV DROP <L> CHECKSIG` (spec-notes 3.2 allows `L & CLTV` for the
stock). Why both locks, and not a CSV alone or a CLTV alone:

- *Nothing before T.* With a CSV alone (what this module built before) the LSP could publish the
  path to any leaf whenever it liked and, `stock_delay` blocks later, take every sale chained on
  that stock that had not confirmed, the buyers' channels in them. Before T a stock output now
  leaves only by the key path, i.e. by a sale or a burn every co-signer signed: a complete sale
  is never at risk before T, however long its buyer stays offline.
- *And `stock_delay` blocks after the stock output confirmed.* With a CLTV alone, a stock output
  that confirms just before T (a leaf another client put on chain late) could be taken in block
  T+1, before the sales chained on it (published right behind it) confirm. The CSV keeps
  `stock_delay` blocks (at least the clients' `min-stock-delay`) for them whenever the stock
  confirmed.
- *The burn still wins at T.* The burn (nLockTime T, final from block T+1 like L's path) pays the
  whole stock as fee: L's path can outbid it only with money from outside the stock.

The cost is four witness bytes on the LSP's sweep and a sweep that waits for T.
The sale and burn txs are `UnsignedNodeTx`/`SignedNodeTx` values whose `node` is the leaf whose
stock they spend, so the exit machinery (`exit.PathTx`) takes them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import musig2
from .ceremony import SignedNodeTx, sign_one_in_process
from .errors import CeremonyError, InvalidAmount, InvalidParameter, StockAlreadySold, UnsafeSale
from .exit import PathTx
from .taproot import DUST_P2TR, DUST_P2WSH, P2A_SCRIPT, taproot_sighash
from .tree import (
    SEQUENCE_NO_RELATIVE_LOCK,
    TX_VERSION,
    FactoryKeys,
    NodeKind,
    UnsignedNodeTx,
    fee_for,
    keypath_tx_vsize,
)
from .tx import Tx, TxIn, TxOut

CHANNEL_VOUT = 0
CHANGE_VOUT = 1
SALE_SEQUENCE = SEQUENCE_NO_RELATIVE_LOCK
OP_RETURN = 0x6A
# Bitcoin Core's MIN_STANDARD_TX_NONWITNESS_SIZE: smaller txs are not relayed ("tx-size-small";
# 64 bytes would collide with a merkle-tree inner node, CVE-2017-12842).
MIN_TX_NONWITNESS_SIZE = 65
# A one-input tx with a bare OP_RETURN output is 61 bytes without witness: 4 (version) + 1 + 41
# (input) + 1 + 10 (output) + 4 (locktime). A 3-byte push brings it to 65.
BURN_SCRIPT = bytes([OP_RETURN, 3]) + b"\x00\x00\x00"
MIN_FEE_RATE_KVB = 1000  # Core's default minimum relay fee
MAX_FEE_RATE_KVB = 10_000_000


@dataclass(frozen=True)
class StockRef:
    """A stock output of leaf `leaf`: the leaf tx's own, or the change of a sale."""

    leaf: int
    txid: str
    vout: int
    amount: int

    @property
    def outpoint(self) -> tuple[str, int]:
        return (self.txid, self.vout)

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout} ({self.amount} sat, leaf {self.leaf})"


@dataclass(frozen=True)
class Sale:
    """One sale as every party agrees it: which stock, to whom, how much, into which channel."""

    stock: StockRef
    buyer: int  # client index; one of the leaf's clients
    sold_sat: int  # the new channel's capacity, all on the LSP's side (the buyer's inbound)
    channel_script: bytes  # scriptPubKey lightningd returned from fundchannel_start
    fee_rate_kvb: int


def leaf_stock(
    keys: FactoryKeys, leaf: int, leaf_txid: str, stock_sat: int | None = None
) -> StockRef:
    """The stock output of leaf tx `leaf_txid` (after the leaf's channels, before its anchor):
    `stock_sat`, or the factory's initial stock (a DW update moves stock between leaves)."""
    node = keys.topology.nodes[leaf]
    if node.kind is not NodeKind.LEAF:
        raise InvalidParameter(f"node {leaf} is not a leaf")
    amount = keys.params.stock_sat if stock_sat is None else stock_sat
    return StockRef(leaf, leaf_txid, node.hi - node.lo, amount)


def stock_cosigners(keys: FactoryKeys, leaf: int) -> range:
    """Client indices that co-sign every sale and burn of `leaf`'s stock (with the LSP)."""
    return keys.signers(leaf)


def stock_script(keys: FactoryKeys, leaf: int) -> bytes:
    node = keys.topology.nodes[leaf]
    return keys.stock_output(node.lo, node.hi).script_pubkey


def stock_signing_keyagg(keys: FactoryKeys, leaf: int) -> musig2.KeyAggContext:
    """The aggregate that signs a spend of `leaf`'s stock: its clients and L, tweaked with the
    stock output's taproot tweak (key path; L's stock leaf is committed to in the tweak)."""
    node = keys.topology.nodes[leaf]
    tweak = keys.stock_output(node.lo, node.hi).tweak
    return keys.keyagg(node.lo, node.hi).apply_tweak(tweak, is_xonly=True)


# --- amounts ------------------------------------------------------------------------------------


def _check_rate(fee_rate_kvb: int) -> None:
    if not MIN_FEE_RATE_KVB <= fee_rate_kvb <= MAX_FEE_RATE_KVB:
        raise InvalidAmount(
            f"sale fee rate must be {MIN_FEE_RATE_KVB}..{MAX_FEE_RATE_KVB} sat/kvB,"
            f" got {fee_rate_kvb}"
        )


def sale_amounts(
    stock_sat: int,
    sold_sat: int,
    channel_script: bytes,
    change_script: bytes,
    fee_rate_kvb: int,
    anchor_sat: int,
) -> tuple[int, int]:
    """(fee, change) of a sale; change 0 means no change output (it would be dust: what is left
    after the sold amount and the anchor then all goes to the fee)."""
    _check_rate(fee_rate_kvb)
    if sold_sat < DUST_P2WSH:
        raise InvalidAmount(f"sold amount {sold_sat} sat is below dust ({DUST_P2WSH})")
    fee = fee_for(keypath_tx_vsize([channel_script, change_script, P2A_SCRIPT]), fee_rate_kvb)
    change = stock_sat - sold_sat - anchor_sat - fee
    if change >= DUST_P2TR:
        return fee, change
    fee = stock_sat - sold_sat - anchor_sat
    need = fee_for(keypath_tx_vsize([channel_script, P2A_SCRIPT]), fee_rate_kvb)
    if fee < need:
        raise InvalidAmount(
            f"stock of {stock_sat} sat cannot pay {sold_sat} sat, the {anchor_sat}-sat anchor and"
            f" a {need}-sat fee"
        )
    return fee, 0


def max_sold_sat(
    keys: FactoryKeys, stock: StockRef, channel_script: bytes, fee_rate_kvb: int
) -> int:
    """The most a sale of `stock` can sell (no change left): stock - anchor - fee."""
    _check_rate(fee_rate_kvb)
    fee = fee_for(keypath_tx_vsize([channel_script, P2A_SCRIPT]), fee_rate_kvb)
    return stock.amount - keys.params.anchor_sat - fee


# --- transactions -------------------------------------------------------------------------------


def sale_outputs(keys: FactoryKeys, sale: Sale) -> tuple[tuple[int, bytes], ...]:
    """The sale's outputs in vout order: buyer channel, change (unless dust), P2A anchor."""
    if not 1 <= len(sale.channel_script) <= 80:
        raise InvalidParameter("channel script must be 1..80 bytes")
    change_script = stock_script(keys, sale.stock.leaf)
    anchor = keys.params.anchor_sat
    _, change = sale_amounts(
        sale.stock.amount,
        sale.sold_sat,
        sale.channel_script,
        change_script,
        sale.fee_rate_kvb,
        anchor,
    )
    outs = [(sale.sold_sat, sale.channel_script)]
    if change:
        outs.append((change, change_script))
    outs.append((anchor, P2A_SCRIPT))
    return tuple(outs)


def _spend_of_stock(
    keys: FactoryKeys,
    stock: StockRef,
    sequence: int,
    outputs: Sequence[tuple[int, bytes]],
    lock: int,
) -> UnsignedNodeTx:
    tx = Tx(
        TX_VERSION,
        (TxIn(stock.txid, stock.vout, sequence),),
        tuple(TxOut(a, s) for a, s in outputs),
        lock,
    )
    return UnsignedNodeTx(stock.leaf, tx, stock.amount, stock_script(keys, stock.leaf))


def build_sale_tx(keys: FactoryKeys, sale: Sale) -> UnsignedNodeTx:
    """The unsigned sale tx: spends only `sale.stock`, nLockTime 0, no relative lock."""
    node = keys.topology.nodes[sale.stock.leaf]
    if not node.lo <= sale.buyer < node.hi:
        raise InvalidParameter(f"client {sale.buyer} is not a client of leaf {sale.stock.leaf}")
    return _spend_of_stock(keys, sale.stock, SALE_SEQUENCE, sale_outputs(keys, sale), 0)


def burn_sequence(keys: FactoryKeys) -> int:
    """The burn's nSequence: a relative lock of `stock_delay` blocks (BIP68, version 2), the
    same as L's own path on the stock. Consensus, not the signers' goodwill, then keeps every
    holder of the signed burn (the LSP, any co-signer) from burning the stock before L's path
    opens: until then a complete sale held by an absent buyer can still confirm (red-team
    finding: a burn valid at T+1 took such a buyer's funded sale channel)."""
    return keys.params.stock_delay


def build_burn_tx(keys: FactoryKeys, stock: StockRef) -> UnsignedNodeTx:
    """The unsigned burn tx of `stock`: nLockTime = T and nSequence `stock_delay` (valid when
    L's own stock path is, not before), one 0-sat OP_RETURN output, so its fee is the whole
    stock; 65 bytes without witness."""
    return _spend_of_stock(
        keys, stock, burn_sequence(keys), [(0, BURN_SCRIPT)], keys.timeout_height
    )


def sale_change(sale: Sale, tx: Tx) -> StockRef | None:
    """The stock the sale leaves for the next one: its change output, if any (a sale has three
    outputs with change, two without)."""
    if len(tx.outputs) != 3:
        return None
    change = tx.outputs[CHANGE_VOUT]
    return StockRef(sale.stock.leaf, tx.txid, CHANGE_VOUT, change.amount)


# --- what a co-signer remembers -----------------------------------------------------------------


@dataclass(frozen=True)
class SoldStock:
    """One sale a co-signer agreed to sign, with its burn tx; the final signatures once known.

    It is recorded (`StockChain.record`) before the co-signer releases any partial signature: a
    partial signature given out is a promise the LSP may complete."""

    sale: Sale
    sale_tx: UnsignedNodeTx
    burn_tx: UnsignedNodeTx
    sale_sig: bytes | None = None
    burn_sig: bytes | None = None

    @property
    def complete(self) -> bool:
        return self.sale_sig is not None and self.burn_sig is not None

    @property
    def change(self) -> StockRef | None:
        return sale_change(self.sale, self.sale_tx.tx)

    @property
    def channel_outpoint(self) -> tuple[str, int]:
        return (self.sale_tx.txid, CHANNEL_VOUT)

    def signed_sale(self) -> SignedNodeTx:
        if self.sale_sig is None:
            raise InvalidParameter(f"sale {self.sale_tx.txid} is not signed")
        return SignedNodeTx(self.sale_tx, self.sale_sig)

    def signed_burn(self) -> SignedNodeTx:
        if self.burn_sig is None:
            raise InvalidParameter(f"burn of {self.sale.stock} is not signed")
        return SignedNodeTx(self.burn_tx, self.burn_sig)


@dataclass(frozen=True)
class StockChain:
    """A leaf's stock as a co-signer knows it: the leaf tx's stock output and, in order, every
    sale it signed of it. Immutable: `record` and `with_signatures` return a new chain."""

    origin: StockRef
    sales: tuple[SoldStock, ...] = ()

    @staticmethod
    def of_leaf(
        keys: FactoryKeys, leaf: int, leaf_txid: str, stock_sat: int | None = None
    ) -> StockChain:
        return StockChain(leaf_stock(keys, leaf, leaf_txid, stock_sat))

    @property
    def leaf(self) -> int:
        return self.origin.leaf

    @property
    def latest(self) -> StockRef | None:
        """The stock output the next sale must spend; None once a sale left no change."""
        return self.sales[-1].change if self.sales else self.origin

    def sold(self, outpoint: tuple[str, int]) -> SoldStock | None:
        """The sale of the stock output `outpoint` we signed, if any."""
        return next((s for s in self.sales if s.sale.stock.outpoint == outpoint), None)

    def record(self, sold: SoldStock) -> StockChain:
        """Add a sale about to be signed. The same sale again changes nothing (a retried
        ceremony signs the same message); a different sale of a sold output is refused."""
        before = self.sold(sold.sale.stock.outpoint)
        if before is not None:
            if before.sale_tx.txid == sold.sale_tx.txid and before.sale == sold.sale:
                return self
            raise StockAlreadySold(
                "stock",
                f"{sold.sale.stock} was already sold by {before.sale_tx.txid}: a stock output is"
                " spent by at most one sale",
            )
        if sold.sale.stock != self.latest:
            raise UnsafeSale("stock", f"spends {sold.sale.stock}, the latest is {self.latest}")
        return replace(self, sales=(*self.sales, sold))

    def drop_unsent(self, outpoint: tuple[str, int]) -> StockChain:
        """Forget the recorded sale of `outpoint` whose sale partial signature of ours never left
        (the caller knows it: the signature was refused or could not be sent, and the secret
        nonce it needed is gone, never persisted). Such a sale can never complete (MuSig2 needs
        every co-signer's partial signature), so its stock is unsold again and may be sold to
        anyone. Only the last sale of the chain, and only while incomplete: once our partial
        signature has left, the sale may complete at any time and the stock is spent for it."""
        if not self.sales or self.sales[-1].sale.stock.outpoint != outpoint:
            raise InvalidParameter(f"{outpoint[0]}:{outpoint[1]} is not the last sale's stock")
        if self.sales[-1].sale_sig is not None:
            raise InvalidParameter("the sale is complete: it cannot be dropped")
        return replace(self, sales=self.sales[:-1])

    def with_signatures(
        self,
        keys: FactoryKeys,
        outpoint: tuple[str, int],
        *,
        burn_sig: bytes | None = None,
        sale_sig: bytes | None = None,
    ) -> StockChain:
        """Attach the final signatures of the sale of `outpoint`, each verified first."""
        sold = self.sold(outpoint)
        if sold is None:
            raise InvalidParameter(f"no sale of {outpoint[0]}:{outpoint[1]} was recorded")
        agg = stock_signing_keyagg(keys, self.leaf).xonly_pubkey
        for name, sig, utx in (("burn", burn_sig, sold.burn_tx), ("sale", sale_sig, sold.sale_tx)):
            if sig is not None and not musig2.schnorr_verify(sig, utx.sighash, agg):
                raise CeremonyError(f"{name} tx {utx.txid}: the final signature is invalid")
        # The first valid signature held is kept: a retried sale (fresh nonces, another valid
        # signature of the same tx) changes nothing, so a peer cannot make us rewrite it at will.
        new = replace(
            sold,
            burn_sig=sold.burn_sig if sold.burn_sig is not None else burn_sig,
            sale_sig=sold.sale_sig if sold.sale_sig is not None else sale_sig,
        )
        if new == sold:
            return self
        return replace(self, sales=tuple(new if s is sold else s for s in self.sales))


# --- signing in one process (tests, demo, benchmarks) ---------------------------------------


def sign_sale_in_process(
    keys: FactoryKeys,
    sold: SoldStock,
    lsp_seckey: bytes,
    client_seckeys: Sequence[bytes],
) -> SoldStock:
    """Sign the burn tx, then the sale, with the leaf's clients' keys and L's (same two MuSig2
    rounds as the wire). Burn first: no co-signer should release its sale signature before it
    holds the signed burn."""
    leaf = sold.sale.stock.leaf
    keyagg = stock_signing_keyagg(keys, leaf)
    signers: list[tuple[int | None, bytes, bytes]] = [
        (c, keys.client_pubkeys[c], client_seckeys[c]) for c in stock_cosigners(keys, leaf)
    ]
    signers.append((None, keys.lsp_pubkey, lsp_seckey))
    burn = sign_one_in_process(sold.burn_tx, keyagg, signers)
    sale = sign_one_in_process(sold.sale_tx, keyagg, signers)
    return replace(sold, burn_sig=burn.signature, sale_sig=sale.signature)


# --- the LSP's sweep of an unsold stock ------------------------------------------------------


def stock_sweep(
    keys: FactoryKeys,
    stock: StockRef,
    lsp_seckey: bytes,
    destination: bytes,
    fee_rate_kvb: int,
) -> bytes:
    """L alone takes an unsold stock output through the stock's leaf (script path): nLockTime = T
    and nSequence = stock_delay, so valid from block T+1 and `stock_delay` blocks after the output
    confirmed. The LSP uses it only for the latest stock of a chain, which no sale spends."""
    if musig2.pubkey_from_secret(lsp_seckey) != keys.lsp_pubkey:
        raise InvalidParameter("the sweep key is not the factory's LSP key")
    node = keys.topology.nodes[stock.leaf]
    output = keys.stock_output(node.lo, node.hi)
    leaf = keys.stock_leaf
    control = output.control_block(leaf)
    base = 4 + 1 + 41 + 1 + (9 + len(destination)) + 4
    witness = 2 + 1 + 65 + 1 + len(leaf.script) + 1 + len(control)
    fee = fee_for((base * 4 + witness + 3) // 4, fee_rate_kvb)
    if stock.amount - fee < DUST_P2TR:
        raise InvalidAmount(f"stock of {stock.amount} sat cannot pay a {fee}-sat sweep fee")
    tx = Tx(
        TX_VERSION,
        (TxIn(stock.txid, stock.vout, keys.params.stock_delay),),
        (TxOut(stock.amount - fee, destination),),
        keys.timeout_height,
    )
    digest = taproot_sighash(tx, 0, [(stock.amount, output.script_pubkey)], leaf=leaf)
    sig = musig2.schnorr_sign(digest, lsp_seckey)
    return tx.with_witnesses([[sig, leaf.script, control]]).serialize()


def stock_sweep_valid_from(keys: FactoryKeys, stock_confirmed_at: int) -> int:
    """The first block that may hold L's sweep of a stock output confirmed at that height."""
    return max(keys.timeout_height + 1, stock_confirmed_at + keys.params.stock_delay)


# --- exits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaleExit:
    """What a buyer's unilateral exit adds after its leaf to reach one of its sale channels: the
    signed sales from the leaf's stock down to the one that created the channel."""

    channel_outpoint: tuple[str, int]
    channel_sat: int
    txs: tuple[SignedNodeTx, ...]

    @property
    def vsize(self) -> int:
        return sum(signed_vsize(s) for s in self.txs)

    def path_txs(self) -> list[PathTx]:
        """The sale txs as exit steps after the leaf (no relative lock: each can follow its
        parent in the same block)."""
        return [PathTx.of(s, 0) for s in self.txs]


def signed_vsize(signed: SignedNodeTx) -> int:
    return signed.unsigned.tx.with_witnesses([[signed.signature]]).vsize


def sale_chain_path(chain: StockChain, buyer: int) -> list[SaleExit]:
    """For each of `buyer`'s sale channels whose sale is fully signed, the chain of sales from the
    leaf's stock output down to it. A sale not fully signed ends the chain: nothing after it can
    confirm through us."""
    out: list[SaleExit] = []
    done: list[SignedNodeTx] = []
    for sold in chain.sales:
        if not sold.complete:
            break
        done.append(sold.signed_sale())
        if sold.sale.buyer == buyer:
            out.append(SaleExit(sold.channel_outpoint, sold.sale.sold_sat, tuple(done)))
    return out
