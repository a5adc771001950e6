"""Real records, as the plugin stores them after an honest creation, for the store tests."""

from __future__ import annotations

from superscalar_plugin.engine import store

from .hostile import participants, signed_clients


def client_record() -> store.ClientRecord:
    """A real client's record after creation: header and path from an honest ceremony."""
    p = participants(4)
    signer = signed_clients(p)[1]
    assert signer.header is not None
    return store.ClientRecord(
        instance_id="ab" * 32,
        lsp_node_id="03" + "22" * 32,
        state=store.ClientState.READY,
        client_index=1,
        n_clients=4,
        params=p.factory.params,
        timeout_height=p.factory.timeout_height,
        lsp_pubkey=p.factory.lsp_pubkey.hex(),
        pubkey=p.factory.client_pubkeys[1].hex(),
        channel_sat=200_000,
        early_warning_time=p.factory.topology.ewt,
        header=signer.header.encode().hex(),
        path=tuple(
            store.PathEntry(
                s.node,
                signer.states[s.node],
                s.raw().hex(),
                s.unsigned.spent_amount,
                s.unsigned.spent_script.hex(),
            )
            for s in signer.signed_path
        ),
        funding_txid=signer.header.funding_txid,
    )


def lsp_record() -> store.LspRecord:
    p = participants(2)
    f = p.factory
    signers = signed_clients(p)
    path = signers[0].signed_path
    return store.LspRecord(
        instance_id="ab" * 32,
        state=store.LspState.FUNDED,
        params=f.params,
        timeout_height=f.timeout_height,
        lsp_pubkey=f.lsp_pubkey.hex(),
        clients=tuple(
            store.ClientEntry(
                "03" + f"{i:02x}" * 32,
                200_000,
                f.client_pubkeys[i].hex(),
                f.channels[i][0].hex(),
                f"{i:02x}" * 32,
                True,
            )
            for i in range(2)
        ),
        created_height=100,
        funding_txid="cd" * 32,
        funding_vout=1,
        funding_amount=f.funding_amount,
        tree=tuple(
            store.PathEntry(
                s.node, 0, s.raw().hex(), s.unsigned.spent_amount, s.unsigned.spent_script.hex()
            )
            for s in path
        ),
    )


def sold_records() -> tuple[store.ClientRecord, store.LspRecord]:
    """A client's record and the LSP's after one honest sale of the client's leaf's stock (two
    chained sales for the client: it bought the second), with an order and an on-chain
    fallback on the LSP's side."""
    from superscalar_plugin.engine.sale import (
        Sale,
        SoldStock,
        StockChain,
        build_burn_tx,
        build_sale_tx,
        sign_sale_in_process,
    )
    from superscalar_plugin.engine.sale_store import JitChannel, Order, OrderState, merge_chain
    from superscalar_plugin.engine.tx import Tx

    p = participants(4)
    f = p.factory
    client = client_record()
    leaf = client.path[-1]
    chain = StockChain.of_leaf(f, leaf.node, Tx.deserialize(bytes.fromhex(leaf.raw)).txid)
    for buyer, sold in ((0, 30_000), (1, 20_000)):
        assert chain.latest is not None
        sale = Sale(chain.latest, buyer, sold, b"\x00\x20" + bytes([buyer]) * 32, 2000)
        unsigned = SoldStock(sale, build_sale_tx(f, sale), build_burn_tx(f, sale.stock))
        chain = chain.record(sign_sale_in_process(f, unsigned, p.lsp_seckey, p.client_seckeys))
    sales = merge_chain((), chain, bytes(32))
    client = client.replace(sales=sales, jit_channels=("ef" * 32,))
    lsp = lsp_record().replace(
        orders=(
            Order("11" * 32, "l", 0, 30_000, 1300, OrderState.DELIVERED, 100, "22" * 32, 10**9),
        ),
        jit=(JitChannel(1, "ef" * 32, 25_000, "co-signer offline"),),
    )
    return client, lsp
