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
| UPDATE_SIGNATURE    | DW state update       | the new state newer (checked by `ceremony`); our new    |
|                     | (client)              | channel bound and holding all we hold in the old ones,  |
|                     |                       | which are frozen with no HTLC                           |

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

# lightningd keeps a factory client's reserve at the dust limit (a reserve of 0 is raised to it).
RESERVE_FLOOR_MSAT = 546_000


class Step(enum.Enum):
    TREE_SIGNATURE = "tree_signature"
    SALE_SIGNATURE = "sale_signature"
    BURN_SIGNATURE = "burn_signature"
    MOVE_PAYMENT = "move_payment"
    KEY_HANDOVER = "key_handover"
    BURN_PUBLISH = "burn_publish"
    UPDATE_SIGNATURE = "update_signature"


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
    state: int = 3  # lightningd's `channels.state` (enum channel_state): 3 CHANNELD_NORMAL

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
    if bound.state not in OPEN_STATES:
        # e.g. the channel of a sale that stalled, closed by the LSP then: money signed into it
        # could never be used (red-team finding, round 9)
        raise SolvencyRefused(
            step,
            "channel_state",
            f"our node's channel {bound.channel_id} is {CHANNEL_STATES.get(bound.state, bound.state)},"
            " not open",
        )


# lightningd's `enum channel_state` (lightningd/channel_state.h; stored in `channels.state`, never
# renumbered): a channel we may still sign money into is awaiting lock-in or normal.
CHANNEL_STATES = {
    1: "DUALOPEND_OPEN_INIT",
    2: "CHANNELD_AWAITING_LOCKIN",
    3: "CHANNELD_NORMAL",
    4: "CHANNELD_SHUTTING_DOWN",
    5: "CLOSINGD_SIGEXCHANGE",
    6: "CLOSINGD_COMPLETE",
    7: "AWAITING_UNILATERAL",
    8: "FUNDING_SPEND_SEEN",
    9: "ONCHAIN",
    10: "CLOSED",
    11: "DUALOPEND_OPEN_COMMITTED",
    12: "DUALOPEND_AWAITING_LOCKIN",
    13: "CHANNELD_AWAITING_SPLICE",
    14: "DUALOPEND_OPEN_COMMIT_READY",
}
OPEN_STATES = (2, 3)


