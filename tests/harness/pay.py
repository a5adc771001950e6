"""`pay` to a direct peer and `setchannel`, as lightningd v26.06.6 answers them (shapes checked
against the schemas like every other RPC).

- `pay bolt11 [amount_msat] [retry_for] ...`: the payee must be a connected peer with a channel
  that can carry the amount (the fake has no gossip, so no multi-hop route): one part over the
  channel with the most spendable (lightningd's best channel), `delay` the invoice's
  min_final_cltv_expiry plus one block, through the fake's own sendpay/waitsendpay (so every
  hook runs as for sendpay). Failure: 210 (PAY_STOPPED_RETRYING) "Ran out of routes to try..."
  as pay reports when nothing routes, or the final failure of the attempt. Not modelled: MPP,
  shadow routes, exclusions, maxfee/maxdelay budgets (a direct payment pays no fee).
- `setchannel id [feebase] [feeppm] [htlcmin] [htlcmax] [enforcedelay] [ignorefeelimits]`:
  changes `updates.local` of our channel(s) with that peer (or the channel id / scid), at once
  (the fake does not honour the old fee for `enforcedelay`; it has no gossip to delay).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .errors import JSONRPC2_INVALID_PARAMS, RpcFail
from .lightningd_rpcs import DUST_LIMIT_SAT
from .payments import rpc_decode, rpc_sendpay, rpc_waitsendpay
from .state import Channel, can_add_htlc, parse_msat, spendable_msat

if TYPE_CHECKING:
    from .node import FakeNode

PAY_STOPPED_RETRYING = 210
DEFAULT_RETRY_FOR = 60


def _best_channel(me: FakeNode, peer_id: str, amount: int) -> Channel | None:
    with me.network.state_lock:
        usable = [
            ch
            for ch in me.channels
            if ch.peer_id == peer_id
            and can_add_htlc(ch.state)
            and ch.state == "CHANNELD_NORMAL"
            and spendable_msat(ch, DUST_LIMIT_SAT) >= amount
        ]
        if me.connected_peer(peer_id) is None or not usable:
            return None
        return max(usable, key=lambda ch: spendable_msat(ch, DUST_LIMIT_SAT))


def rpc_pay(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    inv = rpc_decode(me, {"string": p["bolt11"]})
    amount = inv.get("amount_msat")
    if amount is None:
        if "amount_msat" not in p:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, "amount_msat: msatoshi parameter required")
        amount = parse_msat(p["amount_msat"], "amount_msat")
    elif "amount_msat" in p:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, "amount_msat: msatoshi parameter unnecessary")
    payee = str(inv["payee"])
    ch = _best_channel(me, payee, int(amount))
    if ch is None:
        raise RpcFail(
            PAY_STOPPED_RETRYING,
            "Ran out of routes to try after 1 attempt: see `paystatus`",
        )
    route = [
        {
            "id": payee,
            "channel": ch.scid_or_local_alias(),
            "amount_msat": int(amount),
            "delay": int(inv["min_final_cltv_expiry"]) + 1,
        }
    ]
    send = {"route": route, "payment_hash": inv["payment_hash"], "amount_msat": int(amount)}
    if "payment_secret" in inv:
        send["payment_secret"] = inv["payment_secret"]
    send["bolt11"] = p["bolt11"]
    started = time.time()
    rpc_sendpay(me, send)
    retry_for = float(p.get("retry_for", DEFAULT_RETRY_FOR))
    try:
        done = rpc_waitsendpay(me, {"payment_hash": inv["payment_hash"], "timeout": retry_for})
    except RpcFail as e:
        msg = f"Ran out of routes to try after 1 attempt: {e.message}"
        raise RpcFail(PAY_STOPPED_RETRYING, msg) from e
    return {
        "destination": payee,
        "payment_hash": inv["payment_hash"],
        "created_at": started,
        "parts": 1,
        "amount_msat": int(amount),
        "amount_sent_msat": int(done["amount_sent_msat"]),
        "payment_preimage": done["payment_preimage"],
        "status": "complete",
    }


def _selected(me: FakeNode, sel: str) -> list[Channel]:
    chans = [
        ch
        for ch in me.channels
        if sel in (ch.peer_id, ch.channel_id, ch.scid, ch.alias_local)
        and ch.state not in ("ONCHAIN", "CLOSED")
    ]
    if not chans:
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS, "id: Could not find any active channels of peer with that id"
        )
    return chans


def rpc_setchannel(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    out = []
    with me.network.state_lock:
        for ch in _selected(me, str(p["id"])):
            if "feebase" in p:
                ch.fee_base_msat = parse_msat(p["feebase"], "feebase")
            if "feeppm" in p:
                ch.fee_ppm = int(p["feeppm"])
            if "htlcmin" in p:
                ch.htlc_minimum_msat = parse_msat(p["htlcmin"], "htlcmin")
            entry: dict[str, Any] = {
                "peer_id": ch.peer_id,
                "channel_id": ch.channel_id,
                "fee_base_msat": ch.fee_base_msat,
                "fee_proportional_millionths": ch.fee_ppm,
                "ignore_fee_limits": bool(p.get("ignorefeelimits", False)),
                "minimum_htlc_out_msat": ch.htlc_minimum_msat,
                "maximum_htlc_out_msat": ch.htlc_maximum_msat(),
            }
            if ch.scid:
                entry["short_channel_id"] = ch.scid
            out.append(entry)
    return {"channels": out}


PAY_HANDLERS = {"pay": rpc_pay, "setchannel": rpc_setchannel}
