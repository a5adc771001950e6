"""Peers: the bLIP-56 handshake and sending factory messages.

Owns: which peers announced our protocol (written by the worker, cleared on `disconnect` from the
dispatch thread, hence a lock). May call: lightningd's `listpeers` and `sendcustommsg`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ...engine import blip56, protocol
from .runtime import PeerUnreachable, Rpc, why

log = logging.getLogger("superscalar")

SEND_PARALLEL = 8  # sendcustommsg calls in flight at once in `send_all`


def has_factory_feature(features_hex: str) -> bool:
    """Bit 270 or 271 (`pluggable_channel_factories`) in a peer's init features."""
    try:
        bits = int(features_hex, 16) if features_hex else 0
    except ValueError:
        return False
    return bool((bits >> (blip56.FEATURE_BIT - 1)) & 0b11)


class Peers:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc
        self._speaking: set[str] = set()  # peers that announced superscalar_v1
        self._lock = threading.Lock()

    def send(self, peer: str, payload: protocol.Payload) -> None:
        body = protocol.encode(payload)
        self._send_raw(peer, blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, body).encode())

    def send_all(
        self, messages: Sequence[tuple[str, protocol.Payload]]
    ) -> list[tuple[str, PeerUnreachable]]:
        """Send each message to its peer, several calls in flight at once (each is a round trip
        through lightningd; one peer's messages keep their order only across calls, so a peer
        appears at most once here). Every message is tried; the failures, in order."""
        if len({peer for peer, _ in messages}) != len(messages):
            raise ValueError("send_all: a peer appears twice")

        def one(item: tuple[str, protocol.Payload]) -> PeerUnreachable | None:
            try:
                self.send(*item)
            except PeerUnreachable as e:
                return e
            return None

        if len(messages) <= 1:
            results = [one(m) for m in messages]
        else:
            with ThreadPoolExecutor(min(SEND_PARALLEL, len(messages))) as pool:
                results = list(pool.map(one, messages))
        return [(m[0], e) for m, e in zip(messages, results, strict=True) if e is not None]

    def _send_raw(self, peer: str, msg: bytes) -> None:
        try:
            self._rpc.call("sendcustommsg", {"node_id": peer, "msg": msg.hex()})
        except Exception as e:  # e.g. the peer disconnected: name it
            raise PeerUnreachable(f"cannot send to {peer}: {why(e)}") from e

    def greet(self, peer: str) -> None:
        """bLIP-56: send supported_factory_protocols to a peer whose init set bit 270/271 - and
        only to such a peer: an unknown even message would make any other peer hang up."""
        peers = self._rpc.call("listpeers", {"id": peer}).get("peers", [])
        if not peers or not has_factory_feature(str(peers[0].get("features", ""))):
            return
        msg = blip56.SupportedProtocols((blip56.SUPERSCALAR_PROTOCOL_ID,)).encode()
        try:
            self._send_raw(peer, msg)
        except Exception as e:  # a peer that left again is not an error
            log.info("could not greet %s: %s", peer, e)

    def greet_connected(self) -> None:
        for peer in self._rpc.call("listpeers").get("peers", []):
            if peer.get("connected") and has_factory_feature(str(peer.get("features", ""))):
                self.greet(peer["id"])

    def announced(self, peer: str) -> None:
        with self._lock:
            self._speaking.add(peer)

    def disconnected(self, peer: str) -> None:
        with self._lock:
            self._speaking.discard(peer)

    def speaks_superscalar(self, peer: str) -> bool:
        with self._lock:
            return peer in self._speaking
