"""`close` as lightningd v26.06.6 does it (lightningd/closing_control.c, channel_control.c,
peer_control.c drop_to_chain), on the fake's channels.

- `id` is a peer id (its one closable channel), a channel id or a short channel id / alias, with
  lightningd's errors.
- The closer's channel goes CHANNELD_SHUTTING_DOWN ("User or plugin invoked close command").
  With the peer connected and no HTLC in flight, both sides negotiate at once: the peer goes
  CHANNELD_SHUTTING_DOWN ("Peer closes channel"), then both CLOSINGD_SIGEXCHANGE ("Start
  closingd") and CLOSINGD_COMPLETE ("Closing complete"); every change is a
  `channel_state_changed` notification on its node. The result is
  `{"type": "mutual", "txs": [closing tx], "txids": [...]}` (v26 returns arrays; `tx`/`txid`
  are gone).
- The closing tx spends the funding output to both shutdown scripts (BIP 69 order), the opener
  paying the fee at the mutual_close feerate (3750 perkw: 2895 sat for two P2TR outputs, as a
  real node agrees). It is broadcast once its funding tx is in the harness chain (mempool or
  block), else retried every block as lightningd's rebroadcast does (a factory channel's leaf
  may never appear: the channel then stays CLOSINGD_COMPLETE). When it confirms, both channels
  go FUNDING_SPEND_SEEN then ONCHAIN, and are forgotten 100 blocks later.
- A channel whose opener withheld its funding (fundchannel_complete withhold=true) is simply
  forgotten by that node after the negotiation, with no closing tx (`txs` empty).
- Peer offline (or HTLCs in flight): the channel stays CHANNELD_SHUTTING_DOWN and the call waits;
  negotiation happens when the peer reconnects (or the HTLCs clear). After `unilateraltimeout`
  seconds (default 48 h; 0 = wait forever, as lightningd) the channel goes AWAITING_UNILATERAL
  ("Forcibly closed by `close` command timeout") and the result is `{"type": "unilateral"}` with
  no transactions (the fake has no commitment transactions). A waiting call ends when its node
  stops. Every channel `close` was asked for is recorded in `FakeNode.closed_channels`.

Not modelled: fee negotiation (`fee_negotiation_step`, `feerange` are accepted and ignored),
`wrong_funding`, leases, the `unopened` case of an uncommitted v2 channel.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from .bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CTransaction,
    address_to_script,
    lx,
    multisig_2of2,
    regtest,
    txid_hex,
)
from .errors import JSONRPC2_INVALID_PARAMS, LIGHTNINGD, RpcFail
from .state import Channel, state_note

if TYPE_CHECKING:
    from .node import FakeNode

CAN_CLOSE = {
    "CHANNELD_NORMAL",
    "CHANNELD_AWAITING_SPLICE",
    "CHANNELD_AWAITING_LOCKIN",
    "CLOSINGD_SIGEXCHANGE",
    "CHANNELD_SHUTTING_DOWN",
}
WANTS_PEERCOMMS = {
    "CHANNELD_AWAITING_LOCKIN",
    "CHANNELD_NORMAL",
    "CHANNELD_AWAITING_SPLICE",
    "CLOSINGD_SIGEXCHANGE",
    "CHANNELD_SHUTTING_DOWN",
}
MUTUAL_CLOSE_FEERATE = 3750  # FEERATES_PERKW["mutual_close"]
DUST_SAT = 546
DEFAULT_UNILATERAL_TIMEOUT = 48 * 3600
Notes = list[tuple["FakeNode", str, dict[str, Any]]]


def _badparam(name: str, what: str, token: str) -> RpcFail:
    """lightningd's command_fail_badparam (the token as JSON, quotes included)."""
    return RpcFail(JSONRPC2_INVALID_PARAMS, f"{name}: {what}: invalid token '\"{token}\"'")


def find_channel(me: FakeNode, target: str) -> Channel:
    """param_channel_or_peer (caller holds network.state_lock)."""
    target = target.lower()
    if re.fullmatch(r"0[23][0-9a-f]{64}", target) and (
        target in me.peers or any(c.peer_id == target for c in me.channels)
    ):
        chans = [c for c in me.channels if c.peer_id == target and c.state in CAN_CLOSE]
        if len(chans) > 1:
            raise RpcFail(
                LIGHTNINGD, "Peer has multiple channels: use channel_id or short_channel_id"
            )
        if not chans:
            raise RpcFail(LIGHTNINGD, "Peer has no active channel")
        return chans[0]
    if re.fullmatch(r"[0-9a-f]{64}", target):
        for c in me.channels:
            if c.channel_id == target and c.state in WANTS_PEERCOMMS:
                return c
        raise _badparam("id", "Channel id not found", target)
    if re.fullmatch(r"\d+x\d+x\d+", target):
        for c in me.channels:
            if target == c.alias_local or target == c.scid:  # privacy leak ok here
                if c.state not in CAN_CLOSE:
                    raise _badparam("id", f"Channel in state {c.state}", target)
                return c
        raise _badparam("id", "Short channel id not found", target)
    raise _badparam("id", "should be a channel ID or short channel ID", target)


