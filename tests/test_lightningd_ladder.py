"""Against a real lightningd: a factory's whole life, through the ladder into the next factory.

Clients move their balances into a successor factory by paying themselves across the LSP, retire
the old channel with a cooperative close, and hand over their key of the old factory; with every
key the LSP spends the old funding output by key path, so nobody publishes the tree. A client that
stays away during the whole dying period exits on its own. Runs whenever `lightningd` is on PATH.
"""

from __future__ import annotations

from typing import Any

from real_node import (
    LADDER,
    connect_by_ip,
    fill,
    lsp_and_clients,
    migrate,
    mine_to,
    open_factory,
    require_lightningd,
    status,
    to_us_msat,
    wallet_sat,
)

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402


def test_a_ladder_moves_every_client_and_closes_the_old_factory_by_key_path(
    node_factory: Any, bitcoind: Any
) -> None:
    # The LSP restarts mid-migration. A move it was forwarding across the restart settles after
    # it, and lightningd (not the plugin) then logs BROKEN "Unable to calculate fees collected":
    # it keeps no onion payload of HTLCs loaded from its database (wallet.c), so it cannot book
    # the forward's fee. The move itself completes; the test checks every balance.
    lsp, clients = lsp_and_clients(
        node_factory, 4, LADDER, lsp_broken_log=r"Unable to calculate fees collected"
    )
    old = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    fill(lsp, clients, 40_000_000)
    held = {c.info["id"]: sum(to_us_msat(c, lsp).values()) for c in clients}
    assert all(v >= 30_000_000 for v in held.values())
    tree_txids = {e["txid"] for c in clients for e in status(c, old["instance"])["exit_path"]}

    # Into the dying period: the ladder creates the successor and every client moves.
    view = status(lsp, old["instance"])
    mine_to(bitcoind, [lsp, *clients], view["dying_from_height"] + 1)

    def successor() -> str | None:
        s = status(lsp, old["instance"])["successors"]
        if not s:
            bitcoind.generate_block(1)
        return s[0] if s else None

    wait_for(lambda: successor() is not None, timeout=120)
    new = successor()
    assert new is not None
    lsp.restart()  # mid-migration: nothing is lost, the moves go on
    for c in clients:
        connect_by_ip(lsp, c)

    def closed() -> bool:
        s = status(lsp, old["instance"])
        if s["state"] != "closed":
            bitcoind.generate_block(1)
            return False
        return True

    wait_for(closed, timeout=240)
    final = status(lsp, old["instance"])
    assert final["phase"] == "closed" and final["clients_inside"] == 0
    assert all(c["handed_over"] for c in final["clients"])
    # One key-path spend of the funding output, before T; no tree transaction ever went out.
    spend = bitcoind.rpc.getrawtransaction(final["handover_txid"], True)
    assert [i["txid"] for i in spend["vin"]] == [final["funding"]["txid"]]
    assert len(spend["vin"][0]["txinwitness"]) == 1  # key path: one 64-byte signature
    assert bitcoind.rpc.getblockcount() < final["timeout_height"]
    for txid in tree_txids:
        assert not _in_chain(bitcoind, txid)

    # Every balance is in the new factory, which pays both ways; the old channels are retired.
    for c in clients:
        mine = status(c, old["instance"])
        assert mine["state"] == "handed_over"
        now = status(c, new)
        assert now["state"] in ("funded", "ready")
        balances = to_us_msat(c, lsp)
        states = {
            ch["channel_id"]: ch["state"]
            for ch in c.rpc.listpeerchannels(lsp.info["id"])["channels"]
        }
        live = [cid for cid, st in states.items() if st == "CHANNELD_NORMAL"]
        assert len(live) == 1
        # moved: all but lightningd's floor reserve of 546 sat (it raises a reserve of 0 to the
        # dust limit) and the LSP's forwarding fee (1 msat + 10 ppm on regtest)
        left = sum(v for cid, v in balances.items() if cid != live[0])
        assert left <= 546_000
        assert held[c.info["id"]] - balances[live[0]] - left <= 2_000
        assert all(
            st in ("CLOSINGD_COMPLETE", "CLOSINGD_SIGEXCHANGE")
            for cid, st in states.items()
            if cid != live[0]
        )
    fill(lsp, clients, 10_000_000)
    # What the migration leaves for good (README, "Retired channels"): one CLOSINGD_COMPLETE
    # channel per client on the LSP and one on each client, counted by factory-report.
    wait_for(
        lambda: (
            lsp.rpc.call("factory-report")["retired_channels"] == {"count": 4, "from_factories": 4}
        )
    )
    for c in clients:
        wait_for(
            lambda c=c: (
                c.rpc.call("factory-report")["retired_channels"]
                == {"count": 1, "from_factories": 1}
            )
        )
    for n in [lsp, *clients]:
        assert not n.daemon.is_in_log(r"superscalar.*(Traceback|internal error)")


def _in_chain(bitcoind: Any, txid: str) -> bool:
    try:
        return bool(bitcoind.rpc.getrawtransaction(txid, True).get("confirmations"))
    except Exception:
        return False


