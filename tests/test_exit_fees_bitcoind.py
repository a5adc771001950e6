"""Exits get in when fees rise (issue 9, item 7), on a real regtest bitcoind: the plugin's own
`OnChain` drives a client's exit through a stand-in for the lightningd RPCs it uses (chain, wallet,
broadcast), answered by bitcoind and its wallet.

Mid-exit the fee market rises: blocks take nothing under 20 sat/vB while lightningd's estimate
is first 6 sat/vB then 25: the stuck tx is bumped, then bumped again (the child replaced). Then
bitcoind restarts with a minimum relay fee (5 sat/vB) above the tree's 2 sat/vB: the next tree tx
cannot enter alone and goes in as a package through `submitpackage`."""

from __future__ import annotations

from typing import Any

from test_chain_bitcoind import LightningdOverBitcoind
from test_exit_bitcoind import PARAMS, _signed_factory

from superscalar_plugin.chain.bitcoind import BitcoindProcess, BitcoindRPCError
from superscalar_plugin.engine import store
from superscalar_plugin.engine.tree import Topology
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.node import Node
from superscalar_plugin.plugin.lightningd.records import Records
from superscalar_plugin.plugin.onchain.duties import OnChain

import bitcoind_helpers as bh
from bitcoind_fixture import NodeFactory

BLOCK_MIN = "0.0002"  # 20 sat/vB
RELAY_MIN = "0.00005"  # 5 sat/vB


class LightningdWallet(LightningdOverBitcoind):
    """Adds what exits call: feerates (set by the test), sendrawtransaction, the wallet's
    fundpsbt/signpsbt/sendpsbt/unreserveinputs, and listconfigs naming the bitcoind."""

    def __init__(self, node: BitcoindProcess) -> None:
        super().__init__(node)
        self.market_kvb = 6000
        self.reserved: set[tuple[str, int]] = set()
        self.sent_children: list[str] = []

    def call(self, method: str, p: dict[str, Any] | None = None) -> Any:
        p = p or {}
        handler = getattr(self, "_" + method, None)
        return handler(p) if handler is not None else super().call(method, p)

    def _feerates(self, p: dict[str, Any]) -> Any:
        return {"perkb": {"opening": self.market_kvb, "min_acceptable": 1000}}

    def _sendrawtransaction(self, p: dict[str, Any]) -> Any:
        try:
            self.node.rpc.call("sendrawtransaction", p["tx"])
        except BitcoindRPCError as e:
            return {"success": False, "errmsg": e.message}
        return {"success": True, "errmsg": ""}

    def _listconfigs(self, p: dict[str, Any]) -> Any:
        return {
            "configs": {
                "network": {"value_str": "regtest"},
                "bitcoin-rpcuser": {"value_str": self.node.rpc_user},
                "bitcoin-rpcpassword": {"value_str": self.node.rpc_password},
                "bitcoin-rpcconnect": {"value_str": "127.0.0.1"},
                "bitcoin-rpcport": {"value_int": self.node.rpc_port},
            }
        }

    def _fundpsbt(self, p: dict[str, Any]) -> Any:
        need = int(p["satoshi"]) + 10_000
        coins = [
            u
            for u in self.node.wallet.call("listunspent", 1)
            if bh.sat(u["amount"]) >= need and (u["txid"], u["vout"]) not in self.reserved
        ]
        coin = min(coins, key=lambda u: u["amount"])
        fee = (int(p["startweight"]) + 68 * 4 + 43 * 4) * 253 // 1000 + 1
        change = self.node.wallet.call("getrawchangeaddress", "bech32m")
        amount = bh.sat(coin["amount"]) - int(p["satoshi"]) - fee
        raw = self.node.rpc.call(
            "createpsbt", [{"txid": coin["txid"], "vout": coin["vout"]}], [{change: bh.btc(amount)}]
        )
        psbt = self.node.wallet.call("walletprocesspsbt", raw, False)["psbt"]
        self.reserved.add((coin["txid"], coin["vout"]))
        return {"psbt": psbt, "change_outnum": 0}

    def _unreserveinputs(self, p: dict[str, Any]) -> Any:
        decoded = self.node.rpc.call("decodepsbt", p["psbt"])
        for i in decoded["tx"]["vin"]:
            self.reserved.discard((i["txid"], i["vout"]))
        return {"reservations": []}

    def _signpsbt(self, p: dict[str, Any]) -> Any:
        signed = self.node.wallet.call("walletprocesspsbt", p["psbt"], True, "DEFAULT", True, False)
        return {"signed_psbt": signed["psbt"]}

    def _sendpsbt(self, p: dict[str, Any]) -> Any:
        final = self.node.rpc.call("finalizepsbt", p["psbt"])
        assert final["complete"], final
        txid = self.node.rpc.call("sendrawtransaction", final["hex"])
        self.sent_children.append(txid)
        return {"tx": final["hex"], "txid": txid}