def rpc_close(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    net = me.network
    target = str(p["id"])
    timeout = int(p.get("unilateraltimeout", DEFAULT_UNILATERAL_TIMEOUT))
    notes: Notes = []
    with net.state_lock:
        ch = find_channel(me, target)
        if "destination" in p:
            script = address_to_script(str(p["destination"]))
            if script is None:
                raise RpcFail(JSONRPC2_INVALID_PARAMS, "Invalid close destination")
            if ch.state in ("CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE") and (
                script.hex() != ch.close_to
            ):
                raise RpcFail(
                    JSONRPC2_INVALID_PARAMS,
                    f"Destination address {ch.close_to} does not match "
                    f"already-sent shutdown script {script.hex()}",
                )
            ch.close_to = script.hex()
        if ch.state in ("CHANNELD_NORMAL", "CHANNELD_AWAITING_SPLICE", "CHANNELD_AWAITING_LOCKIN"):
            ch.closer = ch.closer or "local"
            change = ch.set_state(
                "CHANNELD_SHUTTING_DOWN", "user", "User or plugin invoked close command"
            )
            notes.append((me, "channel_state_changed", state_note(ch, change)))
        me.closed_channels.append(ch.channel_id or "")
        notes.extend(_negotiate_locked(me, ch))
    _send(notes)
    rebroadcast(me)
    other = net.node_by_id(ch.peer_id)
    if other is not None:
        rebroadcast(other)
    if me.connected_peer(ch.peer_id) is None:
        msg = "peer is offline, will negotiate once they reconnect"
        if timeout:
            msg += f" ({timeout} seconds before unilateral close)"
        me.log(f"close {target}: {msg}.")
    deadline = time.monotonic() + timeout if timeout else None
    with net.peer_cond:
        while ch.close_result is None:
            if not me.up:
                raise RpcFail(LIGHTNINGD, "harness: the node stopped while `close` waited")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            net.peer_cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        if ch.close_result is None:
            change = ch.set_state(
                "AWAITING_UNILATERAL", "user", "Forcibly closed by `close` command timeout"
            )
            notes = [(me, "channel_state_changed", state_note(ch, change))]
            ch.close_result = {"txs": [], "txids": [], "type": "unilateral"}
        else:
            notes = []
        result = dict(ch.close_result)
    _send(notes)
    me.log(f"close {target}: {result['type']}")
    return result


def _send(notes: Notes) -> None:
    for node, topic, payload in notes:
        node.notify(topic, payload)


def _negotiate_locked(me: FakeNode, ch: Channel) -> Notes:
    """closingd for `ch` (our side, already shutting down) and the peer's side, if the peer is
    connected and no HTLC is in flight. Caller holds network.state_lock."""
    from .lightningd_rpcs import mirror_channel

    if ch.state not in ("CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE"):
        return []
    other, theirs = mirror_channel(me, ch)
    if other is None or theirs is None or me.connected_peer(ch.peer_id) is None or ch.htlcs:
        return []
    notes: Notes = []
    if theirs.state in ("CHANNELD_NORMAL", "CHANNELD_AWAITING_SPLICE", "CHANNELD_AWAITING_LOCKIN"):
        theirs.closer = theirs.closer or "remote"
        change = theirs.set_state("CHANNELD_SHUTTING_DOWN", "remote", "Peer closes channel")
        notes.append((other, "channel_state_changed", state_note(theirs, change)))
    if theirs.state not in ("CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE") or theirs.htlcs:
        return notes
    tx = _closing_tx(me, ch, theirs)
    txid = txid_hex(tx)
    fee = ch.amount_sat - sum(int(o.nValue) for o in tx.vout)
    for node, c in ((me, ch), (other, theirs)):
        for new, message in (
            ("CLOSINGD_SIGEXCHANGE", "Start closingd"),
            ("CLOSINGD_COMPLETE", "Closing complete"),
        ):
            if c.state == new:
                continue
            change = c.set_state(new, c.cause, message)
            notes.append((node, "channel_state_changed", state_note(c, change)))
        c.closing_tx, c.closing_txid, c.closing_fee_sat = tx.serialize().hex(), txid, fee
        c.billboard = (
            f"CLOSINGD_SIGEXCHANGE:We agreed on a closing fee of {fee} satoshi for tx:{txid}"
        )
        if c.withheld:
            # drop_to_chain: "Withheld channel: not sending a close transaction"
            node.channels.remove(c)
            node.log(f"Withheld channel {c.channel_id}: not sending a close transaction")
            c.close_result = {"txs": [], "txids": [], "type": "mutual"}
        else:
            c.close_result = {"txs": [c.closing_tx], "txids": [txid], "type": "mutual"}
    me.network.peer_cond.notify_all()
    me.log(f"mutual close of {ch.channel_id} agreed: {txid} (fee {fee} sat)")
    return notes


def _closing_tx(me: FakeNode, ours: Channel, theirs: Channel) -> CTransaction:
    """The mutual close: the funding output to both shutdown scripts, outputs in BIP 69 order,
    the opener paying the fee, dust outputs left out."""
    assert ours.funding_txid is not None and ours.funding_outnum is not None
    outputs: list[tuple[int, bytes]] = []
    for c in (ours, theirs):
        sat = c.our_msat // 1000
        if c.opener == "local":
            sat -= _closing_fee(ours, theirs)
        if sat >= DUST_SAT and c.close_to:
            outputs.append((sat, bytes.fromhex(c.close_to)))
    outputs.sort()
    witness_script = multisig_2of2(ours.our_funding_pubkey, ours.their_funding_pubkey)
    with regtest():
        from bitcointx.core import CTxInWitness, CTxWitness
        from bitcointx.core.script import CScriptWitness

        dummy_sig = bytes([0x30, 0x44]) + bytes(68) + bytes([0x01])
        return CTransaction.from_instance(
            CMutableTransaction(
                [
                    CMutableTxIn(
                        COutPoint(lx(ours.funding_txid), ours.funding_outnum), nSequence=0xFFFFFFFF
                    )
                ],
                [CMutableTxOut(sat, CScript(script)) for sat, script in outputs],
                nLockTime=0,
                nVersion=2,
                witness=CTxWitness(
                    [CTxInWitness(CScriptWitness([b"", dummy_sig, dummy_sig, witness_script]))]
                ),
            )
        )


def _closing_fee(ours: Channel, theirs: Channel) -> int:
    """mutual_close feerate x the closing tx's weight (lightningd's estimate: 73-byte sigs)."""
    outs = sum(8 + 1 + len(bytes.fromhex(c.close_to or "")) for c in (ours, theirs))
    weight = 4 * (4 + 1 + 41 + 1 + outs + 4) + 2 + (1 + 1 + 74 + 74 + 72)
    return MUTUAL_CLOSE_FEERATE * weight // 1000


def maybe_negotiate(a: FakeNode, b: FakeNode) -> None:
    """Channels between `a` and `b` waiting to close negotiate if they can now (the peer came
    back, the last HTLC cleared)."""
    net = a.network
    notes: Notes = []
    with net.state_lock:
        for node, peer in ((a, b), (b, a)):
            for ch in list(node.channels):
                if ch.peer_id == peer.node_id and ch.closer == "local":
                    notes.extend(_negotiate_locked(node, ch))
    _send(notes)
    rebroadcast(a)


def on_reconnect(a: FakeNode, b: FakeNode) -> None:
    maybe_negotiate(a, b)


def rebroadcast(me: FakeNode) -> None:
    """Broadcast our agreed closing txs whose funding tx the chain knows (lightningd retries
    every block; bitcoind refuses a tx whose input it has never seen)."""
    net = me.network
    chain = net.chain
    pending: list[tuple[Channel, str]] = []
    with net.state_lock:
        for ch in me.channels:
            if (
                ch.closing_tx
                and ch.closing_txid
                and ch.state == "CLOSINGD_COMPLETE"
                and ch.closing_txid not in chain.txs
            ):
                pending.append((ch, ch.closing_tx))
    for ch, raw in pending:
        if ch.funding_txid not in chain.txs:
            if not ch.missing_funding_logged:
                me.log(
                    f"closing tx {ch.closing_txid}: funding {ch.funding_txid} unknown to "
                    "bitcoind (missing inputs): lightningd keeps rebroadcasting it"
                )
                ch.missing_funding_logged = True
            continue
        try:
            with regtest():
                net.broadcast(CTransaction.deserialize(bytes.fromhex(raw)), by=me)
        except ValueError as e:
            me.log(f"closing tx {ch.closing_txid} refused: {e}", "unusual")


CLOSING_HANDLERS = {"close": rpc_close}
