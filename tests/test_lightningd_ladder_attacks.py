"""Against a real lightningd: attacks on a factory's migration, and a client restarted mid-move.

A client hands over its key of the old factory only once its balance has left it (`move.py`); the
LSP spends the old funding output only with every key (`winddown.py`). Here the LSP, a co-client
or a stranger tries to get a key early, a client takes the new channel and never hands over, and
a client restarts mid-move. Messages are sent raw with `sendcustommsg`, built with the engine's
own encoders. Migrations are started by hand (`factory-migrate`); lives are short, as in
test_lightningd_ladder.py. Runs whenever `lightningd` is on PATH.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from real_node import (
    LADDER,
    PLUGIN,
    channel,
    connect_by_ip,
    direct_route,
    factory_message,
    facts_plugin,
    fill,
    invoice,
    lsp_and_clients,
    migrate,
    mine_to,
    normal,
    open_factory,
    open_unbroadcast_channel,
    pay_both_ways,
    require_lightningd,
    send_route,
    start_payment,
    status,
    steer,
    to_us_msat,
)

from superscalar_plugin.engine import protocol
from superscalar_plugin.plugin.lightningd.config import FACTORY_PUSH_MSAT

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402

BY_HAND = {**LADDER, "superscalar-ladder-every": 0}  # no successor but by factory-migrate
FACTORY, CHANNEL = protocol.MoveTarget.FACTORY, protocol.MoveTarget.CHANNEL
NOT_OURS = "target factory is not one of ours with this LSP"
UNCHECKED = (
    "move_payment refused (target_unchecked): the target channel is not one we can enforce"
    " (its funding or our channel script is not checked)"
)
IN_FACTORY = "target channel lives in a factory; name the factory instead"
NOT_THE_LSPS = "target channel is not a channel with this LSP"
FLOOR_MSAT = 546_000  # lightningd's floor reserve, left in the retired channel (DESIGN 3.14)
FEE_MSAT = 2_000  # the LSP's forwarding fee on the move (1 msat + 10 ppm on regtest)


def _move(instance: str, kind: protocol.MoveTarget, target: str) -> str:
    return factory_message(protocol.Move(bytes.fromhex(instance), kind, bytes.fromhex(target)))


def _key(instance: str) -> str:
    """A KEY with a secret that is nobody's key of `instance`."""
    return factory_message(protocol.Key(bytes.fromhex(instance), os.urandom(32)))


def _text(instance: str, reason: str) -> protocol.Text:
    """A client's refusal (REJECT) for `instance`."""
    return protocol.Text(protocol.PayloadType.REJECT, bytes.fromhex(instance), reason)


def _entry(lsp: Any, instance: str, client: Any) -> dict[str, Any]:
    """The LSP's factory-status entry for `client` in `instance`."""
    [entry] = [c for c in status(lsp, instance)["clients"] if c["node_id"] == client.info["id"]]
    return dict(entry)


def _open(bitcoind: Any, lsp: Any, clients: list[Any], **extra: Any) -> str:
    """A small factory, its channels open, its funding (and so the LSP's change) confirmed."""
    instance = str(open_factory(lsp, clients, **extra)["instance"])
    wait_for(lambda: status(lsp, instance)["state"] == "funded")
    bitcoind.generate_block(1)
    wait_for(lambda: status(lsp, instance)["funding"]["confirmations"] >= 1)
    return instance


def _lines(node: Any, pattern: str) -> int:
    node.daemon.logs_catchup()
    return sum(1 for line in node.daemon.logs if re.search(pattern, line))


def _mine_until(bitcoind: Any, nodes: list[Any], done: Callable[[], bool], blocks: int) -> None:
    """One block at a time, each seen by every node and given a moment, until `done()`."""
    for _ in range(blocks):
        if done():
            return
        mine_to(bitcoind, nodes, bitcoind.rpc.getblockcount() + 1)
        time.sleep(0.5)
    assert done()


def _moves(node: Any) -> list[str]:
    """The status of each move payment `node` sent (circular, labelled by move.py)."""
    payments = node.rpc.listsendpays()["payments"]
    return [p["status"] for p in payments if p.get("label", "").startswith("superscalar-move")]


def _no_logged_errors(*nodes: Any) -> None:
    for n in nodes:
        assert not n.daemon.is_in_log(r"superscalar.*(Traceback|internal error)")


