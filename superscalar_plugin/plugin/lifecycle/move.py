"""The client's side of a factory's end: move our balance out, retire the old channel, hand over.

When the LSP winds a factory down (migration into its successor, or a cooperative close) it asks
each client to MOVE into a target channel. The client decides everything itself:

1. `on_move` (worker): the asker is the factory's LSP; the factory is ours, signed, not exiting;
   the target is a channel with the same LSP that is safe to hold money: our channel in another
   factory of this LSP that we signed (migration), or an ordinary channel whose funding is
   confirmed (close). Persist `moving_to` (from now on the guards fail HTLCs into the old
   channel), then run the move on its own thread.
2. `_run` (mover thread; each step waits on lightningd and the LSP, so never on the worker): pay
   ourselves our whole spendable balance over the circular route old channel -> LSP -> target
   (one atomic payment: it arrives whole or not at all), then close the old channel
   cooperatively (it can never confirm: its funding is an unpublished leaf).
3. `_hand_over` (worker): only if the old channel is closing, holds at most `HANDOVER_DUST_MSAT`
   of ours and no HTLC, and no channel of a sale we bought holds more than that (their balances
   are not moved: such a client keeps its key and exits alone), persist HANDED_OVER, then send
   our key of the old factory. Keys are per
   factory, so it opens nothing else; with it the LSP can spend the old tree without us.

Owns: which moves are running (one per factory). May call: `records`, `peers`, `guards.refresh`,
lightningd's `listpeerchannels`, `invoice`, `decode`, `sendpay`, `waitsendpay`, `close`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ...engine import protocol, solvency, store
from ...engine.errors import CeremonyError
from ...engine.solvency import HeldChannel, MoveTarget, SolvencyRefused
from ...engine.tx import block_txids
from ..creation.fundcheck import funding_problem, tx_outputs
from ..lightningd.guards import Guards, msat
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import LIVE, Records, is_compromised, txid_of
from ..lightningd.runtime import PeerUnreachable, why
from ..onchain.sales import withheld_purchases

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)

# What may stay ours in the old channel when we hand the key over. lightningd raises a reserve
# of 0 to the dust limit (546 sat; README, "Core Lightning facts"), which no payment can move:
# we allow that and a little rounding. Anything more is money, and we keep the key.
HANDOVER_DUST_MSAT = 1_000_000
MOVE_LABEL = "superscalar-move-"  # our move invoices' labels: this, the instance (16), a nonce
PAY_TIMEOUT = 60  # seconds waitsendpay waits for the circular payment
CLOSE_WAIT = 60.0  # seconds we watch the old channel reach a closing state
RETIRED = ("CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE", "FUNDING_SPEND_SEEN", "ONCHAIN")
SHUTTING = ("CHANNELD_SHUTTING_DOWN", *RETIRED)
EXTRA_CLTV = 3  # blocks of slack on the final CLTV: a block may arrive while the HTLC travels


class MoveRefused(CeremonyError):
    """A MOVE we will not follow (told to the LSP as REJECT)."""


def leaf_txid(record: store.ClientRecord) -> str | None:
    return txid_of(record.path[-1].raw) if record.path else None


class ClientMover:
    def __init__(
        self,
        node: Node,
        records: Records,
        peers: Peers,
        guards: Guards,
        submit: Callable[[Callable[[], None]], None],
    ) -> None:
        self._node = node
        self._records = records
        self._peers = peers
        self._guards = guards
        self._submit = submit
        self._running: set[str] = set()
        self._lock = threading.Lock()
        # MOVEs refused for a target not yet deep enough: (the LSP, its MOVE), by instance.
        self._waiting: dict[str, tuple[str, protocol.Move]] = {}

    # --- 1. the LSP asks (worker) --------------------------------------------------------------

    def on_move(self, peer: str, record: store.ClientRecord, p: protocol.Move) -> None:
        if record.lsp_node_id != peer:
            peer_log.warning(
                peer, "dropped MOVE from %s: not the LSP of %s", peer, record.instance_id[:16]
            )
            return
        if record.state is store.ClientState.HANDED_OVER:
            self._send_key(record)  # the LSP missed it (a restart): the same key again
            return
        self._waiting.pop(record.instance_id, None)
        try:
            target = self._check_move(record, p)
        except SolvencyRefused as e:
            if e.kind == "target_unconfirmed":
                # Asked a block early (the LSP saw the block before us): asked again at each of
                # our own blocks until the target is deep enough, not only at the LSP's.
                self._waiting[record.instance_id] = (peer, p)
            self._refuse(peer, record, e)
            return
        except MoveRefused as e:
            self._refuse(peer, record, e)
            return
        if record.moving_to != target:
            record = record.replace(moving_to=target)
            self._records.persist(record)  # before anything moves: the guards close the door
            self._guards.refresh()
        self.start(record)

    def _refuse(self, peer: str, record: store.ClientRecord, e: Exception) -> None:
        kind = getattr(e, "kind", "target")
        # Not deep enough yet is a wait, not a fault (asked again at each of our blocks).
        level = logging.INFO if kind == "target_unconfirmed" else logging.WARNING
        peer_log.log(
            level,
            f"{peer}:move:{kind}",
            "refusing to move out of %s: %s",
            record.instance_id[:16],
            e,
        )
        self._tell(record, str(e))

    def on_block(self) -> None:
        """Worker, after our chain scan: MOVEs refused only because the target was not deep
        enough yet are checked again."""
        for instance, (peer, p) in list(self._waiting.items()):
            record = self._records.get(instance)
            if isinstance(record, store.ClientRecord):
                self.on_move(peer, record, p)
            else:
                self._waiting.pop(instance, None)

    def _check_move(self, record: store.ClientRecord, p: protocol.Move) -> str:
        """The target channel's id, or MoveRefused / SolvencyRefused naming what is wrong."""
        if record.state not in LIVE or is_compromised(record):
            state = "compromised" if is_compromised(record) else record.state.value
            raise MoveRefused(f"factory is {state}")
        if record.exit is not None:
            raise MoveRefused("factory is being exited unilaterally")
        kind = "factory" if p.kind is protocol.MoveTarget.FACTORY else "channel"
        target = self.target_facts(record, kind, p.target.hex())
        solvency.check_move_target(target, self._node.config.move_min_depth)
        return target.channel_id

    def target_facts(self, record: store.ClientRecord, kind: str, name: str) -> MoveTarget:
        """What our own node and records show of a move's target (a factory instance, or a
        channel id): MoveRefused if it is not a channel with this LSP at all."""
        channels = self._node.channels()  # fails closed: ChannelsUnavailable
        if kind == "factory":
            return self._factory_target(record, name, channels)
        ch = channels.get(name)
        if ch is None or ch.get("peer_id") != record.lsp_node_id:
            raise MoveRefused("target channel is not a channel with this LSP")
        if ch.get("funding_txid") in self._factory_leaves():
            raise MoveRefused("target channel lives in a factory; name the factory instead")
        scid = ch.get("short_channel_id")
        open_ = ch.get("state") == "CHANNELD_NORMAL" and bool(scid)
        depth = self._node.height - int(str(scid).split("x")[0]) + 1 if open_ else 0
        # lightningd checked the funding output against the channel when it locked in.
        return MoveTarget(name, depth, open_, "channel")

    def _factory_target(
        self, record: store.ClientRecord, instance: str, channels: dict[str, dict[str, Any]]
    ) -> MoveTarget:
        new = self._records.get(instance)
        if (
            not isinstance(new, store.ClientRecord)
            or new.lsp_node_id != record.lsp_node_id
            or new.instance_id == record.instance_id
        ):
            raise MoveRefused("target factory is not one of ours with this LSP")
        if new.state not in LIVE or is_compromised(new) or new.exit is not None:
            state = "compromised" if is_compromised(new) else new.state.value
            raise MoveRefused(f"target factory is {state}, not a live signed factory")
        if new.channel_bound is None:  # signed without our node's own record of the channel
            raise MoveRefused("target factory's channel script was never checked against our node")
        leaf = leaf_txid(new)
        found = [
            (cid, ch)
            for cid, ch in channels.items()
            if ch.get("funding_txid") == leaf and ch.get("peer_id") == record.lsp_node_id
        ]
        if not found or found[0][1].get("state") != "CHANNELD_NORMAL":
            raise MoveRefused("our channel in the target factory is not open yet")
        if found[0][0] != new.channel_bound:
            raise MoveRefused("our channel in the target factory is not the one we bound")
        confirmed = dict(new.confirmed).get(new.funding_txid or "")
        what = f"factory {instance[:16]}"
        if confirmed is None:  # a refusal for depth ("target_unconfirmed"), asked again
            return MoveTarget(found[0][0], 0, True, what)
        # The funding output checked here and now, from the block our node holds (not from the
        # worker's order of jobs): our signed path from it down to our channel is ours alone.
        return MoveTarget(
            found[0][0], self._node.height - confirmed + 1, self._funding_ok(new, confirmed), what
        )

    def _funding_ok(self, new: store.ClientRecord, height: int) -> bool:
        """The successor's confirmed funding output is the one our signed root spends (fails
        closed: a block lightningd cannot give is not checked)."""
        try:
            raw = bytes.fromhex(
                self._node.rpc.call("getrawblockbyheight", {"height": height}).get("block") or ""
            )
            index = block_txids(raw).index(new.funding_txid or "")
            return funding_problem(new, tx_outputs(raw, index)) is None
        except Exception as e:
            log.info("factory %s: funding not checked: %s", new.instance_id[:16], why(e))
            return False

    def _factory_leaves(self) -> set[str]:
        return {
            t
            for r in self._records.all()
            if isinstance(r, store.ClientRecord) and (t := leaf_txid(r)) is not None
        }

    def resume(self, record: store.ClientRecord) -> None:
        """After a restart: a move that was asked for goes on (each step checks the channels).
        First, before our hook answers any HTLC (start-up holds them), its unpaid invoices are
        guarded again: a payment in flight across the restart is taken on the target only."""
        if record.moving_to and record.state in LIVE:
            try:
                self._guard_unpaid_moves(record)
            except Exception as e:  # cannot tell the target: no payment may settle them
                log.warning("factory %s: move invoices dropped: %s", record.instance_id[:16], e)
                self._drop_unpaid_moves(record)
            self.start(record)

    def start(self, record: store.ClientRecord) -> None:
        with self._lock:
            if record.instance_id in self._running:
                return
            self._running.add(record.instance_id)
        threading.Thread(
            target=self._run, args=(record.instance_id,), name="superscalar-move", daemon=True
        ).start()

    # --- 2. pay ourselves over the circular route, close the old channel (mover thread) ----------

    def _run(self, instance: str) -> None:
        try:
            record = self._records.get(instance)
            assert isinstance(record, store.ClientRecord) and record.moving_to
            old = self._old_channel(record)
            if old is not None and old.get("state") == "CHANNELD_NORMAL":
                self._pay_across(record, old, record.moving_to)
                # An HTLC in flight when the close starts would settle into the retired channel
                # (README, "Core Lightning facts"): none may arrive (the guards), so wait out
                # the others.
                self._wait(lambda: not (self._old_channel(record) or {}).get("htlcs"), "no HTLC")
                left = msat((self._old_channel(record) or {}).get("to_us_msat", 0))
                if left > HANDOVER_DUST_MSAT:  # a target too small: closing would strand it
                    raise MoveRefused(
                        f"{left} msat of ours are still in the old channel (the target took"
                        " less): it stays open, and we keep our key"
                    )
                self._close(old)
            self._wait_closing(record)
            self._submit(lambda: self._hand_over(instance))
        except SolvencyRefused as e:
            # Refused before our payment left: the old channel goes back to normal use (its
            # door reopens) and the LSP is told; a later MOVE is checked afresh.
            reason = f"move refused: {e}"
            peer_log.warning(f"{instance}:move:{e.kind}", "factory %s: %s", instance[:16], reason)
            undo = e.step is solvency.Step.MOVE_PAYMENT  # nothing left yet
            self._submit(lambda: self._undo_move(instance, reason, undo))
        except Exception as e:  # retried at the LSP's next MOVE (or our restart)
            reason = f"move failed: {why(e)}"
            log.warning("factory %s: %s", instance[:16], reason)
            self._submit(lambda: self._tell_latest(instance, reason))
        finally:
            with self._lock:
                self._running.discard(instance)

    def _undo_move(self, instance: str, reason: str, undo: bool) -> None:
        record = self._records.get(instance)
        if isinstance(record, store.ClientRecord) and record.state in LIVE and record.moving_to:
            if undo:
                self._records.persist(record.replace(moving_to=None))
                self._guards.refresh()
            self._tell(record, reason)

    def _old_channel(self, record: store.ClientRecord) -> dict[str, Any] | None:
        leaf = leaf_txid(record)
        for ch in self._node.channels().values():
            if ch.get("funding_txid") == leaf and ch.get("peer_id") == record.lsp_node_id:
                return ch
        return None

    def _moving_target(self, record: store.ClientRecord, cid: str) -> MoveTarget:
        """The facts of the channel we are moving into, as of now (it may be a factory's)."""
        ch = self._node.channels().get(cid)
        if ch is None:
            raise MoveRefused("the target channel is gone")
        for r in self._records.all():
            if isinstance(r, store.ClientRecord) and leaf_txid(r) == ch.get("funding_txid"):
                return self.target_facts(record, "factory", r.instance_id)
        return self.target_facts(record, "channel", cid)

    def _pay_across(self, record: store.ClientRecord, old: dict[str, Any], target: str) -> None:
        """Our whole spendable balance in `old`, to ourselves across the LSP into `target`, once
        the solvency guard agrees (the target ours alone, the LSP's fee within our cap)."""
        new = self._node.channels().get(target)
        if new is None or new.get("state") != "CHANNELD_NORMAL":
            raise MoveRefused("the target channel is not open")
        update = (new.get("updates") or {}).get("remote")
        if not update:
            raise MoveRefused("the LSP's fees on the target channel are not known yet")
        base, ppm = (
            msat(update.get("fee_base_msat", 0)),
            int(update.get("fee_proportional_millionths", 0)),
        )
        amount = movable_msat(
            msat(old.get("spendable_msat", 0)), msat(new.get("receivable_msat", 0)), base, ppm
        )
        if amount <= 0:
            return  # nothing of ours to move
        fee = forward_fee_msat(amount, base, ppm)
        cap = self._node.config.max_move_fee_sat * 1000
        solvency.check_move_payment(
            amount, fee, cap, self._moving_target(record, target), self._node.config.move_min_depth
        )
        self._send_to_target(record, old, new, (amount, fee, cap))
        log.info("factory %s: moved %d msat to %s", record.instance_id[:16], amount, target[:16])

    def _send_to_target(
        self,
        record: store.ClientRecord,
        old: dict[str, Any],
        new: dict[str, Any],
        amounts: tuple[int, int, int],
    ) -> None:
        """Pay ourselves `amount` (plus the LSP's `fee`) over old -> LSP -> new, taken by our
        hook on `new` only; what arrived is checked against the `cap`."""
        amount, fee, cap = amounts
        update = (new.get("updates") or {}).get("remote") or {}
        label = f"{MOVE_LABEL}{record.instance_id[:16]}-{os.urandom(4).hex()}"
        inv = self._node.rpc.call(
            "invoice",
            {"amount_msat": amount, "label": label, "description": "superscalar: factory move"},
        )
        # Our hook takes it on the target channel only (before anything is sent; kept while
        # the invoice is unpaid, even after our wait gives up: the LSP may still forward it).
        self._guards.expect_move(inv["payment_hash"], new)
        decoded = self._node.rpc.call("decode", {"string": inv["bolt11"]})
        # sendpay's delays are relative: lightningd adds the height (+1) itself.
        final = int(decoded.get("min_final_cltv_expiry", 18)) + EXTRA_CLTV
        route = [
            {
                "id": record.lsp_node_id,
                "channel": _scid(old, "local"),
                "amount_msat": amount + fee,
                "delay": final + int(update.get("cltv_expiry_delta", 6)),
            },
            {
                "id": self._node.id,
                "channel": _scid(new, "remote"),
                "amount_msat": amount,
                "delay": final,
            },
        ]
        self._node.rpc.call(
            "sendpay",
            {
                "route": route,
                "payment_hash": inv["payment_hash"],
                "payment_secret": inv["payment_secret"],
                "amount_msat": amount,
                "label": label,
            },
        )
        self._node.rpc.call(
            "waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": PAY_TIMEOUT}
        )
        self._check_arrived(label, amount + fee, cap)

    def _unpaid_moves(self, record: store.ClientRecord) -> list[dict[str, Any]]:
        prefix = f"{MOVE_LABEL}{record.instance_id[:16]}-"
        return [
            inv
            for inv in self._node.rpc.call("listinvoices").get("invoices", [])
            if str(inv.get("label", "")).startswith(prefix) and inv.get("status") == "unpaid"
        ]

    def _guard_unpaid_moves(self, record: store.ClientRecord) -> None:
        """Our hook takes this factory's unpaid move payments on the move's target only (on none
        if the target is gone)."""
        target = self._node.channels().get(record.moving_to or "", {})
        for inv in self._unpaid_moves(record):
            self._guards.expect_move(str(inv["payment_hash"]), target)

    def _drop_unpaid_moves(self, record: store.ClientRecord) -> None:
        """Delete this factory's unpaid move invoices: only a payment our hook guards (its target
        channel known) may ever pay one."""
        try:
            unpaid = self._unpaid_moves(record)
        except Exception as e:
            log.warning("factory %s: move invoices unknown: %s", record.instance_id[:16], e)
            return
        for inv in unpaid:
            label = str(inv.get("label", ""))
            try:
                self._node.rpc.call("delinvoice", {"label": label, "status": "unpaid"})
            except Exception as e:  # paid or expired meanwhile: nothing to drop
                log.info("move invoice %s not deleted: %s", label, why(e))

    def _check_arrived(self, label: str, sent_msat: int, cap_msat: int) -> None:
        """Our own invoice says what reached the target: what we sent less at most the cap."""
        invoices = self._node.rpc.call("listinvoices", {"label": label}).get("invoices", [])
        paid = [i for i in invoices if i.get("status") == "paid"]
        received = msat(paid[0].get("amount_received_msat", 0)) if paid else 0
        solvency.check_move_arrived(sent_msat, received, cap_msat)

    def _close(self, old: dict[str, Any]) -> None:
        """Start the cooperative close and return: `close` waits for the LSP, and with
        `unilateraltimeout` 0 it never falls back to a commitment that could never confirm."""
        cid = str(old["channel_id"])

        def close() -> None:
            try:
                self._node.rpc.call("close", {"id": cid, "unilateraltimeout": 0})
            except Exception as e:
                log.info("close %s: %s", cid[:16], why(e))

        threading.Thread(target=close, name="superscalar-close", daemon=True).start()

    def _wait_closing(self, record: store.ClientRecord) -> None:
        def retired() -> bool:
            old = self._old_channel(record)
            return old is None or old.get("state") in RETIRED

        self._wait(retired, "a closing state")

    @staticmethod
    def _wait(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + CLOSE_WAIT
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.5)
        raise MoveRefused(f"the old channel did not reach {what} within {CLOSE_WAIT:g}s")

    # --- 3. hand over (worker) ------------------------------------------------------------------

    def _hand_over(self, instance: str) -> None:
        record = self._records.get(instance)
        if not isinstance(record, store.ClientRecord) or record.state not in LIVE:
            return
        try:
            self.check_handover(record)
        except (SolvencyRefused, MoveRefused) as e:
            kind = getattr(e, "kind", "target")
            peer_log.warning(
                f"{record.lsp_node_id}:key:{kind}", "factory %s: no key: %s", instance[:16], e
            )
            self._tell(record, f"no key: {e}")
            return
        record = record.replace(state=store.ClientState.HANDED_OVER)
        self._records.persist(record)  # before the key leaves: we never exit this factory again
        self._guards.refresh()
        log.info("factory %s: balance moved out; handing our key to the LSP", instance[:16])
        self._send_key(record)

    def check_handover(self, record: store.ClientRecord) -> None:
        """The solvency guard's KEY_HANDOVER, on what our node shows now (fails closed): every
        channel of this factory (its leaf's and every sale's, whoever bought it) is counted,
        with its HTLCs, against one dust allowance; the move's target must still be ours."""
        solvency.check_no_withheld_purchase(
            solvency.Step.KEY_HANDOVER, withheld_purchases(record, self._node.payment)
        )
        channels = self._node.channels()
        leaf = leaf_txid(record)
        sales = {e.sale_txid for e in record.sales}
        held = [
            HeldChannel(
                str(ch.get("channel_id", cid)),
                str(ch.get("state", "")),
                msat(ch.get("to_us_msat", 0)),
                len(ch.get("htlcs") or ()),
            )
            for cid, ch in channels.items()
            if ch.get("peer_id") == record.lsp_node_id
            and (ch.get("funding_txid") == leaf or ch.get("funding_txid") in sales)
        ]
        old = self._old_channel(record)
        old_id = str(old.get("channel_id")) if old is not None else None
        target = self._moving_target(record, record.moving_to) if record.moving_to else None
        solvency.check_key_handover(
            next((c for c in held if c.channel_id == old_id), None),
            tuple(c for c in held if c.channel_id != old_id),
            HANDOVER_DUST_MSAT,
            SHUTTING,
            target,
            self._node.config.move_min_depth,
        )

    def _send_key(self, record: store.ClientRecord) -> None:
        secret = self._node.client_key(record.instance_id)
        try:
            self._peers.send(
                record.lsp_node_id, protocol.Key(bytes.fromhex(record.instance_id), secret)
            )
        except PeerUnreachable as e:
            log.info("could not hand over the key of %s yet: %s", record.instance_id[:16], e)

    def _tell_latest(self, instance: str, reason: str) -> None:
        record = self._records.get(instance)
        if isinstance(record, store.ClientRecord):
            self._tell(record, reason)

    def _tell(self, record: store.ClientRecord, reason: str) -> None:
        text = protocol.Text(protocol.PayloadType.REJECT, bytes.fromhex(record.instance_id), reason)
        try:
            self._peers.send(record.lsp_node_id, text)
        except PeerUnreachable as e:
            log.info("could not tell the LSP: %s", e)


def _scid(ch: dict[str, Any], side: str) -> str:
    """The id the hop knows the channel by: its real scid once confirmed, else the alias of
    `side` (our own alias to leave through it, the LSP's to have the LSP forward into it)."""
    return str(ch.get("short_channel_id") or (ch.get("alias") or {}).get(side))


def forward_fee_msat(amount_msat: int, base_msat: int, ppm: int) -> int:
    """BOLT 7: fee_base_msat + amount * fee_proportional_millionths / 1,000,000 (rounded up, so
    the LSP never sees too little)."""
    return base_msat + (amount_msat * ppm + 999_999) // 1_000_000


def movable_msat(spendable_msat: int, receivable_msat: int, base_msat: int, ppm: int) -> int:
    """The most we can pay ourselves across: amount plus the LSP's fee within what the old
    channel lets us spend, the amount within what the target can receive."""
    amount = min(receivable_msat, (spendable_msat - base_msat) * 1_000_000 // (1_000_000 + ppm))
    while amount > 0 and amount + forward_fee_msat(amount, base_msat, ppm) > spendable_msat:
        amount -= 1
    return max(0, amount)