def test_a_client_away_for_the_whole_dying_period_exits_alone_and_gets_its_money(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2, LADDER)
    old = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    fill(lsp, clients, 100_000_000)
    away = clients[1]
    before = wallet_sat(away)
    away.stop()
    view = status(lsp, old["instance"])
    # Into the dying period: the ladder's successor, then blocks one by one until it is deep
    # enough for the client that is there to move (a successor still unconfirmed takes nothing).
    mine_to(bitcoind, [lsp, clients[0]], view["dying_from_height"] + 1)
    wait_for(lambda: bool(status(lsp, old["instance"])["successors"]))

    def moved() -> bool:
        if status(lsp, old["instance"])["clients"][0]["handed_over"]:
            return True
        mine_to(bitcoind, [lsp, clients[0]], bitcoind.rpc.getblockcount() + 1)
        return False

    wait_for(moved, timeout=180)
    mine_to(bitcoind, [lsp, clients[0]], view["last_move_height"] + 1)
    s = status(lsp, old["instance"])
    assert s["phase"] == "migrating" and s["clients_inside"] == 1
    assert "timeout" in s["recovery"]
    assert [c["handed_over"] for c in s["clients"]] == [True, False]
    away.start()  # back after the last chance to move: it must leave on its own

    def home() -> bool:
        bitcoind.generate_block(1)
        return wallet_sat(away) - before >= 60_000  # its 75k sat minus the exit's fees

    wait_for(home, timeout=600)


def test_factory_close_moves_every_client_into_an_ordinary_channel_and_spends_by_key_path(
    node_factory: Any, bitcoind: Any
) -> None:
    """An LSP that stops: no successor, each client moves into an ordinary on-chain channel."""
    lsp, clients = lsp_and_clients(node_factory, 2, LADDER)
    old = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    fill(lsp, clients, 40_000_000)
    held = {c.info["id"]: sum(to_us_msat(c, lsp).values()) for c in clients}
    for _ in clients:  # coins for the ordinary channels (the factory took the first one)
        lsp.fundwallet(2_000_000)
    closing = lsp.rpc.call("factory-close", {"instance": old["instance"]})
    assert closing["phase"] == "closing"
    targets = [c["moved_to"] for c in closing["clients"]]
    assert all(targets)

    def closed() -> bool:
        if status(lsp, old["instance"])["state"] == "closed":
            return True
        bitcoind.generate_block(1)  # the ordinary channels confirm, then the moves go
        return False

    wait_for(closed, timeout=240)
    final = status(lsp, old["instance"])
    assert all(c["handed_over"] for c in final["clients"])
    spend = bitcoind.rpc.getrawtransaction(final["handover_txid"], True)
    assert [i["txid"] for i in spend["vin"]] == [final["funding"]["txid"]]
    for c, target in zip(clients, targets, strict=True):
        balances = to_us_msat(c, lsp)
        assert held[c.info["id"]] - balances[target] <= 546_000 + 2_000
        chan = next(
            ch
            for ch in c.rpc.listpeerchannels(lsp.info["id"])["channels"]
            if ch["channel_id"] == target
        )
        assert chan["state"] == "CHANNELD_NORMAL" and chan.get("short_channel_id")
    fill(lsp, clients, 10_000_000)  # the ordinary channels pay both ways


def test_with_some_keys_the_lsp_takes_the_handed_over_part_by_key_path(
    node_factory: Any, bitcoind: Any
) -> None:
    """Clients 0 and 1 (one leaf) move out and hand over; 2 and 3 stay away and then 2 exits
    alone. The LSP publishes nothing it need not: it takes the output above leaf 0 (the lower
    kickoff's: kickoff, state over both leaves, kickoff, leaves) by key path as soon as that
    kickoff is on chain, and leaf 0 never goes on chain."""
    lsp, clients = lsp_and_clients(node_factory, 4, {**LADDER, "superscalar-ladder-every": 0})
    old = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    fill(lsp, clients, 40_000_000)
    leaf0 = status(clients[0], old["instance"])["exit_path"][-1]["txid"]
    clients[2].stop()
    clients[3].stop()
    migrate(lsp, old["instance"], bitcoind, [lsp, clients[0], clients[1]])

    def handed() -> bool:
        s = status(lsp, old["instance"])
        return [c["handed_over"] for c in s["clients"]] == [True, True, False, False]

    wait_for(handed, timeout=120)
    clients[2].start()  # it left its money inside: it exits on its own before T
    s = status(lsp, old["instance"])
    exit_at = s["timeout_height"] - s["early_warning_time"] - 12  # its exit-margin
    mine_to(bitcoind, [lsp, clients[0], clients[2]], exit_at - 1)

    def taken() -> bool:
        s = status(lsp, old["instance"])
        if any(sw["confirmed"] for sw in s.get("sweeps", [])):
            return True
        bitcoind.generate_block(1)
        return False

    wait_for(taken, timeout=600)
    s = status(lsp, old["instance"])
    path = status(clients[1], old["instance"])["exit_path"]
    assert [e["kind"] for e in path] == ["kickoff", "state", "kickoff", "leaf"]
    [sweep] = [sw for sw in s["sweeps"] if sw["confirmed"]]
    assert sweep["outpoint"] == f"{path[2]['txid']}:0"  # the kickoff's output above leaf 0
    spend = bitcoind.rpc.getrawtransaction(sweep["txid"], True)
    assert len(spend["vin"][0]["txinwitness"]) == 1  # key path
    assert bitcoind.rpc.getblockcount() < s["timeout_height"]
    assert not _in_chain(bitcoind, leaf0)
