"""Chain watching through the real plugin process (tests/harness): reorgs and backend errors.

The plugin tracks the chain by block hash: a failed `getrawblockbyheight` is retried (never
skipped), a replaced block is rescanned, confirmations at or above a fork are rolled back, and an
exit whose tx was reorged out broadcasts it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from test_plugin_harness import SMALL, _create, _mine_until, _setup, _status, _wait

from harness.lightningd_rpcs import HANDLERS, RpcFail
from harness.network import Network
from harness.node import FakeNode


def _factory(
    network_factory: Callable[..., Network],
) -> tuple[Network, FakeNode, list[FakeNode], str]:
    net, lsp, clients = _setup(network_factory, n=2)
    instance = _create(lsp, clients, **SMALL)["instance"]
    net.mine(1)
    _wait(lambda: _status(lsp)[0]["funding"]["confirmations"] == 1)
    return net, lsp, clients, instance


def _exit_status(node: FakeNode, instance: str) -> dict[str, Any]:
    return dict(node.rpc_call("factory-status", {"instance": instance})["factories"][0])


def _funding_confirmations(node: FakeNode, instance: str) -> int:
    view = _exit_status(node, instance)
    if view["role"] == "client":
        return int(view["funding_confirmations"])
    return int(view["funding"]["confirmations"])


def test_a_tree_tx_reorged_out_is_broadcast_again_and_the_exit_completes(
    network_factory: Callable[..., Network],
) -> None:
    net, _lsp, clients, instance = _factory(network_factory)
    me = clients[0]
    started = me.rpc_call("factory-exit", {"instance": instance}, timeout=30)
    kickoff = started["exit"]["txs"][0]["txid"]
    _mine_until(net, lambda: net.chain.confirmations(kickoff) >= 1)
    _wait(lambda: _exit_status(me, instance)["exit"]["txs"][0]["status"] == "confirmed")
    # The kickoff's block is replaced by a branch without it (a conflict won there).
    net.reorg(1, drop={kickoff})
    assert kickoff not in net.chain.txs
    _wait(lambda: kickoff in net.chain.mempool, timeout=10)  # sent again, at once
    _mine_until(net, lambda: _exit_status(me, instance)["exit"]["done"])
    txs = {t["kind"]: t for t in _exit_status(me, instance)["exit"]["txs"]}
    assert txs["kickoff"]["height"] == net.chain.txs[kickoff].height  # the new branch's height


def test_a_moved_confirmation_is_rolled_back_and_found_at_its_new_height(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients, instance = _factory(network_factory)
    funding = _status(lsp)[0]["funding"]["txid"]
    first = net.chain.txs[funding].height
    net.reorg(1, new_blocks=0)  # the funding back in the mempool, the tip one lower
    net.chain.mempool.remove(funding)  # kept out of the replacement block...
    net.mine(1)
    net.chain.mempool.append(funding)  # ...and mined in the next one
    net.mine(1)
    assert net.chain.txs[funding].height == first + 1
    for node in (lsp, clients[0]):
        _wait(lambda n=node: _funding_confirmations(n, instance) == 1)


def test_a_failed_block_fetch_is_retried_not_skipped(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    instance = _create(lsp, clients, **SMALL)["instance"]
    failing = {"on": True}

    def flaky(me: FakeNode, p: dict[str, Any]) -> Any:
        if failing["on"]:
            raise RpcFail(-32603, "bitcoind: connection refused")
        return HANDLERS["getrawblockbyheight"](me, p)

    for node in (lsp, *clients):
        node.overrides["getrawblockbyheight"] = flaky
    net.mine(1)  # the funding confirms in a block nobody can fetch yet
    time.sleep(1.0)
    assert _status(lsp)[0]["funding"]["confirmations"] == 0
    failing["on"] = False
    net.mine(1)  # the next block: the missed one is fetched again, the funding found in it
    _wait(lambda: _status(lsp)[0]["funding"]["confirmations"] == 2)
    assert _funding_confirmations(clients[0], instance) == 2
