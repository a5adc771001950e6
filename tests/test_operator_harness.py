"""Running it as an LSP, with the real plugin process in the fake lightningd (tests/harness):
live settings through `setconfig`, the Prometheus endpoint, custom notifications, the reports,
and every factory-* result checked against its schema in doc/schemas."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from test_plugin_harness import SMALL, _create, _wait

from superscalar_plugin.plugin.operator import events

from harness.errors import RpcCallError
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode
from rpc_schemas import SCHEMA_DIR, check_result, result_errors, schema


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(
    network_factory: Callable[..., Network], n: int = 2, **lsp_options: Any
) -> tuple[Network, FakeNode, list[FakeNode]]:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN, timeout=60)
    lsp = net.add_node("lsp", options=lsp_options)
    clients = [
        net.add_node(f"client{i}", options={"superscalar-accept-from": lsp.node_id})
        for i in range(n)
    ]
    for c in clients:
        net.connect(lsp, c)
    return net, lsp, clients


def _option(lsp: FakeNode, name: str) -> Any:
    entry = lsp.rpc_call("listconfigs", {"config": name})["configs"][name]
    return entry.get("value_int", entry.get("value_str"))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == want:
            return float(value)
    return None


def test_the_manifest_declares_dynamic_options_and_the_event_topics(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, _ = _setup(network_factory, n=0)
    assert lsp.manifest is not None and lsp.manifest["dynamic"] is False  # feature bit 271
    options = {o["name"]: o for o in lsp.manifest["options"]}
    for name in ("superscalar-sale-fee-ppm", "superscalar-feerate", "superscalar-arity"):
        assert options[name]["dynamic"] is True, name
        assert "(dynamic: setconfig)" in options[name]["description"]
    for name in ("superscalar-accept-from", "superscalar-metrics-port", "superscalar-exit-margin"):
        assert options[name]["dynamic"] is False, name
        assert "(static: " in options[name]["description"]
    topics = {n["method"] for n in lsp.manifest["notifications"]}
    assert topics == set(events.TOPICS)


def test_setconfig_changes_a_setting_checks_it_and_it_acts(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, clients = _setup(network_factory)
    assert _option(lsp, "superscalar-feerate") == 2
    answer = lsp.rpc_call("setconfig", {"config": "superscalar-feerate", "val": 5})
    assert answer["config"]["value_int"] == 5 and answer["config"]["dynamic"] is True
    assert _option(lsp, "superscalar-feerate") == 5
    # A bad value changes nothing and says what was wrong.
    for name, val, why in [
        ("superscalar-feerate", 0, "feerate"),
        ("superscalar-arity", "2,x", "arity"),
        ("superscalar-min-feerate", 60, "above superscalar-max-feerate"),
        ("superscalar-clients-per-leaf", 0, "clients_per_leaf"),
    ]:
        with pytest.raises(RpcCallError) as e:
            lsp.rpc_call("setconfig", {"config": name, "val": val})
        assert why in e.value.message and name in e.value.message, e.value.message
    assert _option(lsp, "superscalar-feerate") == 5
    with pytest.raises(RpcCallError, match="not a dynamic"):
        lsp.rpc_call("setconfig", {"config": "superscalar-exit-margin", "val": 20})
    # It acts: the next factory's transactions pay the new fee rate.
    created = _create(lsp, clients, **SMALL)
    assert created["params"]["fee_rate_kvb"] == 5000
    lsp.rpc_call("setconfig", {"config": "superscalar-sale-fee-ppm", "val": "12345"})
    assert _option(lsp, "superscalar-sale-fee-ppm") == 12345
    assert lsp.is_in_log(r"superscalar-sale-fee-ppm set to 12345")


def test_metrics_endpoint_and_rpc_show_the_same_figures_as_a_factory_is_created(
    network_factory: Callable[..., Network],
) -> None:
    port = _free_port()
    _net, lsp, clients = _setup(network_factory, **{"superscalar-metrics-port": port})
    lsp.wait_for_log(rf"metrics endpoint listening on 127.0.0.1:{port}")
    before = _scrape(port)
    assert _sample(before, "superscalar_exits_in_flight", role="lsp") == 0
    assert "# TYPE superscalar_creation_phase_seconds histogram" in before
    created = _create(lsp, clients, **SMALL)
    instance = created["instance"]
    text = _scrape(port)
    assert _sample(text, "superscalar_factories", role="lsp", phase="active") == 1
    assert _sample(text, "superscalar_factory_clients_inside", instance=instance) == 2
    assert _sample(text, "superscalar_factory_channel_sat", instance=instance) == 200_000
    stock = created["params"]["stock_sat"]
    assert _sample(text, "superscalar_factory_stock_sat", instance=instance) == stock
    assert _sample(text, "superscalar_creation_phase_seconds_count", phase="sign") == 1
    assert _sample(text, "superscalar_sales_total", kind="factory") == 0
    assert _sample(text, "superscalar_peers_rate_limited") == 0
    as_json = lsp.rpc_call("factory-metrics")
    check_result("factory-metrics", as_json)
    by_name = {m["name"]: m for m in as_json["metrics"]}
    [inside] = by_name["superscalar_factory_clients_inside"]["samples"]
    assert inside["labels"] == {"instance": instance} and inside["value"] == 2


def test_the_endpoint_is_off_by_default(network_factory: Callable[..., Network]) -> None:
    _net, lsp, _ = _setup(network_factory, n=0)
    lsp.rpc_call("factory-metrics")
    assert not lsp.is_in_log(r"metrics endpoint listening")


def test_notifications_follow_a_factory_from_creation_to_its_funding(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory)
    created = _create(lsp, clients, **SMALL)
    _wait(lambda: any(t == events.FACTORY_CREATED for t, _ in lsp.plugin_notifications))
    [params] = [p for t, p in lsp.plugin_notifications if t == events.FACTORY_CREATED]
    body = params[events.FACTORY_CREATED]
    assert body["instance"] == created["instance"]
    assert body["funding_txid"] == created["funding"]["txid"]
    assert sorted(body["clients"]) == sorted(c.node_id for c in clients)
    assert set(body["timings"]) == set(created["timings"])
    net.mine(1)
    for node, role in [(lsp, "lsp"), (clients[0], "client")]:
        _wait(lambda n=node: any(t == events.FACTORY_FUNDED for t, _ in n.plugin_notifications))
        [funded] = [p for t, p in node.plugin_notifications if t == events.FACTORY_FUNDED]
        assert funded[events.FACTORY_FUNDED]["role"] == role
        assert funded[events.FACTORY_FUNDED]["height"] == net.blockheight


def test_report_shows_deadlines_exit_costs_and_the_reserve_as_fees_rise(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory)
    created = _create(lsp, clients, **SMALL)
    net.mine(1)
    report = lsp.rpc_call("factory-report")
    check_result("factory-report", report)
    [f] = report["factories"]
    assert f["instance"] == created["instance"] and f["clients_inside"] == 2
    assert f["blocks_to_timeout"] == created["timeout_height"] - net.blockheight
    assert f["blocks_to_dying"] == f["blocks_to_timeout"] - 432
    assert [s["stock_left_sat"] for s in f["stock"]] == [created["params"]["stock_sat"]]
    c0 = f["clients"][0]
    assert c0["exit_vbytes"] > 100 and c0["exit_txs"] == 2  # kickoff + leaf
    assert c0["exit_cost_sat"] == -(-c0["exit_vbytes"] * report["feerate_perkb"] // 1000)
    assert report["reserve"]["needed_sat"] > 0 and report["reserve"]["wallet_sat"] > 0
    assert report["retired_channels"] == {"count": 0, "from_factories": 0}
    # The client sees its own exit cost against its own balance.
    [mine] = clients[0].rpc_call("factory-report")["factories"]
    assert mine["role"] == "client" and mine["exit_vbytes"] == c0["exit_vbytes"]
    check_result("factory-report", clients[0].rpc_call("factory-report"))
    with pytest.raises(RpcCallError, match="instance"):
        lsp.rpc_call("factory-report", {"instance": "00" * 32})


def test_every_factory_result_matches_its_schema(network_factory: Callable[..., Network]) -> None:
    _net, lsp, clients = _setup(network_factory)
    created = _create(lsp, clients, **SMALL)
    check_result("factory-create", created)
    check_result("factory-status", lsp.rpc_call("factory-status"))
    check_result("factory-status", clients[0].rpc_call("factory-status"))
    check_result("factory-list", lsp.rpc_call("factory-list"))
    check_result("factory-list", clients[1].rpc_call("factory-list"))
    check_result("factory-metrics", clients[1].rpc_call("factory-metrics"))


def test_each_command_has_a_schema_and_its_help_names_every_parameter(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, _ = _setup(network_factory, n=0)
    assert lsp.manifest is not None
    ours = {m["name"]: m for m in lsp.manifest["rpcmethods"] if m["name"].startswith("factory-")}
    documented = {p.stem for p in SCHEMA_DIR.glob("factory-*.json")}
    assert set(ours) == documented
    for name, method in ours.items():
        doc = schema(name)
        assert doc["rpc"] == name and doc["request"]["additionalProperties"] is False
        # pyln puts the docstring after the parameters: `lightning-cli help` shows both.
        params_part, _, text = method["usage"].partition(" \n ")
        usage = params_part.replace("[", " ").replace("]", " ").split()
        params = list(doc["request"]["properties"])
        assert usage == params, f"{name}: usage {usage} vs schema {params}"
        required = [p for p in params_part.split() if not p.startswith("[")]
        assert required == doc["request"]["required"], name
        for p in params:  # the help text names every parameter
            assert "{" + p + "}" in text, (name, p)
        assert text.split() and text.split() == method["description"].split(), name


def test_a_result_that_breaks_its_schema_is_caught() -> None:
    assert result_errors("factory-list", {"factories": [{"instance": "zz"}]})
    assert result_errors("factory-metrics", {"blockheight": 1, "metrics": [], "extra": 1})
    assert not result_errors("factory-metrics", {"blockheight": 1, "metrics": []})
