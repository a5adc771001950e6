"""The client's solvency guard: what must hold before each irreversible step.

One rule, stated once: after the step, every msat the client's own node shows as its own is
enforceable by the client alone on chain (its own signed path from a confirmed funding down to
an output paying its own channel script, or a confirmed ordinary channel), less a fee bound the
operator set. Each irreversible step of every flow asks this module first:

| step                | where                 | what must hold                                          |
|---------------------|-----------------------|---------------------------------------------------------|
| TREE_SIGNATURE      | creation (client)     | its leaf output is its own node's channel script, bound |
| SALE_SIGNATURE      | sale (buyer)          | the sale pays its own node's new channel script, bound  |
| SALE_SIGNATURE      | sale (co-signer)      | its own outputs untouched (`sale_checks`)               |
| BURN_SIGNATURE      | sale (every signer)   | the burn spends only the stock it is paired with        |
| MOVE_PAYMENT        | migration, close      | fee within the cap; the target enforceable (confirmed)  |
| KEY_HANDOVER        | migration, close      | nothing of ours left in any channel of the factory      |
| BURN_PUBLISH        | chain duties          | never a sale we hold complete                           |

A step that fails is refused with `SolvencyRefused`, which names the step and the reason; the
plugin logs it once per kind per peer and leaves the flow where it can be retried. The facts a
check needs are gathered by the plugin from the client's own node; gathering fails closed: a fact
that could not be read is a refusal, never "nothing there".

Pure: no I/O. Each check is a small function over small immutable values.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnsafeToSign


class Step(enum.Enum):
    TREE_SIGNATURE = "tree_signature"
    SALE_SIGNATURE = "sale_signature"
    BURN_SIGNATURE = "burn_signature"
    MOVE_PAYMENT = "move_payment"
    KEY_HANDOVER = "key_handover"
    BURN_PUBLISH = "burn_publish"


class SolvencyRefused(UnsafeToSign):
    """The solvency guard refused an irreversible step; `step` and `kind` say which and why (the
    plugin logs once per (peer, step, kind))."""

    def __init__(self, step: Step, kind: str, detail: str) -> None:
        self.step = step
        self.kind = kind
        super().__init__(f"{step.value} refused ({kind}): {detail}")


# --- channel script binding ---------------------------------------------------------------------


@dataclass(frozen=True)
class BoundChannel:
    """A channel as the client's own lightningd records it (its database, not a peer's word):
    both funding keys, the funding outpoint and amount. The script is derived, never received."""

    channel_id: str
    local_funding_key: bytes  # 33-byte compressed
    remote_funding_key: bytes
    funding_txid: str  # display order (as listpeerchannels shows it)
    funding_vout: int
    funding_sat: int

    def witness_script(self) -> bytes:
        """BOLT 3: 2 <pubkey1> <pubkey2> 2 OP_CHECKMULTISIG, keys in lexicographic order."""
        a, b = sorted((self.local_funding_key, self.remote_funding_key))
        return b"\x52\x21" + a + b"\x21" + b + b"\x52\xae"

    def script_pubkey(self) -> bytes:
        """The P2WSH output that funds this channel."""
        return b"\x00\x20" + hashlib.sha256(self.witness_script()).digest()


def check_channel_bound(
    step: Step,
    bound: BoundChannel | None,
    txid: str,
    vout: int,
    script_pubkey: bytes,
    amount_sat: int,
) -> None:
    """Before signing a tx whose output `txid:vout` is to be our channel: our own node must hold a
    channel funded exactly there, for exactly that amount, whose 2-of-2 is that output's script."""
    if bound is None:
        raise SolvencyRefused(
            step, "channel_unbound", f"our node holds no channel funded at {txid}:{vout}"
        )
    if (bound.funding_txid, bound.funding_vout) != (txid, vout):
        raise SolvencyRefused(
            step,
            "channel_outpoint",
            f"our node's channel is funded at {bound.funding_txid}:{bound.funding_vout},"
            f" not {txid}:{vout}",
        )
    if bound.funding_sat != amount_sat:
        raise SolvencyRefused(
            step,
            "channel_amount",
            f"our node's channel holds {bound.funding_sat} sat, the output {amount_sat} sat",
        )
    if bound.script_pubkey() != script_pubkey:
        raise SolvencyRefused(
            step,
            "channel_script",
            "the output is not the 2-of-2 of the funding keys our node recorded",
        )


