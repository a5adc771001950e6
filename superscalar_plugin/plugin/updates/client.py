"""A client's side of a DW state update: what it checks before it agrees, what it freezes, what
it checks before it signs, and what it keeps.

1. `on_update` (UPDATE from the factory's LSP): the factory is ours, live, not exiting or
   moving; the state node is on our path and the state later than ours; the channels named are
   exactly ours in this factory (our leaf's and the sales we bought there), the new capacity is
   their sum, and the LSP's push at least what we hold in them now (none carrying an HTLC).
   Persist the update (from now on the guards fail every HTLC of those channels), then READY.
2. `on_ceremony`: our `Signer`, restored from the stored path, signs only the update we agreed
   to (`agree_update`): the first changed node is that state node in a newer state, everything
   below reset, our new leaf output our own node's new channel (bound from its database) of the
   agreed capacity, and, before any nonce, the solvency guard's UPDATE_SIGNATURE on what our node
   shows: the new channel holds on our side at least all the old ones hold, and they hold no
   HTLC.
3. The signatures: persist the new path as our factory's (channel, capacity, binding; the
   folded sales dropped, the old channels retired), then STORED, then close the old channels.
   A superseded state is harmless as long as we watch the chain: our exit publishes the newest
   path, whose state node waits less than the old one (`onchain`).

An ABORT before the signatures unfreezes the old channels. After a restart with an update
pending, the old channels stay frozen until the LSP aborts (it does, when its own update was not
signed) or the new state turns out to exist: our money is in both states meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from ...engine import protocol, solvency, store
from ...engine.ceremony import ClientPolicy, ClientTerms, SignedNodeTx, Signer, SignerState
from ...engine.errors import CeremonyError
from ...engine.signed import verify_final
from ...engine.solvency import BoundChannel, Step
from ...engine.taproot import DUST_P2TR
from ...engine.tx import block_txs
from ...engine.update_store import ClientUpdate
from ..creation import funding
from ..creation.opens import ChannelOpens
from ..lightningd.config import UPDATE_PUSH_MSAT
from ..lightningd.guards import Guards, msat
from ..lightningd.node import Node
from ..lightningd.peers import Peers
from ..lightningd.ratelimit import LogLimiter
from ..lightningd.records import LIVE, Records, held_updates, is_compromised, topology, txid_of
from ..onchain.sales import withheld_purchases
from .held import entry_of, held, own_channels, still_superseded, unsigned_dropped, unsigned_tx
from .swap import SwapHolder, swap_parts, wait_fees, wait_settled

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)


SWAP_WAIT = 60.0  # seconds the new channel, then our payment into it, may take
MAX_DELAY = 2000  # blocks: below lightningd's default max-locktime-blocks (2016)


class UpdateRefused(CeremonyError):
    """An UPDATE we will not follow (told to the LSP as REJECT)."""


class UpdateClient:
    def __init__(
        self,
        node: Node,
        records: Records,
        peers: Peers,
        guards: Guards,
        opens: ChannelOpens,
        submit: Callable[[Callable[[], None]], None],
    ) -> None:
        self._opens = opens
        self._submit = submit
        self.swaps = SwapHolder()
        self._node = node
        self._records = records
        self._peers = peers
        self._guards = guards
        self._signers: dict[str, Signer] = {}

    def expects(self, instance: str) -> bool:
        return instance in self._signers

    # --- 1. agree and freeze ---------------------------------------------------------------------

    def on_update(self, peer: str, record: store.ClientRecord, p: protocol.Update) -> None:
        if record.lsp_node_id != peer:
            peer_log.warning(peer, "dropped UPDATE from %s: not the LSP", peer)
            return
        try:
            self._check(record, p)
            pending = record.update
            if pending is not None and pending.signed and pending.session != p.session.hex():
                # the LSP may hold that one: watched, and its state spent (`_signer`)
                record = record.replace(superseded=(*record.superseded, pending))
            record = record.replace(
                update=ClientUpdate(
                    p.session.hex(),
                    p.node,
                    p.state,
                    p.channel_sat,
                    p.move_msat,
                    p.leaf_stock,
                    tuple(sorted(c.hex() for c in p.old_channels)),
                )
            )
            self._records.persist(record)  # before READY: our old channels are frozen
            self._guards.refresh()
            record = self._check_balances(record, p)
            self._signers[record.instance_id] = self._signer(record)
            self._opens.accepted(record.instance_id, peer, p.channel_sat, UPDATE_PUSH_MSAT)
        except (UpdateRefused, solvency.SolvencyRefused) as e:
            self._refuse(record, str(e), p.session.hex())
            return
        self._send(
            record, protocol.UpdateStep(p.instance_id, p.session, protocol.UpdateStepKind.READY)
        )

    def _check(self, record: store.ClientRecord, p: protocol.Update) -> None:
        if record.state not in LIVE or is_compromised(record) or not record.path:
            raise UpdateRefused("factory is not a live signed factory")
        if record.state is not store.ClientState.FUNDED:
            raise UpdateRefused("factory is not funded yet")
        if record.exit is not None or record.moving_to is not None:
            raise UpdateRefused("factory is being exited or left")
        pending = record.update
        if pending is not None and pending.session != p.session.hex() and not pending.signed:
            raise UpdateRefused("another update is in flight")
        # An update we signed stays ours whatever comes next: an UPDATE naming its session again
        # would replace it with an unsigned one, and the state the LSP may hold would be
        # forgotten (red-team finding, round 13). Only its final signature may follow.
        signed = [u for u in (pending, *record.superseded) if u is not None and u.signed]
        if any(u.session == p.session.hex() for u in signed):
            raise UpdateRefused("we signed that update already: only its final signature follows")
        states = {e.node: e.state for e in record.path}
        if p.node not in states:
            raise UpdateRefused(f"node {p.node} is not on our path")
        above = [e.node for e in record.path][: [e.node for e in record.path].index(p.node)]
        for u in held_updates(record):
            if u.session != p.session.hex() and u.node in above:
                # Published, that state of a node above would void whatever we store below it
                # (its subtree spends the old output): our new channel's balance, our purchases
                # (red-team finding, round 12). Only an update of that node or above moves past it.
                raise UpdateRefused(
                    f"node {u.node} may still go on chain at state {u.state} (signed, never"
                    f" stored): an update of node {p.node} below it could be voided"
                )
        if p.state <= states[p.node]:
            raise UpdateRefused(f"node {p.node}: state {p.state} is not after our {states[p.node]}")
        mine = own_channels(record, self._node.channels())
        if sorted(c.hex() for c in p.old_channels) != mine:
            raise UpdateRefused("the channels named are not exactly ours in this factory")
        bought = sum(
            e.sold_sat for e in record.sales if e.buyer == record.client_index and e.complete
        )
        if p.channel_sat != record.channel_sat + bought:
            raise UpdateRefused(
                f"new channel of {p.channel_sat} sat; ours add up to {record.channel_sat + bought}"
            )
        if p.leaf_stock < DUST_P2TR:
            raise UpdateRefused(f"leaf stock {p.leaf_stock} sat is dust")
        solvency.check_no_withheld_purchase(
            Step.UPDATE_SIGNATURE, withheld_purchases(record, self._node.payment)
        )

    def _check_balances(self, record: store.ClientRecord, p: protocol.Update) -> store.ClientRecord:
        """What we hold now in the frozen channels (none may carry an HTLC): what must cross
        into the new channel (`swap`). The LSP's figure must agree; ours is kept."""
        channels = self._node.channels()
        old = [held(channels, c.hex()) for c in p.old_channels]
        if any(c.htlcs for c in old):
            raise UpdateRefused("our channels still carry HTLCs: try again")
        ours = sum(c.to_us_msat for c in old)
        if p.move_msat < ours:
            raise solvency.SolvencyRefused(
                Step.UPDATE_SIGNATURE,
                "balance_short",
                f"the update would move {p.move_msat} msat; we hold {ours} msat",
            )
        assert record.update is not None
        record = record.replace(update=dataclasses.replace(record.update, held_msat=ours))
        self._records.persist(record)
        return record

    def _signer(self, record: store.ClientRecord) -> Signer:
        """Our signer of this factory, restored from the stored path (re-verified), agreed to
        this update only."""
        header = record.signed_header()
        assert header is not None and record.update is not None
        u = record.update
        terms = ClientTerms(
            bytes.fromhex(record.lsp_pubkey),
            record.timeout_height,
            None,  # the new channel's script comes from our own node's database (bind)
            u.channel_sat,
            n_clients=record.n_clients,
            client_index=record.client_index,
            params=header.params,
            early_warning_time=record.early_warning_time,
            leaf_stock=u.leaf_stock,
        )
        path = [
            SignedNodeTx.from_raw(
                e.node, bytes.fromhex(e.raw), e.spent_amount, bytes.fromhex(e.spent_script)
            )
            for e in record.path
        ]
        cfg = self._node.config
        policy = ClientPolicy(max_ewt=cfg.max_ewt, max_fee_rate_kvb=cfg.max_fee_rate_kvb)
        seckey = self._node.client_key(record.instance_id)
        signer = Signer.restore(
            seckey, terms, policy, header, path, {e.node: e.state for e in record.path}
        )
        db, lsp = self._node.db, record.lsp_node_id
        signer.binder = lambda txid, vout: db.bound_channel(Step.TREE_SIGNATURE, lsp, txid, vout)
        signer.agree_update(
            terms, node=u.node, check=lambda b, m: self._solvent(record, b, m), state=u.state
        )
        for s in record.superseded:  # states the LSP may hold: a new one must move past them
            signer.spent[s.node] = max(signer.spent.get(s.node, -1), s.state)
        return signer

    def _solvent(self, record: store.ClientRecord, bound: BoundChannel, moved: bool) -> None:
        """The solvency guard before our first nonce of each ceremony, on what our node shows
        now; before the moved node, our payment to ourselves must wait in the new channel."""
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.ClientRecord) and latest.update is not None
        u = latest.update
        channels = self._node.channels()
        listed = [c for c in u.old_channels if c in channels]
        new = held(channels, bound.channel_id) if bound.channel_id in channels else None
        waiting = None
        if moved:
            htlcs = (channels.get(bound.channel_id) or {}).get("htlcs") or []
            waiting = sum(
                msat(h.get("amount_msat", 0))
                for h in htlcs
                if h.get("direction") == "in" and h.get("payment_hash") in u.swap_hashes
            )
        solvency.check_update_signature(
            [held(channels, c) for c in listed],
            new,
            len(u.old_channels),
            waiting,
            u.held_msat,
            self._node.config.max_move_fee_sat * 1000,
        )

    # --- 2. sign; 3. keep ------------------------------------------------------------------------

    def on_ceremony(self, record: store.ClientRecord, p: protocol.Ceremony) -> None:
        signer = self._signers.get(record.instance_id)
        if signer is None or record.update is None:
            return
        try:
            reply = signer.receive(p.message)
        except Exception as e:
            self._signers.pop(record.instance_id, None)
            if not record.update.signed:  # no new state can exist without our signature
                self._refuse(record, f"update refused: {e}", record.update.session)
            raise
        update = record.update
        if signer.state is SignerState.DONE:
            entries = tuple(entry_of(s, signer.states[s.node]) for s in signer.signed_path)
            self._store(record, entries, signer.bound.channel_id if signer.bound else None)
            return
        if signer.state is SignerState.BELOW_SIGNED and not update.below:
            moved = [u for u in signer.update_path if u.node == update.node]
            below = tuple(entry_of(s, signer.update_states[s.node]) for s in signer.below.values())
            unsigned = moved[0]
            update = dataclasses.replace(
                update,
                below=tuple(sorted(below, key=lambda e: e.node)),
                moved=store.PathEntry(
                    unsigned.node,
                    update.state,
                    unsigned.tx.serialize(include_witness=False).hex(),
                    unsigned.spent_amount,
                    unsigned.spent_script.hex(),
                ),
            )
            if signer.bound is not None:
                update = dataclasses.replace(update, new_channel=signer.bound.channel_id)
            self._records.persist(record.replace(update=update))  # before we ack them
            threading.Thread(
                target=self._swap, args=(record.instance_id,), name="superscalar-swap", daemon=True
            ).start()
            return
        if (
            signer.state is SignerState.PSIGS_SENT
            and signer.signing_moved_node
            and not update.signed
        ):
            update = dataclasses.replace(update, signed=True)
            self._records.persist(record.replace(update=update))  # before our signature leaves
        if reply is not None:
            self._send(record, protocol.Ceremony(p.instance_id, reply))

    def _swap(self, instance: str) -> None:
        """Mover thread (each step waits on lightningd and the LSP): pay ourselves our balance
        from the old channels into the new one, and wait until our hook holds it all; then say
        BELOW_STORED. Before the moved node nothing can confirm: a failure refuses the update."""
        record = self._records.get(instance)
        assert isinstance(record, store.ClientRecord) and record.update is not None
        session = record.update.session
        try:
            hashes, total = self._pay_to_new(record)
            deadline = time.monotonic() + SWAP_WAIT
            while self.swaps.held_msat(hashes) < total:
                if time.monotonic() > deadline:
                    raise UpdateRefused("our payment into the new channel did not arrive")
                time.sleep(0.2)
        except Exception as e:
            reason = f"moving our balance failed: {e}"
            self._submit(lambda: self._refuse_latest(instance, reason, session))
            return
        step = protocol.UpdateStepKind.BELOW_STORED
        ack = protocol.UpdateStep(bytes.fromhex(instance), bytes.fromhex(session), step)
        self._submit(lambda: self._send(record, ack))

    def _pay_to_new(self, record: store.ClientRecord) -> tuple[tuple[str, ...], int]:
        """One payment to ourselves per old channel with something to move (each its own
        invoice, all held by our hook); their hashes and their total."""
        u = record.update
        assert u is not None and u.new_channel is not None
        new = wait_fees(self._node, u.new_channel, SWAP_WAIT)
        remote = new["updates"]["remote"]
        base = msat(remote.get("fee_base_msat", 0))
        ppm = int(remote.get("fee_proportional_millionths", 0))
        channels = self._node.channels()
        old = [channels[c] for c in u.old_channels if c in channels]
        parts = swap_parts(old, msat(new.get("receivable_msat", 0)), base, ppm)
        invoices = [
            self._node.rpc.call(
                "invoice",
                {
                    "amount_msat": part.amount_msat,
                    "label": f"superscalar-update-{u.session[:16]}-{i}",
                    "description": "superscalar: state update",
                },
            )
            for i, part in enumerate(parts)
        ]
        hashes = tuple(str(inv["payment_hash"]) for inv in invoices)
        latest = self._records.get(record.instance_id)
        assert isinstance(latest, store.ClientRecord) and latest.update is not None
        swap = dataclasses.replace(latest.update, swap_hashes=hashes)
        self._records.persist(latest.replace(update=swap))  # our hook holds them from now on
        self.swaps.track(self._records.all())
        final = min(2 * topology(record).ewt + self._node.config.exit_margin + 18, MAX_DELAY)
        into = str(new.get("short_channel_id") or (new.get("alias") or {}).get("remote"))
        delta = int(remote.get("cltv_expiry_delta", 6))
        for part, inv in zip(parts, invoices, strict=True):
            route = [
                {
                    "id": record.lsp_node_id,
                    "channel": part.old_scid,
                    "amount_msat": part.amount_msat + part.fee_msat,
                    "delay": final + delta,
                },
                {
                    "id": self._node.id,
                    "channel": into,
                    "amount_msat": part.amount_msat,
                    "delay": final,
                },
            ]
            self._node.rpc.call(
                "sendpay",
                {
                    "route": route,
                    "payment_hash": inv["payment_hash"],
                    "payment_secret": inv["payment_secret"],
                    "amount_msat": part.amount_msat,
                },
            )
        return hashes, sum(x.amount_msat for x in parts)

    def _refuse_latest(self, instance: str, reason: str, session: str) -> None:
        record = self._records.get(instance)
        if isinstance(record, store.ClientRecord):
            self._signers.pop(instance, None)
            self._refuse(record, reason, session)

    def on_update_sig(self, record: store.ClientRecord, p: protocol.UpdateSig) -> None:
        """The moved node's final signature, sent again until we store (after a lost message or a
        restart): checked against the tx we kept, then our new path is complete."""
        u = record.update
        if u is None or not u.signed or u.moved is None or p.session.hex() != u.session:
            return
        moved = unsigned_tx(u.moved)
        header = record.signed_header()
        assert header is not None
        if not verify_final(moved, header.factory_keys().signing_keyagg(u.node), p.signature):
            raise CeremonyError(f"node {u.node}: the LSP's final signature is invalid")
        signed = SignedNodeTx(moved, p.signature)
        self._signers.pop(record.instance_id, None)
        self._store(record, self._new_path(record, entry_of(signed, u.state)), None)

    def adopt_from_chain(self, record: store.ClientRecord, raw_tx: bytes) -> None:
        """The moved node's tx is on chain (the LSP published the state we signed without
        sending us its signature): its witness completes our new path."""
        u = record.update
        assert u is not None and u.moved is not None
        signed = SignedNodeTx.from_raw(
            u.node, raw_tx, u.moved.spent_amount, bytes.fromhex(u.moved.spent_script)
        )
        header = record.signed_header()
        assert header is not None
        if signed.txid != txid_of(u.moved.raw) or not verify_final(
            signed.unsigned, header.factory_keys().signing_keyagg(u.node), signed.signature
        ):
            return
        self._store(record, self._new_path(record, entry_of(signed, u.state)), None)

    def on_block(self) -> None:
        """Worker, after our chain scan: an update we signed whose moved node the chain shows
        (published without its signature reaching us) is adopted from the block itself."""
        for record in self._records.all():
            if not isinstance(record, store.ClientRecord):
                continue
            confirmed = dict(record.confirmed)
            pending = [u for u in (record.update, *record.superseded) if u and u.moved]
            found = [
                (u, confirmed[txid_of(u.moved.raw)])
                for u in pending
                if u.moved and txid_of(u.moved.raw) in confirmed
            ]
            if not found:
                continue
            update, height = found[0]
            assert update.moved is not None
            try:
                raw = self._node.rpc.call("getrawblockbyheight", {"height": height})["block"]
                tx = dict(block_txs(bytes.fromhex(str(raw))))[txid_of(update.moved.raw)]
                self.adopt_from_chain(record.replace(update=update), tx)
            except Exception as e:  # asked again at the next block
                log.warning(
                    "factory %s: cannot adopt the moved node: %s", record.instance_id[:16], e
                )

    @staticmethod
    def _new_path(
        record: store.ClientRecord, moved: store.PathEntry
    ) -> tuple[store.PathEntry, ...]:
        u = record.update
        assert u is not None
        below = {e.node: e for e in u.below}
        return tuple(moved if e.node == u.node else below.get(e.node, e) for e in record.path)

    def _store(
        self,
        record: store.ClientRecord,
        path: tuple[store.PathEntry, ...],
        channel_id: str | None,
    ) -> None:
        update = record.update
        assert update is not None
        if channel_id is None:  # our new channel: the one our node holds at the new leaf
            leaf = txid_of(path[-1].raw)
            channel_id = next(
                (
                    cid
                    for cid, ch in self._node.channels().items()
                    if ch.get("funding_txid") == leaf and ch.get("peer_id") == record.lsp_node_id
                ),
                record.channel_bound,
            )
        record = record.replace(
            swaps_settled=(*record.swaps_settled, *update.swap_hashes)[-16:],
            path=path,
            channel_sat=update.channel_sat,
            channel_bound=channel_id,
            sales=(),  # the leaf changed: its sales are folded into the new channels
            retired=(*record.retired, *update.old_channels),
            update=None,
            superseded=still_superseded(record, update),
        )
        self._records.persist(record)  # the new state is ours before STORED leaves
        self.swaps.track(self._records.all())
        self.swaps.settle(update.swap_hashes)  # our balance crosses into the new channel
        self._signers.pop(record.instance_id, None)
        self._guards.refresh()
        log.info(
            "factory %s: updated to state %d of node %d",
            record.instance_id[:16],
            update.state,
            update.node,
        )
        stored = protocol.UpdateStep(
            bytes.fromhex(record.instance_id),
            bytes.fromhex(update.session),
            protocol.UpdateStepKind.STORED,
        )
        threading.Thread(
            target=self._settled_then_stored,
            args=(record, stored, channel_id, update.old_channels),
            name="superscalar-settle",
            daemon=True,
        ).start()

    def _settled_then_stored(
        self,
        record: store.ClientRecord,
        stored: protocol.UpdateStep,
        channel_id: str | None,
        old: tuple[str, ...],
    ) -> None:
        """Our payment to ourselves settles (the balance is spendable in the new channel) before
        STORED: what the LSP does next (a sale's quote) may need it. Then the old channels close."""
        if channel_id:
            wait_settled(self._node, channel_id, SWAP_WAIT)
        self._submit(lambda: self._send(record, stored))
        for cid in old:
            funding.close_retired(self._node.rpc, cid)

    # --- abort, restart ----------------------------------------------------------------------------

    def on_abort(self, record: store.ClientRecord, reason: str) -> None:
        """The LSP abandoned the update. Before our signatures left, no new state can exist: our
        old channels are ours again. After, the LSP may hold it whatever it says: they stay
        frozen (our money is in both states) until a later update replaces them or we exit."""
        signer = self._signers.pop(record.instance_id, None)
        if signer is not None:
            signer.forget()
        if record.update is None:
            return
        if record.update.signed:
            log.warning(
                "factory %s: the LSP abandoned an update we signed (%s): our old channels stay"
                " frozen until a later update or an exit",
                record.instance_id[:16],
                reason,
            )
            return
        self._records.persist(unsigned_dropped(record))
        self.swaps.track(self._records.all())
        self.swaps.fail(record.update.swap_hashes)  # our HTLCs come back in the old channels
        self._guards.refresh()
        log.warning("factory %s: update abandoned: %s", record.instance_id[:16], reason)

    def resume(self, record: store.ClientRecord) -> None:
        """After a restart the ceremony's nonces are gone: an update we had not signed is
        dropped (and the LSP told); one we signed keeps our old channels frozen (`on_abort`)."""
        if record.update is not None and not record.update.signed:
            self._refuse(record, "restarted during the update", record.update.session)

    def _refuse(self, record: store.ClientRecord, reason: str, session: str) -> None:
        peer_log.warning(
            f"{record.lsp_node_id}:update",
            "refusing an update of %s: %s",
            record.instance_id[:16],
            reason,
        )
        latest = self._records.get(record.instance_id)
        if (
            isinstance(latest, store.ClientRecord)
            and latest.update is not None
            and latest.update.session == session
            and not latest.update.signed
        ):
            self._records.persist(unsigned_dropped(latest))
            self.swaps.track(self._records.all())
            self.swaps.fail(latest.update.swap_hashes)
            self._guards.refresh()
        instance = bytes.fromhex(record.instance_id)
        self._send(record, protocol.Text(protocol.PayloadType.REJECT, instance, reason))

    def _send(self, record: store.ClientRecord, p: protocol.Payload) -> None:
        try:
            self._peers.send(record.lsp_node_id, p)
        except Exception as e:
            log.info("could not send %s to the LSP: %s", type(p).__name__, e)
