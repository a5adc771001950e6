"""Exits get in when fees rise (issue 9, item 7): a client demands a floor on the tree's fee
rate (`superscalar-min-feerate`). Through the real plugin process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_plugin_harness import PLUGIN, SMALL, _create

from harness.errors import RpcCallError
from harness.network import Network


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
