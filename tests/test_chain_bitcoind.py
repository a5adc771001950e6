"""The plugin's chain watching (`OnChain`) against a real regtest bitcoind, through a stand-in for
the lightningd RPCs it uses: `getrawblockbyheight` as bcli answers it, the datastore in memory.
A real reorg with `invalidateblock`: the confirmation is rolled back and found again where the
tx confirms on the new branch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from test_onchain_triggers import _lsp

from superscalar_plugin.chain.bitcoind import BitcoindProcess
from superscalar_plugin.engine import store
from superscalar_plugin.plugin.lightningd.records import Records
from superscalar_plugin.plugin.onchain.duties import OnChain


class LightningdOverBitcoind:
    """The lightningd RPCs chain watching calls, answered from a real bitcoind."""

    def __init__(self, node: BitcoindProcess) -> None:
        self.node = node
        self.datastore: dict[tuple[str, ...], str] = {}
        self.fail_blocks = False  # the backend is down: getrawblockbyheight fails

    def call(self, method: str, p: dict[str, Any] | None = None) -> Any:
        p = p or {}
        if method == "getrawblockbyheight":
            if self.fail_blocks:
                raise RuntimeError("bitcoind: connection refused")
            blockhash = self.node.rpc.call("getblockhash", p["height"])
            return {"blockhash": blockhash, "block": self.node.rpc.call("getblock", blockhash, 0)}
        if method == "datastore":
            self.datastore[tuple(p["key"])] = p["string"]
            return {}
        if method == "listdatastore":
            key = tuple(p["key"])
            return {
                "datastore": [
                    {"key": list(k), "string": v}
                    for k, v in self.datastore.items()
                    if k[: len(key)] == key
                ]
            }
        if method == "listpeerchannels":
            return {"channels": []}
        raise AssertionError(f"unexpected RPC {method}")


def _watcher(bitcoind: BitcoindProcess) -> tuple[OnChain, Records, LightningdOverBitcoind]:
    rpc = LightningdOverBitcoind(bitcoind)
    node = SimpleNamespace(
        rpc=rpc,
        height=bitcoind.height(),
        config=SimpleNamespace(exit_margin=12),
        channels=lambda: {},
    )
    records = Records(rpc)
    return OnChain(node, records), records, rpc  # type: ignore[arg-type]


def _confirmed_at(records: Records, instance: str, txid: str) -> int | None:
    record = records.get(instance)
    assert record is not None
    return dict(record.confirmed).get(txid)


def test_invalidateblock_rolls_back_and_the_new_branch_is_scanned(
    bitcoind: BitcoindProcess,
) -> None:
    bitcoind.mine(101)
    oc, records, rpc = _watcher(bitcoind)
    txid = bitcoind.wallet.call("sendtoaddress", bitcoind.new_address(), 0.1)
    record = _lsp(("c1", "c2"))
    records.persist(record.replace(funding_txid=txid, funding_vout=0, timeout_height=100_000))
    instance = record.instance_id
    oc.on_block(bitcoind.height())  # scanned up to here, the tx still in the mempool
    bitcoind.mine(1)
    first = bitcoind.height()
    oc.on_block(first)
    assert _confirmed_at(records, instance, txid) == first
    # Replace that block by one without the tx (held back by a huge negative fee delta).
    bitcoind.rpc.call("invalidateblock", bitcoind.rpc.call("getblockhash", first))
    bitcoind.rpc.call("prioritisetransaction", txid, 0, -(10**8))
    bitcoind.mine(1)
    assert bitcoind.height() == first
    oc.on_block(first)  # lightningd announces the new block at the same height
    assert _confirmed_at(records, instance, txid) is None
    bitcoind.rpc.call("prioritisetransaction", txid, 0, 10**8)
    bitcoind.mine(1)
    oc.on_block(first + 1)
    assert _confirmed_at(records, instance, txid) == first + 1
    # After a restart, the stored hashes still find a fork below the scanned height.
    oc2 = OnChain(oc._node, records)
    bitcoind.rpc.call("invalidateblock", bitcoind.rpc.call("getblockhash", first + 1))
    bitcoind.rpc.call("prioritisetransaction", txid, 0, -(10**8))
    bitcoind.mine(2)
    oc2.on_block(first + 2)
    assert _confirmed_at(records, instance, txid) is None
    # A backend error: nothing advances, nothing is skipped.
    bitcoind.rpc.call("prioritisetransaction", txid, 0, 10**8)
    bitcoind.mine(1)
    rpc.fail_blocks = True
    oc2.on_block(first + 3)
    assert oc2.scanned == first + 2
    rpc.fail_blocks = False
    bitcoind.mine(1)
    oc2.on_block(first + 4)
    assert oc2.scanned == first + 4
    assert _confirmed_at(records, instance, txid) == first + 3
    assert isinstance(records.get(instance), store.LspRecord)
