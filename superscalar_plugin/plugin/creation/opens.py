"""The `openchannel` decision for factory channels (client side).

Owns: the slots this node accepted (LSP and amount per factory) and the opens it expects or
refuses. Written by the worker (accept, abort) and by the dispatch thread (`channel_in_factory`
and the `openchannel` hook, which must answer at once): one small lock, dictionary work only.
May call: nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..lightningd.config import FACTORY_PUSH_MSAT
from ..lightningd.ratelimit import LogLimiter

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)  # what a peer can trigger at will: once a minute per peer

REJECT = {
    "result": "reject",
    "error_message": "superscalar: this channel is not a factory slot we accepted",
}


class ChannelOpens:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[str, int]] = {}  # instance -> (LSP, channel msat)
        self._expected: dict[tuple[str, int], str] = {}  # (peer, msat) -> instance
        self._refused: dict[tuple[str, int], str] = {}
        self._push: dict[tuple[str, int], int] = {}  # (peer, msat) -> the push we agreed to

    def accepted(self, instance: str, lsp: str, channel_sat: int, push_msat: int = 0) -> None:
        """We accepted a slot: its open may reach us before the LSP's channel_in_factory. A DW
        update's new channel comes with our balance pushed to us (`push_msat`)."""
        with self._lock:
            self._slots[instance] = (lsp, channel_sat * 1000)
            self._expected[(lsp, channel_sat * 1000)] = instance
            self._push[(lsp, channel_sat * 1000)] = max(FACTORY_PUSH_MSAT, push_msat)

    def announced(self, peer: str, instance: str) -> None:
        """A peer's `channel_in_factory`: expect its open if the slot is ours, else refuse it."""
        with self._lock:
            slot = self._slots.get(instance)
            if slot is None or slot[0] != peer:
                self._refused[(peer, 0)] = instance
                peer_log.warning(
                    peer, "%s announced a channel in unknown factory %s", peer, instance[:16]
                )
            else:
                self._expected[(peer, slot[1])] = instance

    def forget(self, instance: str) -> None:
        """The factory was aborted: its open is no longer welcome."""
        with self._lock:
            for k, v in list(self._expected.items()):
                if v == instance:
                    del self._expected[k]

    def decide(self, peer: str, funding_msat: int, push_msat: int) -> dict[str, Any]:
        """The openchannel hook: a factory slot we accepted opens with mindepth 0; an open that a
        peer tied to a factory we do not know is refused; every other open is left alone."""
        with self._lock:
            instance = self._expected.pop((peer, funding_msat), None)
            refused = self._refused.pop((peer, 0), None)
            allowed = self._push.pop((peer, funding_msat), FACTORY_PUSH_MSAT)
        if instance is not None and push_msat <= allowed:
            log.info("accepting factory channel from %s (factory %s)", peer, instance[:16])
            return {"result": "continue", "mindepth": 0}
        if instance is not None or refused is not None:
            return dict(REJECT)
        return {"result": "continue"}
