"""Against a real lightningd: running it as an LSP (issue 18).

`lightning-cli setconfig` changes a dynamic option, the plugin checks it as at start and the next
factory uses it; a bad value is refused with the reason and changes nothing; a static option is
refused by lightningd. The Prometheus endpoint is scraped while a factory is created. A second
plugin on the LSP subscribes to our custom notifications and logs what it receives.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from real_node import PLUGIN, cli, lsp_and_clients, open_factory, require_lightningd, write_plugin

require_lightningd()

from pyln.client import RpcError  # noqa: E402
from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402

LISTENER = """
import json
from pyln.client import Plugin

plugin = Plugin()
TOPICS = ["superscalar_factory_created", "superscalar_factory_funded"]


def make(topic):
    def handler(plugin, **kwargs):
        plugin.log("heard " + topic + " " + json.dumps(kwargs, sort_keys=True))
    plugin.add_subscription(topic, handler)


for t in TOPICS:
    make(t)
plugin.run()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_setconfig_changes_a_setting_and_it_acts(node_factory: Any) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2)
    answer = cli(lsp, "setconfig", "superscalar-feerate", "4")
    assert answer["config"]["config"] == "superscalar-feerate"
    assert answer["config"]["value_int"] == 4
    listed = lsp.rpc.listconfigs("superscalar-feerate")["configs"]["superscalar-feerate"]
    assert listed["value_int"] == 4 and listed["dynamic"] is True
    try:
        cli(lsp, "setconfig", "superscalar-arity", "2,x")
        raise AssertionError("a bad arity was accepted")
    except Exception as e:  # lightning-cli exits non-zero with the plugin's error
        assert "arity" in str(getattr(e, "stdout", "")) + str(getattr(e, "stderr", ""))
    assert (
        lsp.rpc.listconfigs("superscalar-arity")["configs"]["superscalar-arity"]["value_str"] == "2"
    )
    try:
        lsp.rpc.setconfig("superscalar-exit-margin", 20)
        raise AssertionError("a static option was changed")
    except RpcError as e:
        assert "dynamic" in str(e) or "exit-margin" in str(e)
    created = open_factory(lsp, clients)
    assert created["params"]["fee_rate_kvb"] == 4000  # the new rate, in the next factory


def test_metrics_are_scraped_while_creating_and_a_second_plugin_hears_the_events(
    node_factory: Any, tmp_path: Path
) -> None:
    port = _free_port()
    listener = write_plugin(tmp_path, "listener.py", LISTENER)
    lsp, clients = lsp_and_clients(
        node_factory,
        2,
        lsp_options={
            "superscalar-metrics-port": port,
            "plugin": [PLUGIN, listener],
        },
    )
    wait_for(lambda: lsp.daemon.is_in_log(f"metrics endpoint listening on 127.0.0.1:{port}"))
    scrapes: list[str] = []
    stop = threading.Event()

    def scrape_on() -> None:
        while not stop.is_set():
            scrapes.append(_scrape(port))
            time.sleep(0.2)

    scraper = threading.Thread(target=scrape_on, daemon=True)
    scraper.start()
    try:
        created = open_factory(lsp, clients)
    finally:
        stop.set()
        scraper.join(timeout=10)
    instance = created["instance"]
    assert scrapes and all("superscalar_factories" in s for s in scrapes)
    after = _scrape(port)
    assert f'superscalar_factory_clients_inside{{instance="{instance}"}} 2.0' in after
    assert 'superscalar_factories{phase="active",role="lsp"} 1.0' in after
    assert 'superscalar_creation_phase_seconds_count{phase="sign"} 1.0' in after
    as_json = lsp.rpc.call("factory-metrics")
    names = {m["name"] for m in as_json["metrics"]}
    assert "superscalar_factory_stock_sat" in names
    line = lsp.daemon.wait_for_log(r"heard superscalar_factory_created .*" + instance)
    heard = json.loads(line.split("heard superscalar_factory_created ", 1)[1])
    body = heard["superscalar_factory_created"]
    assert heard["origin"] == "superscalar" and body["instance"] == instance
    assert body["funding_txid"] == created["funding"]["txid"] and "sign" in body["timings"]
    lsp.bitcoin.generate_block(1)
    lsp.daemon.wait_for_log(r"heard superscalar_factory_funded .*" + instance)
    report = lsp.rpc.call("factory-report")
    [f] = report["factories"]
    assert f["clients_inside"] == 2 and all(c["exit_vbytes"] > 0 for c in f["clients"])