# --- 1. a hostile LSP asks for the key before the balance moved ---------------------------------


def test_a_client_refuses_moves_it_cannot_follow_and_keeps_its_key(
    node_factory: Any, bitcoind: Any, tmp_path: Any
) -> None:
    """The LSP names targets a client must refuse: the old factory itself, a factory it does not
    know, a zero-conf channel with the LSP, a confirmed channel with someone else, the old
    factory channel; and a MOVE for a factory the client is not in. The client answers each with
    a refusal and moves nothing; no KEY leaves it."""
    # The client answers opens with mindepth 0 (FACTS_PLUGIN), so the LSP can open a zero-conf
    # channel to it beside the factory.
    lsp, [me] = lsp_and_clients(
        node_factory, 1, BY_HAND, {"plugin": [PLUGIN, facts_plugin(tmp_path)]}
    )
    old = open_factory(lsp, [me])["instance"]
    fill(lsp, [me], 40_000_000)  # before any other channel: over the factory channel
    mine = _entry(lsp, old, me)["channel_id"]
    stranger = node_factory.get_node()
    connect_by_ip(stranger, me)
    stranger.fundwallet(2_000_000)
    foreign = stranger.rpc.fundchannel(me.info["id"], 300_000, announce=False)["channel_id"]
    bitcoind.generate_block(6)
    wait_for(lambda: "short_channel_id" in channel(me, foreign) and normal(me, stranger))
    zero_conf = open_unbroadcast_channel(lsp, me, 300_000)
    assert "short_channel_id" not in channel(me, zero_conf)
    before = int(channel(me, mine)["to_us_msat"])

    # Each refusal differs from the one before it, so the LSP's record shows each was answered
    # (and, after the dropped MOVE, that the client had read it: one worker, in order).
    attacks = [
        (old, FACTORY, old, NOT_OURS),
        (old, CHANNEL, zero_conf, UNCHECKED),
        (old, FACTORY, os.urandom(32).hex(), NOT_OURS),
        (old, CHANNEL, foreign, NOT_THE_LSPS),
        (os.urandom(32).hex(), FACTORY, old, None),  # not its factory: dropped, no answer
        (old, CHANNEL, mine, IN_FACTORY),
    ]
    for instance, kind, target, refusal in attacks:
        lsp.rpc.sendcustommsg(me.info["id"], _move(instance, kind, target))
        if refusal is not None:
            wait_for(lambda r=refusal: _entry(lsp, old, me).get("refusal") == r)

    entry = _entry(lsp, old, me)
    assert entry["handed_over"] is False and "moved_to" not in entry
    view = status(me, old)
    assert view["state"] == "funded" and view["moving_to"] is None
    assert view["phase"] in ("active", "dying")  # not "moving" ("dying": by its own dying-blocks)
    lsp_view = status(lsp, old)
    assert lsp_view["phase"] == "active" and lsp_view["clients_inside"] == 1
    assert "handover_txid" not in lsp_view
    assert int(channel(me, mine)["to_us_msat"]) == before
    assert _moves(me) == []
    # The factory channel pays both ways. (The zero-conf channel beside it, which no signed
    # factory of ours funds, takes no HTLC on the client: `pay` could pick it, so name the
    # factory channel.)
    for payer, payee in ((lsp, me), (me, lsp)):
        inv = invoice(payee, 10_000_000)
        assert send_route(payer, direct_route(payer, payee, mine, inv), inv)["status"] == "complete"
    # What a peer triggers at will is logged once a minute per kind: two kinds, five refusals.
    assert _lines(me, "refusing to move out of") == 2
    assert _lines(me, "dropped MOVE from") == 1
    assert _lines(lsp, "did not move out of") == 1
    _no_logged_errors(lsp, me)