class Tip:
    """What `OnChain` asks of `Node`: the RPC, the height, the config, the channels."""

    def __init__(self, rpc: LightningdWallet, config: Config) -> None:
        self.rpc, self.config = rpc, config

    @property
    def height(self) -> int:
        return self.rpc.node.height()

    def channels(self) -> dict[str, Any]:
        return {}

    # Node's own answers from the RPC, unchanged (lightningd's estimate, broadcasting).
    fee_rate_kvb = Node.fee_rate_kvb
    send_tx = Node.send_tx


def _client_record(f: Any, signed: Any, funding: str, timeout: int) -> store.ClientRecord:
    topo = Topology.build(4, PARAMS)
    path = tuple(
        store.PathEntry(
            n,
            0,
            signed[n].raw().hex(),
            signed[n].unsigned.spent_amount,
            signed[n].unsigned.spent_script.hex(),
        )
        for n in topo.client_path(0)
    )
    key = "02" + "11" * 32
    return store.ClientRecord(
        instance_id="cc" * 32,
        lsp_node_id=key,
        state=store.ClientState.FUNDED,
        client_index=0,
        n_clients=4,
        params=PARAMS,
        timeout_height=timeout,
        lsp_pubkey=key,
        pubkey=key,
        channel_sat=f.channels[0][1],
        early_warning_time=topo.ewt,
        path=path,
        funding_txid=funding,
    )


def _restart(node: BitcoindProcess, factory: NodeFactory, *args: str) -> BitcoindProcess:
    node.stop()
    return factory(datadir=node.datadir, extra_args=list(args))


def _block(oc: OnChain, rpc: LightningdWallet) -> None:
    rpc.node.mine(1)
    oc.on_block(rpc.node.height())


def _exiting_client(
    bitcoind_factory: NodeFactory, label: str, max_exit_fee_sat: int
) -> tuple[Any, LightningdWallet, Records, OnChain, Any]:
    """A funded 4-client factory on a bitcoind whose blocks take only BLOCK_MIN and up, and a
    client that has just started its exit with `max_exit_fee_sat` to spend on bumps."""
    node = bitcoind_factory()
    timeout = node.height() + 2000
    f, _, outpoint, start, signed = _signed_factory(node, 4, label, timeout)
    node.mine(1)
    node = _restart(node, bitcoind_factory, f"-blockmintxfee={BLOCK_MIN}")
    rpc = LightningdWallet(node)
    records = Records(rpc)
    records.persist(_client_record(f, signed, outpoint[0], timeout))
    config = Config(max_exit_fee_sat=max_exit_fee_sat)
    oc = OnChain(Tip(rpc, config), records)  # type: ignore[arg-type]
    oc.scanned = start - 1
    oc.on_block(node.height())
    oc.request_exit("cc" * 32, None)
    return node, rpc, records, oc, signed


def test_an_exit_follows_rising_fees_and_enters_as_a_package(
    bitcoind_factory: NodeFactory,
) -> None:
    node, rpc, records, oc, signed = _exiting_client(bitcoind_factory, "exit-fees", 200_000)
    kickoff = signed[0].txid
    assert kickoff in node.rpc.call("getrawmempool")
    for _ in range(3):  # stuck at 2 sat/vB: bumped to the market's 6, still under the blocks' 20
        _block(oc, rpc)
    assert len(rpc.sent_children) == 1 and kickoff not in dict(records.get("cc" * 32).confirmed)
    rpc.market_kvb = 25_000  # the market rises: bumped again, the child replaced
    _block(oc, rpc)
    assert len(rpc.sent_children) == 2
    exit_state = records.get("cc" * 32).exit
    assert exit_state is not None and dict(exit_state.bump_rates)[kickoff] == 25_000
    _block(oc, rpc)
    assert kickoff in dict(records.get("cc" * 32).confirmed)
    # The minimum relay fee rises above the tree's 2 sat/vB: the rest goes in as packages.
    node = _restart(
        node, bitcoind_factory, f"-blockmintxfee={BLOCK_MIN}", f"-minrelaytxfee={RELAY_MIN}"
    )
    rpc.node = node
    for _ in range(40):
        _block(oc, rpc)
        exit_state = records.get("cc" * 32).exit
        assert exit_state is not None
        if exit_state.done:
            break
    assert exit_state.done, exit_state
    packaged = [t for t, _ in exit_state.bump_fees if t != kickoff]
    assert packaged, "no tree tx went in as a package"
    assert len(rpc.sent_children) == 2  # the later children went through submitpackage
    assert sum(fee for _, fee in exit_state.bump_fees) <= 200_000


def test_bumps_stop_at_the_operators_exit_fee_budget(bitcoind_factory: NodeFactory) -> None:
    _, rpc, records, oc, signed = _exiting_client(bitcoind_factory, "exit-budget", 3000)
    for _ in range(3):
        _block(oc, rpc)
    rpc.market_kvb = 25_000  # would need a child of about 7,700 sat: cut to the budget
    _block(oc, rpc)
    exit_state = records.get("cc" * 32).exit
    assert exit_state is not None
    assert dict(exit_state.bump_fees) == {signed[0].txid: 3000}
    assert len(rpc.sent_children) == 2
    rpc.market_kvb = 50_000  # nothing left: no third child
    _block(oc, rpc)
    assert len(rpc.sent_children) == 2
