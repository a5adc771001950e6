"""A hostile LSP selling liquidity, against real plugin processes (tests/harness).

The test plays the LSP (engine `SaleCoordinator` in the test process, bytes through the fake
network) against two real clients sharing a leaf. Each attack must be refused by every co-signer,
naming the field, before any nonce leaves: a sale that touches a co-signer's output or shrinks the
change, a change output with another script, a second sale of a stock already sold. An LSP that
stalls a sale after collecting its partial signatures loses the stock: once the leaf is on chain
and the LSP's own path on the stock opens, the buyer publishes the burn (a co-signer never burns
another client's sale); a sale a co-signer holds complete is published instead, never burnt. A
co-client cannot speak for the LSP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from superscalar_plugin.engine import protocol, store
from superscalar_plugin.engine.ceremony import Coordinator
from superscalar_plugin.engine.sale import Sale, StockChain, build_burn_tx
from superscalar_plugin.engine.sale_sign import SaleCoordinator
from superscalar_plugin.engine.tree import Factory, FactoryParams
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.plugin.creation import funding

from .plugin_hostile import (
    HostileLsp,
    _Rpc as LspRpc,
    lsp_with_clients,
    open_channels,
    pig,
    status,
    wait,
)
from .test_plugin_attacks import _funding_tx
from harness.bitcoin import b2lx
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

LIFETIME = 100  # blocks to the factory's timeout: the burn test mines that far
SOLD = 30_000
CHANNEL = b"\x00\x20" + bytes(range(32))  # the buyer's new channel (a P2WSH it cannot check)


@dataclass
class ShortLsp(HostileLsp):
    """A hostile LSP whose factories time out soon."""

    def propose_message(self, i: int) -> protocol.Propose:
        p = super().propose_message(i)
        return replace(p, timeout_height=self.net.blockheight + LIFETIME)


@dataclass
class Funded:
    net: Network
    lsp: ShortLsp
    clients: list[FakeNode]
    factory: Factory
    coordinator: Coordinator
    timeout: int

    @property
    def leaf(self) -> int:
        return self.factory.topology.leaf_of_client[0]

    def chain(self) -> StockChain:
        return StockChain.of_leaf(self.factory, self.leaf, self.coordinator.signed[self.leaf].txid)


def _funded(network_factory: Callable[..., Network]) -> Funded:
    net, lsp, clients = lsp_with_clients(network_factory, SUPERSCALAR_PLUGIN, 60)
    params = FactoryParams(states_per_layer=2, step_blocks=3)
    hostile = ShortLsp(net, lsp, clients, params=params)
    hostile.propose_all()
    factory = hostile.factory(open_channels(hostile))
    tx = _funding_tx(factory.funding_amount, factory.funding_output.script_pubkey, seed=11)
    txid = b2lx(tx.GetTxid())
    coord = hostile.sign(factory, (txid, 0))
    for i in range(len(clients)):
        hostile.send(i, protocol.Funded(hostile.instance, txid, 0))
    net.broadcast(tx)
    net.mine(1)
    for c in clients:
        wait(lambda c=c: status(c)[0]["state"] == "funded", what="client funded")
    return Funded(net, hostile, clients, factory, coord, factory.timeout_height)


def _offer(f: Funded, session: bytes) -> None:
    """OFFER to the buyer (client 0), a gift: it must answer ACCEPT."""
    offer = protocol.Offer(f.lsp.instance, session, protocol.OfferKind.FACTORY, SOLD, 0)
    f.lsp.send(0, offer)
    index, step = f.lsp.expect(protocol.SaleStep)
    assert index == 0 and isinstance(step, protocol.SaleStep)
    assert step.kind is protocol.SaleStepKind.ACCEPT


def _coordinator(f: Funded, chain: StockChain, session: bytes) -> SaleCoordinator:
    assert chain.latest is not None
    sale = Sale(chain.latest, 0, SOLD, CHANNEL, f.factory.params.fee_rate_kvb)
    return SaleCoordinator(f.factory, chain, sale, f.lsp.lsp_key, f.lsp.instance, session)


def _completed(f: Funded, chain: StockChain, session: bytes) -> SaleCoordinator:
    """An honest LSP's sale: the buyer's channel opened, the sale built on its script, and the
    channel completed on the unsigned sale before SALE (the buyer binds it before any nonce)."""
    assert chain.latest is not None
    rpc = LspRpc(f.lsp.node)
    buyer = store.ClientEntry(f.clients[0].node_id, SOLD)
    script = bytes.fromhex(funding.start_channel(rpc, buyer))
    sale = Sale(chain.latest, 0, SOLD, script, f.factory.params.fee_rate_kvb)
    co = SaleCoordinator(f.factory, chain, sale, f.lsp.lsp_key, f.lsp.instance, session)
    funding.complete_channel(rpc, buyer, co.sold.sale_tx)
    return co


def _refused_by_both(f: Funded, proposal: protocol.SaleProposal, field: str) -> None:
    for i in range(2):
        f.lsp.send(i, proposal)
    for _ in range(2):
        _, text = f.lsp.expect(protocol.Text)
        assert isinstance(text, protocol.Text)
        assert f"sale {field}" in text.reason, text.reason
    assert f.lsp.inbox.empty()  # no nonce, nothing else
    for c in f.clients:
        assert status(c)[0]["sales_cosigned"] == 0


def _run_until_sale_psigs(f: Funded, co: SaleCoordinator) -> dict[int, protocol.SaleStep]:
    """An honest sale up to the co-signers' sale partial signatures; returns the SALE_SIG steps
    the LSP could now send."""
    proposal = co.proposal()
    for i in range(2):
        f.lsp.send(i, proposal)
    outbox: dict[int, protocol.SaleStep] = {}
    for _ in range(3):  # nonces, burn psigs, sale psigs
        for _ in range(2):
            i, step = f.lsp.expect(protocol.SaleStep)
            assert isinstance(step, protocol.SaleStep)
            outbox.update(co.receive(i, step))
        if co.sale_sig is None:
            for i, step in outbox.items():
                f.lsp.send(i, step)
    return outbox


@pytest.mark.parametrize("attack", ["input", "change.amount", "change.script"])
def test_a_hostile_sale_is_refused_by_every_co_signer_before_any_nonce(
    network_factory: Callable[..., Network], attack: str
) -> None:
    f = _funded(network_factory)
    session = bytes([7]) * 32
    _offer(f, session)
    co = _coordinator(f, f.chain(), session)
    honest = co.proposal()
    tx = Tx.deserialize(honest.sale_tx)
    if attack == "input":  # spends the co-signer's channel output in the leaf, not the stock
        leaf_txid = f.coordinator.signed[f.leaf].txid
        tx = replace(tx, inputs=(TxIn(leaf_txid, 1, tx.inputs[0].sequence),))
    else:
        change = tx.outputs[1]
        if attack == "change.amount":  # the co-signers' stock shrinks: the rest to fees
            change = TxOut(change.amount - 5_000, change.script_pubkey)
        else:  # the change goes to a script the LSP alone controls
            change = TxOut(change.amount, b"\x51\x20" + bytes(32))
        tx = replace(tx, outputs=(tx.outputs[0], change, tx.outputs[2]))
    _refused_by_both(f, replace(honest, sale_tx=tx.serialize(include_witness=False)), attack)


def test_a_stock_is_sold_once_and_a_stalled_gift_is_never_burnt(
    network_factory: Callable[..., Network],
) -> None:
    f = _funded(network_factory)
    origin = f.chain()
    # An honest sale, fully signed and acked.
    first = bytes([1]) * 32
    _offer(f, first)
    co = _completed(f, origin, first)
    for i, step in _run_until_sale_psigs(f, co).items():
        f.lsp.send(i, step)
    for _ in range(2):
        _, done = f.lsp.expect(protocol.SaleStep)
        assert isinstance(done, protocol.SaleStep) and done.kind is protocol.SaleStepKind.DONE
    assert [s["complete"] for s in status(f.clients[0])[0]["sales"]] == [True]
    chain = origin.record(co.signed())

    # The same stock output again, into another channel: both refuse, naming it.
    second = bytes([2]) * 32
    _offer(f, second)
    again = SaleCoordinator(
        f.factory,
        origin,
        replace(co.sold.sale, channel_script=b"\x00\x20" + bytes(32)),
        f.lsp.lsp_key,
        f.lsp.instance,
        second,
    )
    for i in range(2):
        f.lsp.send(i, again.proposal())
    for _ in range(2):
        _, text = f.lsp.expect(protocol.Text)
        assert isinstance(text, protocol.Text) and "already sold" in text.reason

    # A third sale, of the right (latest) stock, which the LSP stalls once it holds every
    # partial signature: it never sends SALE_SIG, never publishes it.
    third = bytes([3]) * 32
    _offer(f, third)
    stalled = _completed(f, chain, third)
    _run_until_sale_psigs(f, stalled)
    assert [s["complete"] for s in status(f.clients[0])[0]["sales"]] == [True, False]
    burn = build_burn_tx(f.factory, stalled.sold.sale.stock).txid

    # A co-signer leaves: the tree and the first sale go on chain; the stalled sale cannot.
    f.clients[1].rpc_call("factory-exit", {"instance": f.lsp.instance.hex()})
    leaf = f.coordinator.signed[f.leaf].txid

    def confirmed(txid: str) -> bool:
        record = f.net.chain.txs.get(txid)
        return record is not None and record.height is not None

    for _ in range(40):  # a block at a time: the exit waits out the leaf's relative lock
        f.net.mine(1)
        time.sleep(0.3)
        if confirmed(leaf):
            break
    assert confirmed(leaf)
    # The leaf on chain, the first sale (complete in both co-signers' hands) is published as it
    # is: the buyer's sale channel confirms with no exit of the buyer's (before T, the stock
    # leaves only by a co-signed spend: nothing is at risk, nothing needs closing).
    for _ in range(3):
        f.net.mine(1)
        time.sleep(0.3)
    wait(lambda: confirmed(co.sold.sale_tx.txid), what="the complete sale confirmed")
    [view] = status(f.clients[0])
    assert view.get("exit") is None
    # The stalled sale was a gift: its buyer paid nothing and its channel took no HTLC, so it
    # lost nothing and burns nothing, not even once the LSP's own path on the stock opens (T+1
    # and `stock_delay` blocks after that stock, the first sale's change, confirmed); the
    # co-signer never burns another client's sale. A stalled sale its buyer PAID for is burnt:
    # test_red_team8, test_an_lsp_that_takes_the_price_and_withholds_the_sale_still_loses_...
    stock_at = f.net.chain.txs[co.sold.sale_tx.txid].height
    assert stock_at is not None
    opens = max(f.timeout + 1, stock_at + f.factory.params.stock_delay)
    f.net.mine(opens + 2 - f.net.blockheight)
    time.sleep(1.0)
    assert burn not in f.net.chain.txs
    [mine] = [s for s in status(f.clients[0])[0]["sales"] if not s["complete"]]
    assert mine["payment"] == "gift", mine


def test_a_sale_a_co_signer_holds_complete_is_published_never_burnt(
    network_factory: Callable[..., Network],
) -> None:
    """The LSP sends the sale's last signature to the co-signer only, not to the buyer, and lets
    the leaf go on chain: the co-signer publishes the sale (the buyer's channel confirms); from
    T nobody burns the stock: not the co-signer (it holds the sale complete), not the buyer (its
    own purchase, incomplete in its hands)."""
    f = _funded(network_factory)
    session = bytes([4]) * 32
    _offer(f, session)
    co = _completed(f, f.chain(), session)
    sale_sigs = _run_until_sale_psigs(f, co)
    f.lsp.send(1, sale_sigs[1])
    _, done = f.lsp.expect(protocol.SaleStep)
    assert isinstance(done, protocol.SaleStep) and done.kind is protocol.SaleStepKind.DONE
    assert [s["complete"] for s in status(f.clients[0])[0]["sales"]] == [False]
    burn = build_burn_tx(f.factory, co.sold.sale.stock).txid
    sale = co.sold.sale_tx.txid
    f.clients[1].rpc_call("factory-exit", {"instance": f.lsp.instance.hex()})
    leaf = f.coordinator.signed[f.leaf].txid

    def confirmed(txid: str) -> bool:
        record = f.net.chain.txs.get(txid)
        return record is not None and record.height is not None

    for _ in range(40):
        f.net.mine(1)
        time.sleep(0.3)
        if confirmed(leaf) and confirmed(sale):
            break
    assert confirmed(sale)
    assert status(f.clients[0])[0].get("exit") is None  # the buyer needed no exit for it
    f.net.mine(f.timeout + 2 - f.net.blockheight)
    time.sleep(1.5)
    assert burn not in f.net.chain.txs


def test_a_co_client_cannot_start_a_sale(network_factory: Callable[..., Network]) -> None:
    f = _funded(network_factory)
    f.net.connect(f.clients[1], f.clients[0])  # co-clients may well be peers
    session = bytes([9]) * 32
    forged = protocol.Offer(f.lsp.instance, session, protocol.OfferKind.FACTORY, SOLD, 0)
    f.clients[0].deliver_custommsg(f.clients[1], pig(forged))
    co = _coordinator(f, f.chain(), session)
    f.clients[0].deliver_custommsg(f.clients[1], pig(co.proposal()))
    f.clients[0].wait_for_log("not the LSP")
    assert f.lsp.inbox.empty() and status(f.clients[0])[0]["sales_cosigned"] == 0


def test_a_co_signer_restarting_mid_sale_keeps_its_promise_and_completes_it(
    network_factory: Callable[..., Network],
) -> None:
    """Between its sale signature and the LSP's SALE_SIG a co-signer restarts: the sale it
    recorded (with the signed burn) is still there, and a SALE_SIG sent again completes it."""
    f = _funded(network_factory)
    session = bytes([5]) * 32
    _offer(f, session)
    co = _completed(f, f.chain(), session)
    sale_sigs = _run_until_sale_psigs(f, co)
    f.clients[1].restart()
    f.net.connect(f.lsp.node, f.clients[1])
    assert [s["complete"] for s in status(f.clients[0])[0]["sales"]] == [False]
    assert status(f.clients[1])[0]["sales_cosigned"] == 1
    for i, step in sale_sigs.items():
        f.lsp.send(i, step)
    for _ in range(2):
        _, done = f.lsp.expect(protocol.SaleStep)
        assert isinstance(done, protocol.SaleStep) and done.kind is protocol.SaleStepKind.DONE
    assert [s["complete"] for s in status(f.clients[0])[0]["sales"]] == [True]