def test_a_dear_fee_or_an_unconfirmed_successor_takes_nothing(
    node_factory: Any, bitcoind: Any
) -> None:
    """The LSP migrates, keeps the successor's funding below the clients' move depth and then
    sets a 10^9 ppm fee on the successor's channels. Below the depth nobody is asked to move
    (a client asked early refuses, "target_unconfirmed": tests/test_plugin_migration.py); at it
    the clients refuse the fee ("fee_above_cap"), before any payment: no move payment, no key,
    every balance where it was, and the old channels pay both ways."""
    lsp, clients = lsp_and_clients(node_factory, 2, BY_HAND)
    nodes = [lsp, *clients]
    old = _open(bitcoind, lsp, clients)
    fill(lsp, clients, 40_000_000)
    before = {c.info["id"]: to_us_msat(c, lsp) for c in clients}
    new = lsp.rpc.call("factory-migrate", {"instance": old})
    mine_to(bitcoind, nodes, bitcoind.rpc.getblockcount() + 2)  # one short of the depth

    def refusals(kind: str) -> bool:
        return all(kind in (_entry(lsp, old, c).get("refusal") or "") for c in clients)

    time.sleep(2)
    assert not any(_entry(lsp, old, c).get("refusal") for c in clients)  # asked at the depth
    for c in new["clients"]:
        lsp.rpc.setchannel(c["channel_id"], feeppm=10**9)
    for c in clients:
        wait_for(
            lambda c=c: all(
                (ch.get("updates") or {}).get("remote", {}).get("fee_proportional_millionths")
                == 10**9
                for ch in c.rpc.listpeerchannels(lsp.info["id"])["channels"]
                if ch["channel_id"] in {x["channel_id"] for x in new["clients"]}
            )
        )
    mine_to(bitcoind, nodes, bitcoind.rpc.getblockcount() + 1)
    wait_for(lambda: refusals("fee_above_cap"))
    mine_to(bitcoind, nodes, bitcoind.rpc.getblockcount() + 2)  # asked again: the same answer
    time.sleep(2)
    assert refusals("fee_above_cap")
    lsp_view = status(lsp, old)
    assert lsp_view["clients_inside"] == 2 and "handover_txid" not in lsp_view
    for c in clients:
        assert _moves(c) == []
        assert status(c, old)["moving_to"] is None and status(c, old)["state"] == "funded"
        assert to_us_msat(c, lsp) == {
            **before[c.info["id"]],
            **{
                x["channel_id"]: FACTORY_PUSH_MSAT
                for x in new["clients"]
                if x["node_id"] == c.info["id"]
            },
        }
    pay_both_ways(lsp, clients, 10_000_000)
    _no_logged_errors(*nodes)


def _held_migration(bitcoind: Any, lsp: Any, me: Any, old: str) -> tuple[str, str, int]:
    """Start a migration while the LSP holds every HTLC coming in over `me`'s old factory
    channel (FACTS_PLUGIN on the LSP): returns the old channel id, the new one, and what `me`
    held, once the move's payment is in flight."""
    old_cid = _entry(lsp, old, me)["channel_id"]
    held = sum(to_us_msat(me, lsp).values())
    steer(lsp, "hold", channel(lsp, old_cid)["alias"]["local"])
    new = migrate(lsp, old, bitcoind, [lsp, me])
    [new_cid] = [c["channel_id"] for c in new["clients"] if c["node_id"] == me.info["id"]]
    # Committed on both sides (the LSP's hook holds it from then on): an HTLC only offered dies
    # with the client's channeld at a restart ("Outgoing subdaemon died"), and its move fails.
    wait_for(
        lambda: [h["state"] for h in channel(me, old_cid)["htlcs"]] == ["SENT_ADD_ACK_REVOCATION"]
    )
    return old_cid, new_cid, held


def _offered_msat(me: Any, channel_id: str) -> int:
    return sum(
        int(h["amount_msat"]) for h in channel(me, channel_id)["htlcs"] if h["direction"] == "out"
    )


def _closed(bitcoind: Any, lsp: Any, me: Any, old: str) -> None:
    """Blocks until the LSP spent the old factory by key path and saw it confirm."""
    _mine_until(bitcoind, [lsp, me], lambda: status(lsp, old)["state"] == "closed", 30)
    final = status(lsp, old)
    assert final["clients_inside"] == 0 and final["handover_txid"]


def _assert_moved(me: Any, lsp: Any, held: int) -> None:
    """All that `me` held is in its one live channel with the LSP (which the LSP opened with a
    push of 1 sat), but the floor reserve left in the retired channel and the LSP's fee."""
    chans = me.rpc.listpeerchannels(lsp.info["id"])["channels"]
    live = [c for c in chans if c["state"] == "CHANNELD_NORMAL"]
    assert len(live) == 1
    left = sum(int(c["to_us_msat"]) for c in chans if c["channel_id"] != live[0]["channel_id"])
    assert left <= FLOOR_MSAT
    assert 0 <= held + FACTORY_PUSH_MSAT - int(live[0]["to_us_msat"]) - left <= FEE_MSAT


