"""The hot path: HTLC rules on factory channels and the EWT added to invoices.

Owns: the map from every factory channel's scid and aliases to its rules, and lightningd's
`cltv-final` and `max-locktime-blocks`. Built on the worker (`refresh`, off the hot path) and
swapped in whole; read by the dispatch thread's hooks with dictionary lookups only, never an RPC.
May call: lightningd's `listconfigs` and `listpeerchannels` (from `refresh` and `read_configs`).
"""

from __future__ import annotations

import logging
from typing import Any

from ...engine import policy, store
from ...engine.update_store import UpdateStage
from .node import ChannelsUnavailable, Node
from .records import LIVE, Records, is_compromised, topology, txid_of

log = logging.getLogger("superscalar")

INVOICE_PARAMS = [
    "amount_msat",
    "label",
    "description",
    "expiry",
    "fallbacks",
    "preimage",
    "exposeprivatechannels",
    "cltv",
    "deschashonly",
]


def msat(value: Any) -> int:
    return int(str(value).removesuffix("msat"))


class Guards:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records
        self.by_scid: dict[str, policy.ChannelGuard] = {}  # scid or alias -> rules
        self.channel_of: dict[str, str] = {}  # scid or alias -> channel id
        self._funding_of: dict[str, str] = {}  # channel id -> funding txid, as last listed
        # The largest EWT of our live factories: invoices carry it as soon as we are in one,
        # whether or not lightningd lists its channel yet.
        self.invoice_ewt = 0
        # Live factory channels lightningd did not list at the last refresh (just opening), and
        # the channels an LSP may open to us at any moment (a creation or a sale in flight).
        self.unmapped = 0
        self.expected: set[str] = set()  # sales in flight as buyer (cosign), by session
        # Our zero-conf channels with an LSP of ours that no signed factory or complete sale of
        # ours funds (a ceremony in flight or aborted): they take no HTLC at all.
        self.unbound: set[str] = set()
        # An LSP's DW update in flight: each client's old channel -> its new one. The client's
        # payment to itself crosses between them while both are frozen (`updates/swap.py`).
        self.swaps: dict[str, str] = {}
        # Our move payments to ourselves in flight: payment hash -> the ids (scid, aliases) of
        # the target channel, the only one it may arrive on (an LSP could forward it into any
        # other channel of ours, e.g. one of a factory that never confirms).
        self.moves: dict[str, frozenset[str]] = {}
        self.cltv_final = 18
        self.max_locktime = 2016

    def read_configs(self) -> None:
        try:
            configs = self._node.rpc.call("listconfigs").get("configs", {})
            self.cltv_final = int(configs.get("cltv-final", {}).get("value_int", 18))
            self.max_locktime = int(configs.get("max-locktime-blocks", {}).get("value_int", 2016))
        except Exception as e:
            log.info("listconfigs unavailable (%s); using cltv-final 18, max locktime 2016", e)

    def refresh(self, listed: dict[str, dict[str, Any]] | None = None) -> None:
        """Map every factory channel's scid and alias to its rules (worker, off the hot path).
        `listed`: lightningd's channels as `Node.channels` just gave them (one listing a job)."""
        records = self._records.all()
        wanted = _guards_by_channel(records)
        pinned = _move_targets(records)
        guards: dict[str, policy.ChannelGuard] = {}
        channel_of: dict[str, str] = {}
        mapped = set()
        self.invoice_ewt = max((g.early_warning_time for g in wanted.values()), default=0)
        lsps = {r.lsp_node_id for r in records if isinstance(r, store.ClientRecord)}
        # As LSP: the clients of a creation not funded yet. Their new zero-conf channels carry no
        # HTLC until the factory is funded (its guards then apply): money forwarded into a tree
        # that is not signed yet could never be enforced.
        lsps |= {
            c.node_id
            for r in records
            if isinstance(r, store.LspRecord) and r.state in CREATING
            for c in r.clients
        }
        unbound: set[str] = set()
        if wanted or pinned or lsps:
            try:
                listed = self._node.channels() if listed is None else listed
            except ChannelsUnavailable as e:
                # The channels we know keep their places with today's rules (a retiring
                # factory's channel is closed at once, an unbound one takes no HTLC): no rule is
                # dropped because lightningd could not answer. New channels are mapped at the
                # next refresh.
                log.warning("HTLC rules refreshed from the last channel list: %s", e)
                self.by_scid = self._rules_from_last(wanted)
                return
            for ch in listed.values():
                cid = str(ch.get("channel_id", ""))
                self._funding_of[cid] = str(ch.get("funding_txid", ""))
                key = cid if cid in wanted else None
                key = key or (ch.get("funding_txid") if ch.get("funding_txid") in wanted else None)
                if key is None and _unbound(ch, lsps):
                    unbound.add(cid)
                    for scid in _scids(ch):
                        channel_of[scid], guards[scid] = cid, NO_HTLC
                    continue
                if key is None and cid not in pinned:
                    continue
                if key is not None:
                    mapped.add(key)
                for scid in _scids(ch):
                    channel_of[scid] = cid
                    if key is not None:
                        guards[scid] = wanted[key]
        self.swaps = _swap_routes(records)
        self.channel_of = channel_of  # before the guards: a guarded scid always has its id
        self.by_scid = guards  # one atomic swap; readers never see a half-built map
        self.unbound = unbound
        in_ceremony = sum(1 for r in records if r.state in SIGNING_STATES)
        self.unmapped = len(set(wanted) - mapped) + in_ceremony

    def _rules_from_last(
        self, wanted: dict[str, policy.ChannelGuard]
    ) -> dict[str, policy.ChannelGuard]:
        rules = {}
        for scid, cid in self.channel_of.items():
            rule = wanted.get(cid) or wanted.get(self._funding_of.get(cid, ""))
            if rule is None and cid in self.unbound:
                rule = NO_HTLC
            if rule is not None:
                rules[scid] = rule
        return rules

    def ceremony_started(self) -> None:
        """A ceremony of ours began (its record persisted), or a factory slot's channel is being
        opened to us: until the next refresh counts it, an HTLC on a channel not mapped yet makes
        the hook map it first. What a refresh would do for it, without listing every channel
        (one listing per client on a creation's path)."""
        self.unmapped += 1

    def expect_move(self, payment_hash: str, target: dict[str, Any]) -> None:
        """Our move payment `payment_hash` may arrive only on the channel `target` (as listed)."""
        self.moves[payment_hash] = frozenset(_scids(target))

    def htlc_verdict(self, htlc: dict[str, Any], onion: dict[str, Any]) -> dict[str, Any]:
        """The htlc_accepted hook: dictionary lookups and comparisons only, no RPC."""
        guards, height = self.by_scid, self._node.height
        target = self.moves.get(str(htlc.get("payment_hash", "")))
        if target is not None and htlc.get("short_channel_id") not in target:
            log.warning(
                "failing our move payment: it came in on %s, not on its target channel",
                htlc.get("short_channel_id"),
            )
            amount = msat(htlc.get("amount_msat", 0))
            return {
                "result": "fail",
                "failure_message": policy.unknown_payment_details(amount, height).hex(),
            }
        outgoing_scid = onion.get("short_channel_id")
        into = self.swaps.get(self.channel_of.get(htlc.get("short_channel_id", ""), ""))
        if into is not None and into == self.channel_of.get(outgoing_scid or ""):
            return {"result": "continue", "forward_to": into}  # a client's update swap
        incoming = guards.get(htlc.get("short_channel_id", ""))
        if incoming is None and (self.unmapped or self.expected):
            # A factory channel lightningd had not listed yet (it just opened): map it now
            # rather than let its first HTLCs through unchecked. Safe on this thread: lightningd
            # calls our rpc_command hook for `invoice` only, so this RPC cannot call back here.
            self.refresh()
            guards = self.by_scid
            incoming = guards.get(htlc.get("short_channel_id", ""))
        final = outgoing_scid is None and onion.get("next_node_id") is None
        if incoming is not None:
            fail = policy.htlc_failure(
                int(htlc["cltv_expiry"]), height, incoming, msat(htlc.get("amount_msat", 0)), final
            )
            if fail is not None:
                return {"result": "fail", "failure_message": fail.hex()}
        outgoing = guards.get(outgoing_scid) if outgoing_scid else None
        if outgoing is None and outgoing_scid and (self.unmapped or self.expected):
            self.refresh()
            outgoing = self.by_scid.get(outgoing_scid)
        if outgoing is not None and "outgoing_cltv_value" in onion:
            fail = policy.htlc_failure(
                int(onion["outgoing_cltv_value"]),
                height,
                outgoing,
                msat(onion.get("forward_msat", 0)),
                final=False,
                margin=self._node.config.exit_margin,  # it would start our exit at once
            )
            if fail is not None:
                return {"result": "fail", "failure_message": fail.hex()}
        if outgoing_scid in self.channel_of:
            # Into exactly the factory channel the onion names: lightningd would otherwise pick
            # any channel to that peer with the same fees (the one with most room), e.g. the old
            # channel a client is moving its balance out of (README, "Core Lightning facts").
            return {"result": "continue", "forward_to": self.channel_of[outgoing_scid]}
        return {"result": "continue"}

    def invoice_params(self, params: Any) -> Any | None:
        """New params for an `invoice` call on a node with factory channels (cltv raised by the
        largest EWT), or None to leave the call alone."""
        ewt = self.invoice_ewt
        if not ewt:
            return None
        named = (
            dict(zip(INVOICE_PARAMS, params, strict=False))
            if isinstance(params, list)
            else dict(params)
        )
        requested = int(named.get("cltv") or self.cltv_final)
        named["cltv"] = policy.invoice_cltv(
            requested, ewt, self.max_locktime, self._node.config.exit_margin
        )
        return named


