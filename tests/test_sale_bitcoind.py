"""Sales and burn txs against a real regtest bitcoind's relay policy (mainnet-like standardness).

A sale relays right after its leaf (with the vsize and fee the engine planned); the burn tx is
`non-final` until the tip reaches T, then relays with its whole-stock fee; and the padding is
needed: the same burn with a bare OP_RETURN (61 bytes without witness) is `tx-size-small`.
"""

from __future__ import annotations

from dataclasses import replace

from superscalar_plugin.chain.bitcoind import BitcoindProcess
from superscalar_plugin.engine import musig2
from superscalar_plugin.engine.ceremony import SignedNodeTx, sign_in_process, sign_one_in_process
from superscalar_plugin.engine.client_checks import ClientPolicy
from superscalar_plugin.engine.sale import (
    MIN_TX_NONWITNESS_SIZE,
    OP_RETURN,
    Sale,
    StockChain,
    build_burn_tx,
    build_sale_tx,
    sign_sale_in_process,
    signed_vsize,
    stock_cosigners,
    stock_signing_keyagg,
)
from superscalar_plugin.engine.sale_checks import check_sale
from superscalar_plugin.engine.tree import FactoryParams, UnsignedNodeTx
from superscalar_plugin.engine.tx import TxOut
from superscalar_plugin.simulate import Participants, channel_script, make_factory, seckey

import bitcoind_helpers as bh

PARAMS = FactoryParams(states_per_layer=2, step_blocks=1, ewt_margin=0, stock_delay=50)


def test_a_sale_relays_after_its_leaf_and_its_burn_once_ls_path_opens_padded_to_65_bytes(
    bitcoind: BitcoindProcess,
) -> None:
    node = bitcoind
    bh.ensure_funds(node)
    timeout = node.height() + 30
    p = make_factory(4, PARAMS, timeout_height=timeout, seed="sale-policy")
    f = p.factory
    outpoint, _ = bh.fund(node, f)
    states = (PARAMS.states_per_layer - 1,) * len(f.topology.nodes)
    path = f.topology.client_path(0)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys, path)
    for n in path:
        node.rpc.call("sendrawtransaction", signed[n].raw().hex())
    node.mine(1)
    leaf_height = node.height()  # where the stock output confirmed
    stock = StockChain.of_leaf(f, path[-1], signed[path[-1]].txid)
    assert stock.latest is not None
    peer = musig2.pubkey_from_secret(seckey("sale-policy", "peer"))
    sale = Sale(stock.latest, 0, 30_000, channel_script(f.client_pubkeys[0], peer), 2000)
    sold = check_sale(
        f,
        stock,
        sale,
        build_sale_tx(f, sale).tx,
        build_burn_tx(f, sale.stock).tx,
        1,
        ClientPolicy(),
    )
    sold = sign_sale_in_process(f, sold, p.lsp_seckey, p.client_seckeys)
    sale_tx, burn = sold.signed_sale(), sold.signed_burn()
    # The sale: standard, the planned vsize and fee (fee rate 2 sat/vB of the tree's rule).
    [accepted] = bh.test_accept(node, [sale_tx.raw()])
    assert accepted["allowed"] is True, accepted
    assert accepted["vsize"] == signed_vsize(sale_tx)
    fee = sale.stock.amount - sum(o.amount for o in sale_tx.unsigned.tx.outputs)
    assert bh.sat(accepted["fees"]["base"]) == fee
    # The burn: nLockTime T is final for the block after the tip T.
    bh.mine_to(node, timeout - 1)
    bh.refused(node, burn.raw(), "non-final")
    # Without the padding, the same burn is too small to relay.
    bare = _signed_variant(p, burn.unsigned, TxOut(0, bytes([OP_RETURN])))
    assert len(bare.unsigned.tx.serialize(include_witness=False)) == MIN_TX_NONWITNESS_SIZE - 4
    bh.mine_to(node, timeout)
    bh.refused(node, bare.raw(), "tx-size-small")
    # Final by nLockTime, but it also waits `stock_delay` after the stock (BIP68), as L's path.
    assert leaf_height + PARAMS.stock_delay > timeout + 1
    bh.refused(node, burn.raw(), "non-BIP68-final")
    bh.mine_to(node, leaf_height + PARAMS.stock_delay - 1)
    [ok] = bh.test_accept(node, [burn.raw()])
    assert ok["allowed"] is True, ok
    assert bh.sat(ok["fees"]["base"]) == sale.stock.amount  # the whole stock to the miner
    node.rpc.call("sendrawtransaction", burn.raw().hex())
    node.mine(1)
    assert bh.utxo(node, *sale.stock.outpoint) is None


def _signed_variant(p: Participants, burn: UnsignedNodeTx, out: TxOut) -> SignedNodeTx:
    """`burn` with another single output, signed by every co-signer (to ask the policy)."""
    f = p.factory
    utx = replace(burn, tx=replace(burn.tx, outputs=(out,)))
    signers: list[tuple[int | None, bytes, bytes]] = [
        (c, f.client_pubkeys[c], p.client_seckeys[c]) for c in stock_cosigners(f, burn.node)
    ]
    signers.append((None, f.lsp_pubkey, p.lsp_seckey))
    return sign_one_in_process(utx, stock_signing_keyagg(f, burn.node), signers)