def test_an_lsp_holding_the_move_payment_gets_no_key_until_it_settles(
    node_factory: Any, bitcoind: Any, tmp_path: Any
) -> None:
    """The LSP names the real successor but holds the move's HTLC. The client gives up waiting
    for the payment (60 s), tells the LSP, keeps its key and its money (in the HTLC); asked again,
    it does not pay a second time. Once the LSP lets the payment through, the client finishes:
    old channel closed, key handed over, the old factory spent by key path."""
    lsp, [me] = lsp_and_clients(
        node_factory, 1, {**BY_HAND, "plugin": [PLUGIN, facts_plugin(tmp_path)]}
    )
    old = _open(bitcoind, lsp, [me])
    fill(lsp, [me], 40_000_000)
    old_cid, new_cid, held = _held_migration(bitcoind, lsp, me, old)
    assert status(me, old)["moving_to"] == new_cid

    def refused() -> bool:
        return (_entry(lsp, old, me).get("refusal") or "").startswith("move failed")

    wait_for(refused, timeout=120)  # the client's waitsendpay gave up
    entry = _entry(lsp, old, me)
    assert entry["handed_over"] is False and entry["moved_to"] == new_cid
    assert status(me, old)["state"] == "funded" and status(me, old)["phase"] == "moving"
    # Its money is still its own: lightningd counts an offered HTLC in to_us until it settles.
    assert _offered_msat(me, old_cid) >= held - FLOOR_MSAT - FEE_MSAT
    assert int(channel(me, old_cid)["to_us_msat"]) == held
    assert int(channel(me, new_cid)["to_us_msat"]) == FACTORY_PUSH_MSAT  # what it opened with
    mine_to(bitcoind, [lsp, me], bitcoind.rpc.getblockcount() + 1)  # the LSP asks again
    time.sleep(3)
    assert len(channel(me, old_cid)["htlcs"]) == 1  # no second payment beside the held one
    assert _entry(lsp, old, me)["handed_over"] is False
    assert "handover_txid" not in status(lsp, old)

    steer(lsp, "hold", None)
    _closed(bitcoind, lsp, me, old)
    assert status(me, old)["state"] == "handed_over"
    _assert_moved(me, lsp, held)
    pay_both_ways(lsp, [me], 10_000_000)
    _no_logged_errors(lsp, me)


# --- 2. a stranger or a co-client --------------------------------------------------------------


def test_moves_and_keys_from_a_stranger_or_a_co_client_change_nothing(
    node_factory: Any, bitcoind: Any
) -> None:
    """A co-client and a stranger send a client a MOVE into a confirmed channel with the LSP (one
    the client would follow if its LSP asked) and a KEY; they send the LSP a MOVE, a KEY with a
    made-up secret and a refusal. Every one is dropped: nobody moves, nothing is handed over."""
    lsp, clients = lsp_and_clients(node_factory, 2, BY_HAND)
    victim, co = clients
    old = _open(bitcoind, lsp, clients)  # the LSP's change confirms: it opens a channel below
    fill(lsp, clients, 40_000_000)
    stranger = node_factory.get_node(options={"plugin": PLUGIN})
    for peer in (victim, lsp):
        connect_by_ip(stranger, peer)
    connect_by_ip(co, victim)
    plain = lsp.rpc.fundchannel(victim.info["id"], 200_000, announce=False)["channel_id"]
    bitcoind.generate_block(6)
    wait_for(
        lambda: (
            "short_channel_id" in channel(victim, plain)
            and channel(victim, plain)["state"] == "CHANNELD_NORMAL"
        )
    )
    before = {c.info["id"]: to_us_msat(c, lsp) for c in clients}
    for _ in range(3):
        for sender in (co, stranger):
            sender.rpc.sendcustommsg(victim.info["id"], _move(old, CHANNEL, plain))
            sender.rpc.sendcustommsg(lsp.info["id"], _move(old, CHANNEL, plain))
            sender.rpc.sendcustommsg(lsp.info["id"], _key(old))
        co.rpc.sendcustommsg(victim.info["id"], _key(old))
        stranger.rpc.sendcustommsg(lsp.info["id"], factory_message(_text(old, "I left")))
    ids = {n: n.info["id"] for n in (co, stranger)}
    expected = [
        (victim, f"dropped MOVE from {ids[co]}: not the LSP"),
        (victim, f"dropped MOVE from {ids[stranger]}: not the LSP"),
        (victim, f"dropped KEY from {ids[co]}"),
        (lsp, f"dropped MOVE from {ids[co]} for unknown factory"),
        (lsp, f"dropped MOVE from {ids[stranger]} for unknown factory"),
        (lsp, f"refused the key {ids[co]} handed over"),  # a client, but not its key
        (lsp, f"dropped a message from {ids[stranger]}, not a client"),
    ]
    for node, line in expected:
        wait_for(lambda node=node, line=line: node.daemon.is_in_log(re.escape(line)))
    time.sleep(2)  # the repeats behind them

    lsp_view = status(lsp, old)
    assert lsp_view["phase"] == "active" and lsp_view["clients_inside"] == 2
    assert "handover_txid" not in lsp_view
    for entry in lsp_view["clients"]:
        assert entry["handed_over"] is False
        assert "refusal" not in entry and "moved_to" not in entry
    for c in clients:
        view = status(c, old)
        assert view["state"] == "funded" and view["moving_to"] is None
        assert to_us_msat(c, lsp) == before[c.info["id"]]
    pay_both_ways(lsp, clients, 10_000_000)
    for node, line in expected:  # each sent three times, logged once
        assert _lines(node, re.escape(line)) == 1
    _no_logged_errors(lsp, *clients)