# Fails every HTLC (a timeout of 0): a channel that no signed factory of ours funds.
NO_HTLC = policy.ChannelGuard(0, 0)
SIGNING_STATES = (store.ClientState.ACCEPTED, store.ClientState.SIGNING)
CREATING = (
    store.LspState.PROPOSING,
    store.LspState.OPENING,
    store.LspState.SIGNING,
    store.LspState.COMPLETING,
)


def _unbound(ch: dict[str, Any], lsps: set[str]) -> bool:
    """A channel with one of our LSPs, on a funding that never confirmed, that is not the leaf of
    a signed factory of ours nor a sale we hold (those are `wanted`): the LSP completed it for a
    creation or a sale that is not signed (yet, or ever). Money in it could never reach the chain:
    it takes no HTLC (README, "What a client checks")."""
    return ch.get("peer_id") in lsps and not ch.get("short_channel_id")


def _scids(ch: dict[str, Any]) -> list[str]:
    ids = (ch.get("short_channel_id"), *(ch.get("alias") or {}).values())
    return [str(s) for s in ids if s]


def _move_targets(records: list[store.Record]) -> set[str]:
    """Channels the LSP asked clients to move into (a successor's, or an ordinary channel of a
    factory-close): forwards into them are pinned too, or lightningd could pick the old one."""
    return {
        c.moved_to
        for r in records
        if isinstance(r, store.LspRecord)
        for c in r.clients
        if c.moved_to and not c.handed_key
    }


