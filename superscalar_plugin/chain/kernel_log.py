"""The kernel's log, read while a block is processed: py-bitcoinkernel 0.1.0a5 exposes no reject
reason on its API, so the reason is parsed from the lines Core logs for that block."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pbk

# "ConnectTip: ConnectBlock <hash> failed, <reason>[, <debug>]"
_CONNECT_FAILED = re.compile(r"ConnectBlock ([0-9a-f]{64}) failed, (.+)$")
# "ProcessNewBlock: AcceptBlock FAILED (<reason>[, <debug>])" and the CheckBlock variant
_ACCEPT_FAILED = re.compile(r"(?:AcceptBlock|CheckBlock) FAILED \((.+)\)$")
# "Block validation error: <reason>[, <debug>]"
_VALIDATION_ERROR = re.compile(r"Block validation error: (.+)$")


class _KernelLog:
    """One process-wide kernel log connection; captures lines while a block is processed.

    Kernel logging is global, so block processing is serialised by `capture` and every line
    logged meanwhile belongs to that block.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] | None = None
        self._connection: pbk.LoggingConnection | None = None

    def _on_message(self, message: str) -> None:
        lines = self._lines
        if lines is not None:
            lines.append(message.rstrip("\n"))

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        with self._lock:
            if self._connection is None:
                self._connection = pbk.LoggingConnection(self._on_message)
            lines: list[str] = []
            self._lines = lines
            try:
                yield lines
            finally:
                self._lines = None


KERNEL_LOG = _KernelLog()


def _split_reason(text: str) -> tuple[str, str | None]:
    """Core's `BlockValidationState::ToString()` is "reason" or "reason, debug message"."""
    reason, sep, detail = text.partition(", ")
    return reason.strip(), (detail.strip() or None) if sep else None


def reject_reason(lines: Sequence[str], block_hash_hex: str) -> tuple[str, str | None]:
    """Why the kernel refused a block, as (reason, detail), from what it logged meanwhile."""
    for line in lines:
        m = _CONNECT_FAILED.search(line)
        if m and m.group(1) == block_hash_hex:
            return _split_reason(m.group(2))
    for pattern in (_ACCEPT_FAILED, _VALIDATION_ERROR):
        for line in lines:
            m = pattern.search(line)
            if m:
                return _split_reason(m.group(1))
    errors = [line for line in lines if "[error]" in line or "ERROR" in line]
    if errors:
        return "unknown", errors[-1]
    return "unknown", "the kernel logged no reject reason"