# --- the node's own record of a channel ---------------------------------------------------------
#
# Core Lightning writes a channel's funding keys to its own database before the fundee's
# `funding_signed` goes back (table `channels`), and no RPC, hook or notification carries them.
# The plugin reads that row (`plugin/nodedb.py`); what it means is decided here.


@dataclass(frozen=True)
class WalletDb:
    """Where lightningd keeps its database: an SQLite file, or a PostgreSQL DSN."""

    kind: str  # "sqlite3" or "postgres"
    location: str  # an absolute file path (sqlite3) or the DSN (postgres)


DEFAULT_DB_FILE = "lightningd.sqlite3"


def wallet_db(wallet: str, lightning_dir: str, network: str) -> WalletDb:
    """The database `listconfigs` `wallet` names. Empty means lightningd's default,
    `<lightning-dir>/<network>/lightningd.sqlite3`; `lightning_dir` may already end in the network
    (getinfo's does). `sqlite3://<path>[:<backup path>]`: a relative path is relative to the
    network directory (lightningd runs there). `postgres://...`: the DSN as is."""
    netdir = lightning_dir.rstrip("/")
    if netdir.rsplit("/", 1)[-1] != network:
        netdir = f"{netdir}/{network}"
    if not wallet:
        return WalletDb("sqlite3", f"{netdir}/{DEFAULT_DB_FILE}")
    scheme, sep, rest = wallet.partition("://")
    if not sep or not rest:
        raise SolvencyRefused(
            Step.TREE_SIGNATURE, "channel_db", f"wallet {wallet!r} is not <scheme>://<location>"
        )
    if scheme == "sqlite3":
        path = rest.split(":", 1)[0]  # the main file; a `:backup` copy follows
        if not path:
            raise SolvencyRefused(Step.TREE_SIGNATURE, "channel_db", f"wallet {wallet!r}: no path")
        return WalletDb("sqlite3", path if path.startswith("/") else f"{netdir}/{path}")
    if scheme in ("postgres", "postgresql"):
        return WalletDb("postgres", wallet)
    raise SolvencyRefused(
        Step.TREE_SIGNATURE, "channel_db", f"wallet {wallet!r}: unknown database {scheme!r}"
    )


def _blob(step: Step, name: str, value: object, length: int) -> bytes:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if not isinstance(value, bytes) or len(value) != length:
        raise SolvencyRefused(
            step, "channel_db", f"channels.{name} is not {length} bytes in our node's database"
        )
    return value


def bound_from_row(
    step: Step,
    full_channel_id: object,
    funding_pubkey_local: object,
    fundingkey_remote: object,
    funding_tx_id: object,
    funding_tx_outnum: object,
    funding_satoshi: object,
) -> BoundChannel:
    """A `channels` row of lightningd's database as a `BoundChannel`, each column checked (the
    txid is stored byte-reversed, the internal order). A column that is not what it must be is a
    refusal naming it: never a binding."""
    keys = [
        _blob(step, n, v, 33)
        for n, v in (
            ("funding_pubkey_local", funding_pubkey_local),
            ("fundingkey_remote", fundingkey_remote),
        )
    ]
    for name, key in zip(("funding_pubkey_local", "fundingkey_remote"), keys, strict=True):
        if key[0] not in (2, 3):
            raise SolvencyRefused(step, "channel_db", f"channels.{name} is not a compressed key")
    txid = _blob(step, "funding_tx_id", funding_tx_id, 32)[::-1].hex()
    if not isinstance(funding_tx_outnum, int) or not 0 <= funding_tx_outnum < 2**32:
        raise SolvencyRefused(step, "channel_db", "channels.funding_tx_outnum is not an index")
    if not isinstance(funding_satoshi, int) or not 0 < funding_satoshi <= 21_000_000 * 10**8:
        raise SolvencyRefused(step, "channel_db", "channels.funding_satoshi is not an amount")
    return BoundChannel(
        _blob(step, "full_channel_id", full_channel_id, 32).hex(),
        keys[0],
        keys[1],
        txid,
        funding_tx_outnum,
        funding_satoshi,
    )


def check_bound_output(
    step: Step,
    bound: BoundChannel | None,
    txid: str,
    vout: int,
    outputs: Sequence[tuple[int, bytes]],
) -> bytes:
    """`check_channel_bound` on output `vout` of a tx we are about to sign: the exact script of our
    channel there, which every later check may rely on."""
    if not 0 <= vout < len(outputs):
        raise SolvencyRefused(step, "channel_outpoint", f"{txid} has no output {vout}")
    amount, script = outputs[vout]
    check_channel_bound(step, bound, txid, vout, script, amount)
    return script
