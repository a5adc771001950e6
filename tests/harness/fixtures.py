"""pytest fixtures for the harness. Import them into a test module (or conftest.py):

    from harness.fixtures import network, network_factory  # noqa: F401

- `network`: a `Network` in `tmp_path` running the dummy plugin by default (pass a plugin command
  with `network.plugin = [...]` before adding nodes, or per node). At teardown every node is
  stopped, leftover processes are killed, and the test FAILS if findings were recorded and not
  taken (schema violations, plugin deaths, unexpected RPCs, timeouts).
- `network_factory`: `network_factory(plugin=..., timeout=...)` for a network with other settings;
  same teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .network import Network
from .plugin_process import kill_leftovers


def _teardown(nets: list[Network]) -> None:
    findings: list[str] = []
    for net in nets:
        net.stop()
        findings.extend(f"- {type(e).__name__}: {e}" for e in net.take_errors())
    leftovers = kill_leftovers()
    if leftovers:
        findings.append(f"- plugin processes still running at teardown (killed): {leftovers}")
    if findings:
        pytest.fail(
            f"{len(findings)} harness finding(s) not taken by the test:\n" + "\n".join(findings),
            pytrace=False,
        )


@pytest.fixture
def network_factory(tmp_path: Path) -> Iterator[Callable[..., Network]]:
    nets: list[Network] = []

    def make(**kwargs: Any) -> Network:
        net = Network(tmp_path / f"net{len(nets)}", **kwargs)
        nets.append(net)
        return net

    yield make
    _teardown(nets)


@pytest.fixture
def network(network_factory: Callable[..., Network]) -> Network:
    return network_factory()
