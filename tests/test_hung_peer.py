"""A client whose `fundchannel_start` never returns must not hold the LSP: the creation aborts
after the ceremony timeout naming that client, its inputs are freed, and the LSP's worker is free
for the next factory while the hung call is still out. Real plugin process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_plugin_harness import SMALL, _create, _reserved, _setup

from harness.errors import RpcCallError
from harness.lightningd_rpcs import HANDLERS
from harness.network import Network
from harness.node import FakeNode


def test_a_hung_fundchannel_start_aborts_the_creation_naming_the_client(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=4, timeout=3)
    stuck, release = clients[1].node_id, threading.Event()

    def never_answers(me: FakeNode, p: dict[str, Any]) -> Any:
        if p.get("id") == stuck:
            release.wait(120)
        return HANDLERS["fundchannel_start"](me, p)

    lsp.overrides["fundchannel_start"] = never_answers
    try:
        t0 = time.monotonic()
        with pytest.raises(RpcCallError, match=rf"client {stuck}: fundchannel_start did not"):
            _create(lsp, clients[:2], **SMALL)
        assert time.monotonic() - t0 < 20
        assert not _reserved(lsp)
        # the worker is free: another factory is created while the hung call is still out
        created = _create(lsp, clients[2:], **SMALL)
        assert created["state"] == "funded" and not release.is_set()
    finally:
        release.set()
    net.take_errors()
