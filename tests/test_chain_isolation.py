"""No peer may delay another factory's safety duties (issue 9, item 9): a client that never
answers `fundchannel_start` hangs the LSP's creation of its factory, and meanwhile another
factory's exit is still requested, published and driven block by block. Real plugin process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from test_plugin_harness import SMALL, _create, _mine_until, _setup, _wait

from harness.lightningd_rpcs import HANDLERS
from harness.network import Network
from harness.node import FakeNode


def _view(node: FakeNode, instance: str) -> dict[str, Any]:
    return dict(node.rpc_call("factory-status", {"instance": instance})["factories"][0])


def test_a_hung_fundchannel_start_does_not_delay_another_factorys_exit(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=4)
    instance = _create(lsp, clients[:2], **SMALL)["instance"]
    net.mine(1)
    _wait(lambda: _view(lsp, instance)["funding"]["confirmations"] == 1)

    stuck, hanging, release = clients[3].node_id, threading.Event(), threading.Event()

    def never_answers(me: FakeNode, p: dict[str, Any]) -> Any:
        if p.get("id") == stuck:
            hanging.set()
            release.wait(120)
        return HANDLERS["fundchannel_start"](me, p)

    lsp.overrides["fundchannel_start"] = never_answers
    creation = threading.Thread(
        target=lambda: _swallow(lambda: _create(lsp, clients[2:], **SMALL)), daemon=True
    )
    creation.start()
    try:
        assert hanging.wait(30), "the second creation never reached fundchannel_start"
        started = lsp.rpc_call("factory-exit", {"instance": instance}, timeout=10)
        kickoff = started["exit"]["txs"][0]["txid"]
        assert kickoff in net.chain.mempool
        _mine_until(net, lambda: _view(lsp, instance)["exit"]["done"])
        assert hanging.is_set() and not release.is_set()  # all of it while the peer hung
    finally:
        release.set()
        creation.join(60)
    net.take_errors()


def _swallow(call: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):  # the hung creation's outcome is not what is tested
        call()