# --- 3. a client takes the new channel and never hands over -------------------------------------


def _hold_incoming(lsp: Any, payee: Any, channel_id: str, expiry: int) -> None:
    """The LSP pays `payee` 10,000 sat over `channel_id` in an HTLC expiring at about `expiry`,
    which `payee` holds (FACTS_PLUGIN) and never settles."""
    steer(payee, "hold", channel(payee, channel_id)["alias"]["local"])
    inv = invoice(payee, 10_000_000)
    route = direct_route(lsp, payee, channel_id, inv)
    route[0]["cltv_out"] = expiry - lsp.rpc.getinfo()["blockheight"]  # relative to the tip
    start_payment(lsp, route, inv)
    wait_for(lambda: [h["direction"] for h in channel(payee, channel_id)["htlcs"]] == ["in"])


def _stuck(lsp: Any, stuck: Any, old: str, held: int) -> tuple[str, int]:
    """`stuck` moved its balance (`held` before) but gave up waiting for its HTLC to clear: it
    told the LSP, and a made-up KEY from it is refused. Its new channel and what it holds there."""

    def refused() -> bool:
        return (_entry(lsp, old, stuck).get("refusal") or "").startswith("move failed")

    wait_for(refused, timeout=150)  # it waits 60 s for the old channel's HTLCs to clear
    entry = _entry(lsp, old, stuck)
    assert entry["handed_over"] is False and "HTLC" in entry["refusal"]
    assert status(stuck, old)["phase"] == "moving"
    # A made-up key, then a refusal: once the LSP shows the refusal it has read the key (one
    # worker, a peer's messages in order; the refused key's log line is rate-limited away).
    stuck.rpc.sendcustommsg(lsp.info["id"], _key(old))
    stuck.rpc.sendcustommsg(lsp.info["id"], factory_message(_text(old, "after my key")))
    wait_for(lambda: _entry(lsp, old, stuck).get("refusal") == "after my key")
    assert _entry(lsp, old, stuck)["handed_over"] is False
    moved = int(channel(stuck, entry["moved_to"])["to_us_msat"])
    assert moved >= held - FLOOR_MSAT - FEE_MSAT  # its balance did move
    return str(entry["moved_to"]), moved


def _swept(lsp: Any, instance: str) -> bool:
    sweeps = status(lsp, instance).get("sweeps") or []
    return bool(sweeps) and all(s["confirmed"] for s in sweeps)


