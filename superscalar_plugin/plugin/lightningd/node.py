"""What every role knows about this node: its lightningd, configuration, id, the chain's height,
and its keys (derived from `makesecret`, so an `hsm_secret` backup recovers them).

Owns: the node id and the height (set on the worker at start-up, raised by `block_added` on the
dispatch thread: one small lock). May call: lightningd through `Rpc`.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from ...engine import musig2
from ...engine.errors import ChainError, MuSigError
from ...engine.sale_store import Payment
from .config import Config
from .nodedb import NodeDb
from .runtime import Rpc


class ChannelsUnavailable(ChainError):
    """lightningd could not list our channels (an RPC error): nothing may be concluded."""


def node_seckey(secret: bytes) -> bytes:
    """A valid secp256k1 secret key from 32 bytes of `makesecret` output."""
    key = secret
    while True:
        try:
            musig2.pubkey_from_secret(key)
            return key
        except MuSigError:  # zero or above the order: astronomically rare, rehash
            key = hashlib.sha256(key).digest()


class Node:
    def __init__(self, rpc: Rpc, config: Config) -> None:
        self.rpc = rpc
        self.config = config
        self.id = ""
        self._height = 0
        self._height_lock = threading.Lock()
        self.db = NodeDb()  # where our lightningd's database is: located at start-up

    @property
    def height(self) -> int:
        return self._height

    def raise_height(self, height: int) -> None:
        """Blocks only move the height forward (`block_added` replays lower ones on restart)."""
        with self._height_lock:
            self._height = max(self._height, height)

    def lsp_key(self, instance: str) -> bytes:
        return node_seckey(self._makesecret(b"superscalar/lsp/" + bytes.fromhex(instance)))

    def client_key(self, instance: str) -> bytes:
        return node_seckey(self._makesecret(b"superscalar/client/" + bytes.fromhex(instance)))

    def _makesecret(self, label: bytes) -> bytes:
        return bytes.fromhex(self.rpc.call("makesecret", {"hex": label.hex()})["secret"])

    def channels(self) -> dict[str, dict[str, Any]]:
        """lightningd's channels by channel id. Fails closed: if lightningd cannot say, this
        raises `ChannelsUnavailable`, never answers "no channels" (a caller deciding whether
        money is left somewhere must not read an RPC error as "nothing there")."""
        try:
            chans = self.rpc.call("listpeerchannels").get("channels", [])
        except Exception as e:
            raise ChannelsUnavailable(f"listpeerchannels failed: {e}") from e
        if not isinstance(chans, list):
            raise ChannelsUnavailable("listpeerchannels answered without a channel list")
        return {c["channel_id"]: c for c in chans if isinstance(c, dict) and "channel_id" in c}

    def payment(self, payment_hash: str) -> Payment | None:
        """What our node shows of our payment `payment_hash` (`listsendpays`): PAID if a part
        settled, PENDING while one is in flight, FAILED only if every part failed back; None if
        lightningd cannot say or lists none (an operator's autoclean may have deleted a settled
        one: nothing may be concluded)."""
        try:
            pays = self.rpc.call("listsendpays", {"payment_hash": payment_hash}).get("payments")
        except Exception:
            return None
        if not isinstance(pays, list):
            return None
        statuses = {p.get("status") for p in pays if isinstance(p, dict)}
        if not statuses:
            return None
        if "complete" in statuses:
            return Payment.PAID
        if "pending" in statuses or statuses - {"failed"}:
            return Payment.PENDING
        return Payment.FAILED

    def fee_rate_kvb(self) -> int:
        """lightningd's estimate for an opening (sat/kvB), else 2000."""
        try:
            rates = self.rpc.call("feerates", {"style": "perkb"})["perkb"]
            return int(rates.get("opening") or rates.get("min_acceptable") or 2000)
        except Exception:
            return 2000

    def send_tx(self, raw_hex: str) -> str | None:
        """Broadcast through lightningd: None when accepted, else why not (never raises)."""
        try:
            res = self.rpc.call("sendrawtransaction", {"tx": raw_hex, "allowhighfees": False})
        except Exception as e:
            return str(e)
        return None if res.get("success", False) else str(res.get("errmsg") or "refused")

    def network(self) -> str:
        return str(self.rpc.call("getinfo").get("network", "regtest"))
