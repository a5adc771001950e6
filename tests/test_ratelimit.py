"""A peer can trigger some log lines at will: at most one per peer per period."""

from __future__ import annotations

import logging

import pytest

from superscalar_plugin.plugin.lightningd.ratelimit import LogLimiter


def test_one_line_per_source_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    limiter = LogLimiter(logging.getLogger("t.ratelimit"), period=60, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, "t.ratelimit"):
        for _ in range(50):
            limiter.warning("peer-a", "bad message from %s", "peer-a")
        limiter.warning("peer-b", "bad message from %s", "peer-b")
        clock[0] += 61
        limiter.warning("peer-a", "bad message from %s", "peer-a")
    assert [r.getMessage() for r in caplog.records] == [
        "bad message from peer-a",
        "bad message from peer-b",
        "bad message from peer-a (49 more from peer-a not shown)",
    ]