def test_a_client_that_never_hands_over_leaves_the_lsp_the_rest_through_the_timeout(
    node_factory: Any, bitcoind: Any, tmp_path: Any
) -> None:
    """One client holds an HTLC in its old channel: it moves its balance into the successor but
    cannot retire the old channel, so it never hands over (and a made-up KEY from it, or from its
    co-client, is refused). The LSP keeps the old funding unspent, shows the client inside and why,
    after the last move height says it takes the rest through the timeout, and after T sweeps what
    the tree left into its wallet. Two leaves (one client each) under a split, whose outputs
    carry the timeout leaf: the stuck client's exit leaves the other branch's output on chain for
    the sweep. (Under a kickoff, whose outputs have no timeout leaf, nothing would be swept.)"""
    lsp, clients = lsp_and_clients(
        node_factory, 2, BY_HAND, {"plugin": [PLUGIN, facts_plugin(tmp_path)]}
    )
    stuck, honest = clients
    nodes = [lsp, *clients]
    old = _open(bitcoind, lsp, clients, clients_per_leaf=1, kickoff_only_top=1)
    fill(lsp, clients, 40_000_000)
    view = status(lsp, old)
    timeout, ewt = view["timeout_height"], view["early_warning_time"]
    # Migrate late, so the successor's own timeout (and its clients' exits) stays past this test.
    mine_to(bitcoind, nodes, view["last_move_height"] - 4)
    honest.rpc.sendcustommsg(lsp.info["id"], _key(old))  # before it moves: a made-up key
    wait_for(lambda: lsp.daemon.is_in_log(f"refused the key {honest.info['id']}"))
    old_cid = _entry(lsp, old, stuck)["channel_id"]
    _hold_incoming(lsp, stuck, old_cid, timeout - ewt - 3)  # as late as the HTLC rules allow
    held = {c.info["id"]: sum(to_us_msat(c, lsp).values()) for c in clients}
    new = migrate(lsp, old, bitcoind, nodes)
    assert sorted(c["node_id"] for c in new["clients"]) == sorted(held)

    wait_for(lambda: _entry(lsp, old, honest)["handed_over"])
    _assert_moved(honest, lsp, held[honest.info["id"]])

    moved_to, moved = _stuck(lsp, stuck, old, held[stuck.info["id"]])
    lsp_view = status(lsp, old)
    assert lsp_view["phase"] == "migrating" and lsp_view["clients_inside"] == 1
    assert "handover_txid" not in lsp_view and "recovery" not in lsp_view

    mine_to(bitcoind, nodes, lsp_view["last_move_height"] + 1)
    wait_for(lambda: "recovery" in status(lsp, old))
    assert f"takes the rest through the timeout at {timeout}" in status(lsp, old)["recovery"]

    # The LSP exits the stuck client's path to enforce its HTLC, the client its own before T;
    # after T the LSP sweeps the branch nobody published.
    mine_to(bitcoind, nodes, timeout - ewt - 3 - 60)
    _mine_until(bitcoind, nodes, lambda: _swept(lsp, old), 150)
    final = status(lsp, old)
    assert "handover_txid" not in final and final["clients_inside"] == 1
    wallet = {o["txid"] for o in lsp.rpc.listfunds()["outputs"] if o["status"] == "confirmed"}
    assert all(s["txid"] in wallet for s in final["sweeps"])
    assert int(channel(stuck, moved_to)["to_us_msat"]) == moved  # its money stayed where it went
    _no_logged_errors(*nodes)


# --- 4. a client restarted mid-move -------------------------------------------------------------


def test_a_client_restarted_mid_move_finishes_it_without_losing_money(
    node_factory: Any, bitcoind: Any, tmp_path: Any
) -> None:
    """The client received MOVE and its move payment is in flight (the LSP holds it a moment)
    when it restarts. Back, it pays nothing twice; once the payment settles it closes the old
    channel and hands over, and the LSP spends the old factory by key path."""
    lsp, [me] = lsp_and_clients(
        node_factory, 1, {**BY_HAND, "plugin": [PLUGIN, facts_plugin(tmp_path)]}
    )
    old = _open(bitcoind, lsp, [me])
    fill(lsp, [me], 40_000_000)
    old_cid, new_cid, held = _held_migration(bitcoind, lsp, me, old)
    assert _entry(lsp, old, me)["handed_over"] is False

    me.restart()
    connect_by_ip(lsp, me)
    wait_for(lambda: all(channel(me, c)["peer_connected"] for c in (old_cid, new_cid)))
    assert status(me, old)["moving_to"] == new_cid  # persisted before anything moved
    assert len(channel(me, old_cid)["htlcs"]) == 1
    steer(lsp, "hold", None)

    _closed(bitcoind, lsp, me, old)
    assert status(me, old)["state"] == "handed_over"
    _assert_moved(me, lsp, held)
    assert _moves(me) == ["complete"]
    pay_both_ways(lsp, [me], 10_000_000)
    _no_logged_errors(lsp, me)