# --- the node's own record of a channel ---------------------------------------------------------
#
# Core Lightning writes a channel's funding keys to its own database before the fundee's
# `funding_signed` goes back (table `channels`), and no RPC, hook or notification carries them.
# The plugin reads that row (`plugin/lightningd/nodedb.py`); what it means is decided here.


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
    state: object,
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
    if not isinstance(state, int) or isinstance(state, bool):
        raise SolvencyRefused(step, "channel_db", "channels.state is not a channel state")
    return BoundChannel(
        _blob(step, "full_channel_id", full_channel_id, 32).hex(),
        keys[0],
        keys[1],
        txid,
        funding_tx_outnum,
        funding_satoshi,
        state,
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


# --- moves and the key hand-over ----------------------------------------------------------------


@dataclass(frozen=True)
class MoveTarget:
    """Where a move would put our balance, as our own node and records show it. `funding_depth`
    counts the confirmations of the output that makes it ours alone: the successor factory's
    funding (whose signed path we hold and whose output we checked: `checked`), or an ordinary
    channel's own funding (which our lightningd checked when it locked in)."""

    channel_id: str
    funding_depth: int
    checked: bool
    what: str  # "factory <instance>" or "channel", for the reason


@dataclass(frozen=True)
class HeldChannel:
    """One channel of the factory we leave (its leaf channel or a sale channel), as our node
    shows it now."""

    channel_id: str
    state: str
    to_us_msat: int
    htlcs: int


def check_move_target(target: MoveTarget, min_depth: int) -> None:
    """A balance may move only into something we can enforce alone: never a zero-conf successor
    whose funding the LSP could still withhold or double-spend."""
    if not target.checked:
        raise SolvencyRefused(
            Step.MOVE_PAYMENT,
            "target_unchecked",
            f"the target {target.what} is not one we can enforce (its funding or our channel"
            " script is not checked)",
        )
    if target.funding_depth < min_depth:
        raise SolvencyRefused(
            Step.MOVE_PAYMENT,
            "target_unconfirmed",
            f"the target {target.what}'s funding has {target.funding_depth} confirmations;"
            f" we move only after {min_depth}",
        )


def check_move_payment(
    amount_msat: int, fee_msat: int, max_fee_msat: int, target: MoveTarget, min_depth: int
) -> None:
    """Before the move's payment leaves: the target is enforceable and the LSP's fee is within
    the cap the operator set (an LSP raising its fee on the target must not skim the move)."""
    check_move_target(target, min_depth)
    if amount_msat <= 0:
        raise SolvencyRefused(Step.MOVE_PAYMENT, "amount", f"nothing to move ({amount_msat} msat)")
    if fee_msat > max_fee_msat:
        raise SolvencyRefused(
            Step.MOVE_PAYMENT,
            "fee_above_cap",
            f"the LSP's fee for moving {amount_msat} msat is {fee_msat} msat, above our cap of"
            f" {max_fee_msat} msat (superscalar-max-move-fee-sat)",
        )


def check_move_arrived(sent_msat: int, received_msat: int, max_fee_msat: int) -> None:
    """After the payment, before anything else: what arrived in the target is what we sent less
    at most the capped fee."""
    if received_msat <= 0 or sent_msat - received_msat > max_fee_msat:
        raise SolvencyRefused(
            Step.KEY_HANDOVER,
            "move_short",
            f"sent {sent_msat} msat, {received_msat} msat arrived (cap {max_fee_msat} msat)",
        )


def check_key_handover(
    leaf: HeldChannel | None,
    channels: tuple[HeldChannel, ...],
    allowance_msat: int,
    closing_states: tuple[str, ...],
    target: MoveTarget | None,
    min_depth: int,
) -> None:
    """Before our key of a factory leaves: with it the LSP can spend the factory's tree from
    under every channel on it. So nothing of ours may remain in ANY channel of the factory (its
    leaf channel and every sale channel): no HTLC in flight in either direction, the leaf
    channel retiring, and at most one dust allowance in all (lightningd's floor reserve). And
    where we moved to must still be ours alone."""
    if leaf is not None and leaf.state not in closing_states:
        raise SolvencyRefused(
            Step.KEY_HANDOVER, "not_closing", f"the old channel is still {leaf.state}"
        )
    held = (*((leaf,) if leaf is not None else ()), *channels)
    busy = [c.channel_id[:16] for c in held if c.htlcs]
    if busy:
        raise SolvencyRefused(
            Step.KEY_HANDOVER, "htlcs", f"HTLCs in flight in channels {', '.join(busy)}"
        )
    left = sum(c.to_us_msat for c in held)
    if left > allowance_msat:
        raise SolvencyRefused(
            Step.KEY_HANDOVER,
            "balance_left",
            f"{left} msat of ours are still in channels of this factory (allowance"
            f" {allowance_msat} msat in all)",
        )
    if target is not None:
        try:
            check_move_target(target, min_depth)
        except SolvencyRefused as e:
            raise SolvencyRefused(Step.KEY_HANDOVER, e.kind, str(e)) from e


# --- publishing a burn ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StockSpend:
    """A sale of a leaf's stock as one co-signer holds it, and where the chain is: the facts
    `check_burn_publish` decides on (gathered from the co-signer's own record and chain view)."""

    sale_txid: str
    we_are_buyer: bool
    sale_complete: bool  # we hold the sale's final signature: we can publish the sale itself
    burn_signed: bool  # we hold the burn's final signature
    stock_on_chain: bool  # the stock output the sale (and its burn) spends is confirmed
    sale_on_chain: bool
    # Our node shows we paid for it, or may yet (in flight, or not known): False for a gift or a
    # payment failed back, which cost us nothing.
    paid: bool = True


def check_burn_publish(spend: StockSpend, height: int, lsp_path_from: int) -> None:
    """A burn destroys the whole stock output, and with it any sale of it that has not confirmed.
    Its one use: a buyer whose sale the LSP stalled (it took the buyer's part and withheld the
    last signature) denies the LSP the stock it would otherwise take back through its own path.
    So it is published
    - only by that buyer: a co-signer has nothing at stake in another client's incomplete sale,
      and burning it would let any buyer that withholds its own signature make honest clients
      destroy the LSP's stock (the LSP's money; red-team finding);
    - only for a purchase we paid for: a sale can also stall on a co-client withholding its
      signature, and the LSP then fails our payment back; burning a purchase that cost us nothing
      would destroy the LSP's stock for a co-client's stall (red-team finding, round 8);
    - never for a sale we hold complete (we publish that sale instead);
    - only when the LSP's own path on the stock opens at the next block (`lsp_path_from`: T+1
      and `stock_delay` blocks after the stock confirmed): until then a complete sale, held by
      its buyer, can still confirm, and no honest party burns a sale its buyer may hold complete
      (red-team finding: a burn at T+1 took an absent buyer's funded sale channel)."""
    step = Step.BURN_PUBLISH
    if spend.sale_complete:
        raise SolvencyRefused(
            step, "sale_complete", f"we hold sale {spend.sale_txid} complete: publish it instead"
        )
    if not spend.we_are_buyer:
        raise SolvencyRefused(
            step, "not_our_purchase", f"sale {spend.sale_txid} is another client's purchase"
        )
    if not spend.paid:
        raise SolvencyRefused(
            step,
            "nothing_paid",
            f"we paid nothing for sale {spend.sale_txid} (a gift, or our payment failed back)",
        )
    if not spend.burn_signed:
        raise SolvencyRefused(step, "burn_unsigned", "we do not hold the burn's signature")
    if spend.sale_on_chain:
        raise SolvencyRefused(step, "sale_on_chain", f"sale {spend.sale_txid} is on chain")
    if not spend.stock_on_chain:
        raise SolvencyRefused(step, "stock_off_chain", "the stock output is not on chain")
    if height + 1 < lsp_path_from:
        raise SolvencyRefused(
            step,
            "before_lsp_path",
            f"the LSP's own path on the stock opens at block {lsp_path_from} only",
        )


def check_no_withheld_purchase(step: Step, withheld: Sequence[str]) -> None:
    """A purchase we paid for whose last signature the LSP withheld (`withheld`: those sales'
    txids) leaves us one recourse, its burn once the leaf is on chain. Nothing may take that away
    while we hold one: no DW update of our leaf (its new state would supersede the stock the burn
    spends) and no key handed over (the LSP would spend the funding by key path, the leaf never
    on chain). Red-team finding, round 10."""
    if withheld:
        raise SolvencyRefused(
            step,
            "purchase_withheld",
            f"we paid for sale {withheld[0]} and never got its last signature: its burn must"
            " stay enforceable",
        )


def check_update_signature(
    old: Sequence[HeldChannel],
    new: HeldChannel | None,
    expected_old: int,
    swap_in_msat: int | None = None,
    held_msat: int = 0,
    max_fee_msat: int = 0,
) -> None:
    """Before our first nonce of each ceremony of a DW update. Our channels the update replaces
    (`old`, as our node shows them, all `expected_old` of them) are frozen, and our node holds our
    new channel, bound to our new leaf output. Before the moved state node (`swap_in_msat` given:
    from then on either state may confirm) our balance must be in both: the HTLCs of our payment
    to ourselves arriving in the new channel (held by our hook, settled only once we hold the new
    state) carry at least what we held in the old ones (`held_msat`) less the LSP's forwarding
    fee within our cap, while in the old state the same payment's HTLCs time out back to us."""
    if len(old) != expected_old:
        raise SolvencyRefused(
            Step.UPDATE_SIGNATURE,
            "old_channels",
            f"our node shows {len(old)} of the {expected_old} channels the update replaces",
        )
    if new is None:
        raise SolvencyRefused(
            Step.UPDATE_SIGNATURE, "new_channel", "our node holds no channel at our new leaf output"
        )
    if swap_in_msat is None:
        busy = [c.channel_id[:16] for c in old if c.htlcs]
        if busy:
            raise SolvencyRefused(
                Step.UPDATE_SIGNATURE, "htlcs", f"channels {busy} still carry HTLCs"
            )
        return
    # Each old channel keeps its reserve floor, which no payment can move; the new channel's
    # opening gives one back (`UPDATE_PUSH_MSAT`), the others' are lost (at most that each).
    stuck = RESERVE_FLOOR_MSAT * max(0, len(old) - 1)
    arrived = new.to_us_msat + swap_in_msat
    if arrived < held_msat - max_fee_msat - stuck:
        raise SolvencyRefused(
            Step.UPDATE_SIGNATURE,
            "balance_short",
            f"{arrived} msat of ours is in or waits in the new channel; we held {held_msat} msat"
            f" in the channels it replaces (fee cap {max_fee_msat} msat, {stuck} msat of"
            " reserves)",
        )