def _guards_by_channel(records: list[store.Record]) -> dict[str, policy.ChannelGuard]:
    """The rules of each live factory, by channel id (LSP) or funding txid (client): its channels
    on the leaves and those on its sales (whose exit adds the sale chain: one block of slack per
    sale on the EWT)."""
    wanted: dict[str, policy.ChannelGuard] = {}
    for r in records:
        # A client's channel that is moving out (or moved, its key handed over) must take no
        # new money: the LSP may hold the old tree's keys.
        retiring = isinstance(r, store.ClientRecord) and (
            r.moving_to is not None
            or r.state is store.ClientState.HANDED_OVER
            or r.update is not None  # frozen for a DW update
        )
        if r.state not in LIVE and not retiring:
            continue
        # A compromised or retiring factory's channel takes no HTLC at all (a timeout of 0 fails
        # every one).
        timeout = 0 if is_compromised(r) or retiring else r.timeout_height
        ewt = topology(r).ewt
        guard = policy.ChannelGuard(ewt, timeout)
        if isinstance(r, store.LspRecord):
            for c in r.clients:
                if c.channel_id:
                    wanted[c.channel_id] = guard
        elif r.path:
            wanted[txid_of(r.path[-1].raw)] = guard
        wanted.update(_sale_guards(r, ewt, timeout))
        if isinstance(r, store.LspRecord):
            wanted.update(_update_frozen(r, ewt))
    return wanted


def _swap_routes(records: list[store.Record]) -> dict[str, str]:
    """Per old channel of a client in an LSP's update being signed, the client's new channel."""
    out = {}
    for r in records:
        signing = (UpdateStage.BELOW, UpdateStage.SIGNING)
        if isinstance(r, store.LspRecord) and r.update is not None and r.update.stage in signing:
            for c in r.update.clients:
                if c.channel_id:
                    out.update(dict.fromkeys(c.old_channels, c.channel_id))
    return out


def _update_frozen(r: store.LspRecord, ewt: int) -> dict[str, policy.ChannelGuard]:
    """An LSP's channels a DW update replaces (frozen while it runs, retired after) and the new
    ones it opens (until the new state is signed): no HTLC at all."""
    frozen = policy.ChannelGuard(ewt, 0)
    out = dict.fromkeys(r.retired, frozen)
    if r.update is not None:
        for c in r.update.clients:
            out.update(dict.fromkeys(c.old_channels, frozen))
            if c.channel_id and r.update.stage is not UpdateStage.SIGNED:
                out[c.channel_id] = frozen
    return out


def _sale_guards(r: store.Record, ewt: int, timeout: int) -> dict[str, policy.ChannelGuard]:
    """The sales' channels: the LSP's by channel id; a buyer's own by sale txid, and one whose
    sale we do not hold fully signed takes no HTLC (we could not put it on chain)."""
    out: dict[str, policy.ChannelGuard] = {}
    position: dict[int, int] = {}
    for e in r.sales:
        position[e.leaf] = position.get(e.leaf, 0) + 1
        guard = policy.ChannelGuard(ewt + position[e.leaf], timeout)
        if isinstance(r, store.LspRecord):
            if e.channel_id:
                out[e.channel_id] = guard
        elif e.buyer == r.client_index:
            out[e.sale_txid] = guard if e.complete else policy.ChannelGuard(ewt, 0)
    return out
