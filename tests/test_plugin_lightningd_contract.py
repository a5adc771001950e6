"""The plugin keeps lightningd's contract (what the first run on a real lightningd v26.06.6 broke):
it starts as lightningd starts it, nothing another user of the node does can kill it, it logs each
line once, and it shuts down without a failure line.

Each test runs the installed `superscalar` executable through the harness (tests/harness), which
starts it as lightningd does: `--developer` in developer mode, LIGHTNINGD_PLUGIN=1.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode


def _pair(net: Network) -> tuple[FakeNode, FakeNode]:
    lsp = net.add_node("lsp")
    client = net.add_node("client", options={"superscalar-accept-from": lsp.node_id})
    return lsp, client


def test_it_starts_with_and_without_developer_mode(network_factory: Callable[..., Network]) -> None:
    for developer in (True, False):
        net = network_factory(plugin=SUPERSCALAR_PLUGIN, developer=developer)
        node = net.add_node("n")
        assert node.plugin_state == "running"
        assert ("--developer" in node.process.cmd) == developer  # type: ignore[union-attr]
        node.wait_for_log(r"superscalar ready")


def test_hooks_are_registered_only_for_what_the_plugin_handles(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    node = net.add_node("n")
    assert node.hooks["rpc_command"]["filters"] == ["invoice"]
    assert node.hooks["custommsg"]["filters"] == [32800]


def test_an_operator_connecting_by_ip_leaves_the_plugin_running(
    network_factory: Callable[..., Network],
) -> None:
    """`lightning-cli connect <id> 127.0.0.1 <port>`: the raw token 127.0.0.1 is not JSON."""
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    lsp, client = _pair(net)
    lsp.cli("connect", client.node_id, "127.0.0.1", str(client.port))
    assert lsp.rpc_call("factory-list")["factories"] == []
    assert lsp.plugin_running and client.plugin_running


def test_an_unreadable_invoice_call_is_answered_and_logged_once(
    network_factory: Callable[..., Network],
) -> None:
    """An `invoice` whose label is a raw token (1.2.3) does reach the hook: the plugin answers
    `continue`, stays up, and says so once a minute at most however often it happens."""
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    node = net.add_node("n")
    node.wait_for_log(r"superscalar ready")
    for _ in range(5):
        try:
            node.cli("invoice", "1000", "1.2.3", "desc")
        except Exception as e:  # lightningd's own refusal of the raw token, after the hook
            assert "label: should be a string or number: invalid token '1.2.3'" in str(e)
    assert node.plugin_running
    assert len([x for x in node.logs if "unreadable rpc_command" in x.message]) == 1
    assert node.rpc_call("factory-list")["factories"] == []


def test_each_log_line_appears_once(network_factory: Callable[..., Network]) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    node = net.add_node("n")
    node.wait_for_log(r"superscalar ready")
    ready = [x for x in node.logs if x.source == "plugin" and "superscalar ready" in x.message]
    assert len(ready) == 1 and ready[0].level == "info"


def test_shutdown_is_clean_while_blocks_arrive(network_factory: Callable[..., Network]) -> None:
    """lightningd's `shutdown` notification, with block jobs queued: the plugin exits by itself
    (code 0), and no job logs a failure against the closing RPC."""
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    lsp, client = _pair(net)
    net.connect(lsp, client)
    lsp.wait_for_log(r"superscalar ready")
    net.mine(5)
    assert "shutdown" in lsp.subscriptions
    assert lsp.stop() == 0
    bad = [x for x in lsp.logs if x.level in ("broken", "error", "unusual")]
    assert bad == []


def test_a_flood_of_malformed_messages_logs_one_line_per_peer(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN)
    lsp, client = _pair(net)
    net.connect(lsp, client)
    lsp.wait_for_log(r"superscalar ready")
    for i in range(40):
        client.rpc_call("sendcustommsg", {"node_id": lsp.node_id, "msg": "8020" + "ff" * (i + 1)})
    client.rpc_call("sendcustommsg", {"node_id": lsp.node_id, "msg": "8020"})
    time.sleep(1.5)  # the worker drains the queue
    lines = [x for x in lsp.logs if x.source == "plugin" and client.node_id in x.message]
    assert len(lines) == 1, lines
    assert lsp.plugin_running and lsp.rpc_call("factory-list")["factories"] == []


def _readme_start_lines() -> list[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Running it on your Core Lightning", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("lightningd ")]


def test_the_operators_start_lines_in_the_readme_work_as_written(
    network_factory: Callable[..., Network],
) -> None:
    """The README's `lightningd --plugin=...` lines, with its placeholders filled in: the plugin
    path names the installed executable, and every option it passes is one the plugin declares
    (the harness refuses unknown options as lightningd does)."""
    root = Path(__file__).resolve().parent.parent
    lines = _readme_start_lines()
    assert len(lines) == 2
    net = network_factory(developer=False)  # an operator's node
    lsp_id = ""
    for n, line in enumerate(lines):
        line = line.replace("/path/to/superscalar", str(root)).replace("<LSP node id>", lsp_id)
        args = shlex.split(line)[1:]
        plugin = [a.split("=", 1)[1] for a in args if a.startswith("--plugin=")]
        assert plugin == SUPERSCALAR_PLUGIN  # the executable the harness and real tests run
        options = dict(a[2:].split("=", 1) for a in args if not a.startswith("--plugin="))
        node = net.add_node(f"n{n}", plugin=plugin, options=options)
        node.wait_for_log(r"superscalar ready")
        lsp_id = lsp_id or node.node_id
