"""pytest fixtures for a real regtest bitcoind (imported by tests/conftest.py).

- `bitcoind_binary` (session): path of a bitcoind v28+. When none can be found the requesting test
  FAILS (never skips) with the places looked at and how to get one (`make bitcoind`).
- `bitcoind` (module): a started `BitcoindProcess` with wallet "superscalar" loaded. `.rpc` is the
  node RPC client, `.wallet` the wallet RPC client (both `.call(method, *params)`),
  `.mine(n, address=None)` mines to a new wallet address (or to `address`), `.new_address()`,
  `.height()`. One node per test module: modules never see each other's chain or mempool.
  Stopped after the module, pass or fail.
- `bitcoind_factory` (function): `bitcoind_factory(**BitcoindProcess kwargs)` starts an extra,
  independent node; every node it started is stopped when the test ends, pass or fail.
- `_no_bitcoind_left_behind` (session, autouse): at the end of the session, any bitcoind started
  through `superscalar_plugin.chain.bitcoind` that is still running is killed and reported as an
  error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from superscalar_plugin.chain.bitcoind import (
    BitcoindNotFound,
    BitcoindProcess,
    find_bitcoind,
    kill_leftovers,
    live_pids,
)

NodeFactory = Callable[..., BitcoindProcess]


@pytest.fixture(scope="session")
def bitcoind_binary() -> Path:
    """A bitcoind v28+, or a failed (not skipped) test saying why and what to do."""
    try:
        return find_bitcoind()
    except BitcoindNotFound as exc:
        why = str(exc)
    pytest.fail(f"this test needs a real bitcoind and none is usable: {why}", pytrace=False)


@pytest.fixture(scope="module")
def bitcoind(
    bitcoind_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BitcoindProcess]:
    """A regtest bitcoind with a loaded wallet, shared by the tests of one module."""
    node = BitcoindProcess(bitcoind_binary, datadir=tmp_path_factory.mktemp("bitcoind"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def bitcoind_factory(
    bitcoind_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeFactory]:
    """Start extra independent regtest nodes; all of them are stopped when the test ends."""
    nodes: list[BitcoindProcess] = []

    def make(**kwargs: Any) -> BitcoindProcess:
        kwargs.setdefault("datadir", tmp_path_factory.mktemp("bitcoind"))
        node = BitcoindProcess(bitcoind_binary, **kwargs)
        nodes.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_bitcoind_left_behind() -> Iterator[None]:
    yield
    left = live_pids()
    if left:
        kill_leftovers()
        pytest.fail(f"bitcoind processes were left running (now killed): pids {left}")
