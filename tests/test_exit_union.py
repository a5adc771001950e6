"""One factory, several exits: a later reason to exit another client's path (a second
`factory-exit <client>`, an offered HTLC near its deadline on another channel) adds that path to
the running exit instead of being ignored (issue 9, item 12). Through the real plugin process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from test_plugin_harness import SMALL, _create, _mine_until, _setup, _wait

from harness.network import Network
from harness.node import FakeNode


def _view(node: FakeNode, instance: str) -> dict[str, Any]:
    return dict(node.rpc_call("factory-status", {"instance": instance})["factories"][0])


def test_a_second_factory_exit_adds_that_clients_path(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=4)
    instance = _create(lsp, clients, **SMALL)["instance"]
    net.mine(1)
    _wait(lambda: _view(lsp, instance)["funding"]["confirmations"] == 1)
    first = lsp.rpc_call("factory-exit", {"instance": instance, "client": clients[0].node_id})
    assert first["exit"]["clients"] == [0]
    second = lsp.rpc_call("factory-exit", {"instance": instance, "client": clients[2].node_id})
    assert second["exit"]["clients"] == [0, 2]
    # 0 kickoff -> 1 state -> 2 kickoff -> leaves 3 (clients 0, 1) and 4 (clients 2, 3)
    assert {t["node"] for t in second["exit"]["txs"]} == {0, 1, 2, 3, 4}
    _mine_until(net, lambda: _view(lsp, instance)["exit"]["done"])
    txs = {t["node"]: t["status"] for t in _view(lsp, instance)["exit"]["txs"]}
    assert txs == dict.fromkeys(range(5), "confirmed")
    # The same client again changes nothing.
    again = lsp.rpc_call("factory-exit", {"instance": instance, "client": clients[2].node_id})
    assert again["exit"]["clients"] == [0, 2] and again["exit"]["done"]
