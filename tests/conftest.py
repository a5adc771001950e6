"""Shared pytest fixtures. Each group lives in its own module; this file only imports them."""

from __future__ import annotations

# A real regtest bitcoind: bitcoind_binary, bitcoind, bitcoind_factory (see bitcoind_fixture.py).
from bitcoind_fixture import (  # noqa: F401
    _no_bitcoind_left_behind,
    bitcoind,
    bitcoind_binary,
    bitcoind_factory,
)

# The fake-lightningd harness that runs real plugin processes: network, network_factory.
from harness.fixtures import network, network_factory  # noqa: F401

# The embedded regtest chain on Core's consensus engine: kernel_chain (see kernel_fixture.py).
from kernel_fixture import kernel_chain  # noqa: F401
