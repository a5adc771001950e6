"""Shared pytest fixtures. Each group lives in its own module; this file only imports them."""

from __future__ import annotations

# The embedded regtest chain on Core's consensus engine: kernel_chain (see kernel_fixture.py).
from kernel_fixture import kernel_chain  # noqa: F401
