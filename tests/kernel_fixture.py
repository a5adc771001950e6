"""pytest fixture for the embedded regtest chain on Bitcoin Core's consensus engine.

- `kernel_chain` (function): a fresh `KernelChain` (temporary datadir, genesis only); closed and
  its datadir deleted when the test ends, pass or fail. Needs py-bitcoinkernel (the `kernel` or
  `dev` extra); without it the requesting test is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from superscalar_plugin.chain.kernel import KernelChain


@pytest.fixture
def kernel_chain() -> Iterator[KernelChain]:
    pytest.importorskip("pbk", reason="py-bitcoinkernel is not installed (pip install -e '.[dev]')")
    from superscalar_plugin.chain.kernel import KernelChain

    chain = KernelChain()
    try:
        yield chain
    finally:
        chain.close()
