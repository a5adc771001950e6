"""Log lines a peer (or a user) can trigger at will, at most once a minute per source: what
anyone can send must not be able to fill the operator's log."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

PERIOD = 60.0
MAX_SOURCES = 4096
WRITE_BURST = 8  # record writes one source may cause per period  # oldest forgotten beyond this: the table itself stays bounded


_ALL: weakref.WeakSet[LogLimiter] = weakref.WeakSet()


def stats() -> tuple[int, int]:
    """Over every limiter: (sources whose lines are being left out now, lines left out in all)."""
    limiting = total = 0
    for limiter in list(_ALL):
        now, left_out = limiter.counts()
        limiting += now
        total += left_out
    return limiting, total


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        period: float = PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0
        _ALL.add(self)

    def counts(self) -> tuple[int, int]:
        """(sources with lines left out in their current period, lines left out in all)."""
        with self._lock:
            return len(self._suppressed), self.suppressed_total

    def warning(self, source: str, text: str, *args: object) -> None:
        """Log `text % args` at WARNING unless `source` logged within the period; the next
        line says how many were left out."""
        self.log(logging.WARNING, source, text, *args)

    def log(self, level: int, source: str, text: str, *args: object) -> None:
        """As `warning`, at `level`."""
        now = self._clock()
        with self._lock:
            last = self._last.get(source)
            if last is not None and now - last < self.period:
                self._suppressed[source] = self._suppressed.get(source, 0) + 1
                self.suppressed_total += 1
                return
            if len(self._last) >= MAX_SOURCES:
                oldest = min(self._last, key=self._last.__getitem__)
                self._last.pop(oldest)
                self._suppressed.pop(oldest, None)
            self._last[source] = now
            skipped = self._suppressed.pop(source, 0)
        suffix = f" ({skipped} more from {source[:16]} not shown)" if skipped else ""
        self.logger.log(level, text + suffix, *args)


class WriteLimiter:
    """Record writes a peer's message can cause at will (a text it sends, kept for the operator):
    at most `burst` per period per source, so no peer can make us rewrite a record endlessly,
    while a few honest answers in a row (a client refusing several requests) are all kept."""

    def __init__(
        self,
        period: float = PERIOD,
        clock: Callable[[], float] = time.monotonic,
        burst: int = WRITE_BURST,
    ) -> None:
        self.period = period
        self.burst = burst
        self._clock = clock
        self._times: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, source: str) -> bool:
        now = self._clock()
        with self._lock:
            recent = [t for t in self._times.get(source, ()) if now - t < self.period]
            if len(recent) >= self.burst:
                self._times[source] = recent
                return False
            if source not in self._times and len(self._times) >= MAX_SOURCES:
                self._times.pop(min(self._times, key=lambda k: max(self._times[k], default=0)))
            self._times[source] = [*recent, now]
            return True
