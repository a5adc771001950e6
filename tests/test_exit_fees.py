"""Exits get in when fees rise (issue 9, item 7): a client demands a floor on the tree's fee
rate (`superscalar-min-feerate`). Through the real plugin process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from test_plugin_harness import PLUGIN, SMALL, _create, _setup, _status, _wait

from harness.errors import RpcCallError
from harness.lightningd_rpcs import HANDLERS
from harness.network import Network
from harness.node import FakeNode


def test_a_client_refuses_a_tree_fee_rate_below_its_floor(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=PLUGIN, timeout=60)
    lsp = net.add_node("lsp", options={"superscalar-ceremony-timeout": 8})
    picky = net.add_node(
        "picky",
        options={"superscalar-accept-from": lsp.node_id, "superscalar-min-feerate": 5},
    )
    other = net.add_node("other", options={"superscalar-accept-from": lsp.node_id})
    for c in (picky, other):
        net.connect(lsp, c)
    with pytest.raises(RpcCallError) as refused:
        _create(lsp, [picky, other], feerate=2, **SMALL)
    assert picky.node_id in refused.value.message
    assert "below our floor of 5000 sat/kvB" in refused.value.message
    created = _create(lsp, [picky, other], feerate=5, **SMALL)  # at the floor: accepted
    assert created["funding"]["confirmations"] == 0


def test_without_a_reachable_bitcoind_a_fee_refusal_is_logged_once_and_retried(
    network_factory: Callable[..., Network],
) -> None:
    """The mempool refuses a tree tx for its fee and the node's bitcoind cannot be reached for a
    package: said once in the log, the tx sent again at every block until it gets in."""
    net, lsp, clients = _setup(network_factory, n=2)
    instance = _create(lsp, clients, **SMALL)["instance"]
    net.mine(1)
    _wait(lambda: _status(lsp)[0]["funding"]["confirmations"] == 1)
    me, refusing = clients[0], {"on": True}

    def min_fee(node: FakeNode, p: dict[str, Any]) -> Any:
        if refusing["on"]:
            return {"success": False, "errmsg": "mempool min fee not met, 420 < 2100"}
        return HANDLERS["sendrawtransaction"](node, p)

    me.overrides["sendrawtransaction"] = min_fee
    started = me.rpc_call("factory-exit", {"instance": instance}, timeout=30)
    kickoff = started["exit"]["txs"][0]
    assert kickoff["status"] == "waiting"  # refused: not counted as broadcast
    me.wait_for_log("package relay unavailable")
    net.mine(2)
    time.sleep(1)
    told = [line for line in me.logs if "package relay unavailable" in line.message]
    assert len(told) == 1 and told[0].level == "warn"
    refusing["on"] = False
    net.mine(1)
    _wait(lambda: kickoff["txid"] in net.chain.mempool)
