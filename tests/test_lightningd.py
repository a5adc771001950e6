"""Against a real, unmodified lightningd (pyln-testing): factory channels route payments.

These run whenever `lightningd` is on PATH (Core Lightning v26.06.6 is the target) and skip with
the reason otherwise; `lightningd` is not packaged on our CI machines. pyln-testing brings its own
`bitcoind` fixture (it needs `bitcoind` on PATH: the project's build is put there below).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from real_node import (
    CHANNEL_SAT,
    PLUGIN,
    connect_by_ip,
    create_factory,
    factory_message,
    lsp_and_clients,
    no_htlcs,
    normal,
    open_factory,
    pay_both_ways,
    require_lightningd,
    wallet_sat,
    write_plugin,
)

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403  (node_factory, bitcoind, ...)
from pyln.testing.utils import wait_for  # noqa: E402


def test_factory_channels_carry_payments_both_ways_and_survive_restarts(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = lsp_and_clients(node_factory, 3)
    created = create_factory(lsp, clients)
    instance = (
        created["factories"][0]["instance"] if "factories" in created else created["instance"]
    )
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    bitcoind.generate_block(1)  # the funding tx confirms; the tree stays off-chain

    pay_both_ways(lsp, clients, 10_000_000)

    for node in [lsp, *clients]:
        node.restart()
    for c in clients:
        connect_by_ip(lsp, c)
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    pay_both_ways(lsp, clients, 5_000_000)

    lsp_view = lsp.rpc.call("factory-status", {"instance": instance})["factories"][0]
    assert lsp_view["role"] == "lsp" and lsp_view["state"] == "funded"
    for i, c in enumerate(clients):
        view = c.rpc.call("factory-status", {"instance": instance})["factories"][0]
        assert view["role"] == "client" and view["state"] == "funded"
        assert view["index"] == i and view["timeout_height"] == lsp_view["timeout_height"]
        assert view["early_warning_time"] == lsp_view["early_warning_time"]
        assert view["funding_txid"] == lsp_view["funding"]["txid"]
        assert len(view["exit_path"]) > 0
        assert lsp_view["clients"][i]["channel_state"] == "CHANNELD_NORMAL"


def test_a_normal_channel_still_opens_beside_factories(node_factory: Any, bitcoind: Any) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2)
    create_factory(lsp, clients)
    other = node_factory.get_node(options={"plugin": PLUGIN})
    other.fundwallet(2_000_000)
    other.rpc.connect(clients[0].info["id"], "localhost", clients[0].port)
    other.rpc.fundchannel(clients[0].info["id"], 300_000)
    bitcoind.generate_block(6)
    wait_for(lambda: normal(other, clients[0]))


def test_bad_factory_create_parameters_leave_nothing_behind(node_factory: Any) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2)
    ids = [c.info["id"] for c in clients]
    stranger = "02" + "11" * 32
    cases = [
        ({"clients": [*ids, stranger], "channel_sat": CHANNEL_SAT}, "not connected"),
        ({"clients": [ids[0], ids[0]], "channel_sat": CHANNEL_SAT}, "listed twice"),
        ({"clients": ids, "channel_sat": 100}, "below the minimum"),
        ({"clients": ids, "channel_sat": 10**12}, "cannot fund"),
        ({"clients": ids, "channel_sat": CHANNEL_SAT, "step_blocks": 1000}, "exceeds the limit"),
    ]
    for params, needle in cases:
        with pytest.raises(Exception, match=needle):
            lsp.rpc.call("factory-create", params)
    assert all(not o.get("reserved") for o in lsp.rpc.listfunds()["outputs"])
    assert lsp.rpc.listpeerchannels()["channels"] == []


def test_a_client_force_exits_alone_and_its_balance_reaches_its_wallet(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = lsp_and_clients(node_factory, 1)
    me = clients[0]
    created = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    inv = me.rpc.invoice(200_000_000, "exit-balance", "to the client")["bolt11"]
    assert lsp.rpc.pay(inv)["status"] == "complete"
    wait_for(lambda: no_htlcs(lsp) and no_htlcs(me))  # the payment is settled on both sides
    before = wallet_sat(me)
    lsp.stop()  # the LSP is gone: the client uses only what it stored
    me.rpc.call("factory-exit", {"instance": created["instance"]})

    def exit_done() -> bool:
        bitcoind.generate_block(1)
        view = me.rpc.call("factory-status", {"instance": created["instance"]})["factories"][0]
        return bool(view["exit"]["done"])

    wait_for(exit_done, timeout=300)

    def balance_home() -> bool:
        bitcoind.generate_block(5)  # commitment, then to_local after the to_self_delay
        return wallet_sat(me) - before >= 190_000  # 200k sat minus the commitment's fees

    wait_for(balance_home, timeout=300)


def test_the_lsp_sweeps_after_the_timeout(node_factory: Any, bitcoind: Any) -> None:
    lsp = node_factory.get_node(
        options={"plugin": PLUGIN, "superscalar-lifetime-blocks": 90}, may_reconnect=True
    )
    clients = node_factory.get_nodes(
        2, opts={"plugin": PLUGIN, "superscalar-accept-from": lsp.info["id"]}
    )
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    created = open_factory(lsp, clients)
    for c in clients:
        c.stop()  # clients that never exit lose their claim after T: the design
    bitcoind.generate_block(created["timeout_height"] - bitcoind.rpc.getblockcount() + 1)

    def swept() -> bool:
        view = lsp.rpc.call("factory-status", {"instance": created["instance"]})["factories"][0]
        if view.get("sweeps") and all(s["confirmed"] for s in view["sweeps"]):
            return True
        bitcoind.generate_block(1)
        return False

    wait_for(swept, timeout=120)
    [sweep] = lsp.rpc.call("factory-status")["factories"][0]["sweeps"]
    wait_for(lambda: any(o["txid"] == sweep["txid"] for o in lsp.rpc.listfunds()["outputs"]))


def test_a_payment_whose_cltv_reaches_past_the_factory_timeout_is_refused(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp = node_factory.get_node(
        options={"plugin": PLUGIN, "superscalar-lifetime-blocks": 150}, may_reconnect=True
    )
    [client] = node_factory.get_nodes(
        1, opts={"plugin": PLUGIN, "superscalar-accept-from": lsp.info["id"]}
    )
    connect_by_ip(lsp, client)
    lsp.fundwallet(10_000_000)
    created = open_factory(lsp, [client])
    ewt, timeout = created["early_warning_time"], created["timeout_height"]
    ok = client.rpc.invoice(10_000_000, "in-time", "fine")["bolt11"]
    assert lsp.rpc.pay(ok)["status"] == "complete"
    # Close to the end: an HTLC expiring after T - EWT could not be enforced before T. The
    # invoice asks for cltv-final + EWT (the plugin adds the EWT), so from this height on its
    # HTLC expires past T - EWT.
    cltv_final = int(client.rpc.listconfigs("cltv-final")["configs"]["cltv-final"]["value_int"])
    target = timeout - 2 * ewt - cltv_final + 2
    bitcoind.generate_block(target - bitcoind.rpc.getblockcount())
    wait_for(lambda: client.rpc.getinfo()["blockheight"] == target)
    late = client.rpc.invoice(10_000_000, "too-late", "refused")["bolt11"]
    with pytest.raises(
        Exception, match=r"WIRE_INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS|incorrect_or_unknown"
    ):
        lsp.rpc.pay(late)


HOLD_PLUGIN = """
from pyln.client import Plugin
import time
plugin = Plugin()

@plugin.hook("htlc_accepted")
def hold(plugin, **kwargs):
    time.sleep(3600)  # never settles: the HTLC stays in flight until the node goes away
    return {"result": "continue"}

plugin.run()
"""


def test_a_client_with_an_empty_wallet_exits_with_an_htlc_in_flight(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    """The client has never had an on-chain coin. It pays the LSP, the LSP holds the HTLC and
    goes away. The client's exit must still bring its whole balance home: its channel is a
    non-anchor channel, so the HTLC-timeout transaction carries its own fee."""
    lsp = node_factory.get_node(
        options={
            "plugin": [PLUGIN, write_plugin(tmp_path, "hold_htlcs.py", HOLD_PLUGIN)],
            "watchtime-blocks": 6,
        },
        may_reconnect=True,
    )
    [me] = node_factory.get_nodes(
        1, opts={"plugin": PLUGIN, "superscalar-accept-from": lsp.info["id"]}
    )
    connect_by_ip(lsp, me)
    lsp.fundwallet(10_000_000)
    created = open_factory(lsp, [me])
    bitcoind.generate_block(1)
    assert wallet_sat(me) == 0
    chan = me.rpc.listpeerchannels(lsp.info["id"])["channels"][0]
    assert chan["channel_type"]["names"][0].startswith("static_remotekey")
    inv = me.rpc.invoice(200_000_000, "in", "to the client")["bolt11"]
    assert lsp.rpc.pay(inv)["status"] == "complete"
    wait_for(lambda: no_htlcs(lsp) and no_htlcs(me))
    held = lsp.rpc.invoice(100_000_000, "held", "the LSP never settles it")["bolt11"]
    _send_over_factory_channel(me, lsp, held)
    wait_for(lambda: any(h["direction"] == "out" for h in _htlcs(me)))
    lsp.stop()

    me.rpc.call("factory-exit", {"instance": created["instance"]})

    def home() -> bool:
        bitcoind.generate_block(1)
        return wallet_sat(me) >= 190_000  # 200k sat minus the commitment's and HTLC's fees

    wait_for(home, timeout=600)
    assert not me.daemon.is_in_log(r"min relay fee not met")


def _htlcs(node: Any) -> list[dict[str, Any]]:
    return [h for c in node.rpc.listpeerchannels()["channels"] for h in c.get("htlcs", [])]


def _send_over_factory_channel(payer: Any, payee: Any, bolt11: str) -> None:
    """`sendpay` over the one (unannounced, zero-conf) channel to `payee`: it returns once the
    HTLC is offered, whatever becomes of it."""
    decoded = payer.rpc.decode(bolt11)
    [chan] = payer.rpc.listpeerchannels(payee.info["id"])["channels"]
    amount = int(decoded["amount_msat"])
    hop = {
        "id": payee.info["id"],
        "channel": chan["alias"]["local"],
        "amount_msat": amount,
        "delay": int(decoded["min_final_cltv_expiry"]),
    }
    payer.rpc.sendpay(
        [hop],
        decoded["payment_hash"],
        payment_secret=decoded["payment_secret"],
        amount_msat=amount,
        bolt11=bolt11,
    )


def test_malformed_factory_messages_from_a_real_peer_leave_everyone_working(
    node_factory: Any, bitcoind: Any
) -> None:
    lsp, clients = lsp_and_clients(node_factory, 2)
    created = open_factory(lsp, clients)
    attacker = clients[0]
    bodies = [
        "",
        "00",
        "ff" * 40,
        "0001" + "00" * 3,
        "fffe" + "ab" * 600,
        created["instance"],
        "00" * 65_000,
    ]
    for _ in range(3):
        for body in bodies:
            attacker.rpc.sendcustommsg(lsp.info["id"], "8020" + body)
    time.sleep(2)
    for c in clients:
        assert normal(lsp, c) and normal(c, lsp)
    pay_both_ways(lsp, clients, 20_000_000)  # above the 1% reserve (5,000 sat), both ways
    status = lsp.rpc.call("factory-status", {"instance": created["instance"]})["factories"][0]
    assert status["state"] == "funded"
    lines = lsp.daemon.logs
    noisy = [
        x
        for x in lines
        if "superscalar" in x
        and attacker.info["id"][:16] in x
        and re.search(r"malformed|unreadable|rejected|ignor", x)
    ]
    assert len(noisy) <= 1, noisy  # at most one line per peer per minute


def test_an_operator_node_without_developer_mode_survives_connect_by_ip(
    node_factory: Any, bitcoind: Any
) -> None:
    """An operator's lightningd has no --developer: the plugin starts, and an ordinary
    `lightning-cli connect <id> 127.0.0.1 <port>` leaves it running."""
    lsp = node_factory.get_node(options={"plugin": PLUGIN}, start=False)
    for opt in [o for o in lsp.daemon.opts if o.startswith("dev-")]:
        del lsp.daemon.opts[opt]
    lsp.daemon.early_opts = [o for o in lsp.daemon.early_opts if o != "--developer"]
    lsp.start()
    [client] = node_factory.get_nodes(
        1, opts={"plugin": PLUGIN, "superscalar-accept-from": lsp.info["id"]}
    )
    connect_by_ip(lsp, client)
    assert not lsp.daemon.is_in_log(r"--developer")
    plugins = {Path(p["name"]).name: p["active"] for p in lsp.rpc.plugin("list")["plugins"]}
    assert plugins["superscalar"] is True
    assert lsp.rpc.call("factory-list")["factories"] == []
    wait_for(lambda: lsp.rpc.listpeers(client.info["id"])["peers"][0]["connected"])


def test_the_lsp_sees_a_clients_exit(node_factory: Any, bitcoind: Any) -> None:
    """A client leaves on its own: the LSP's factory-status names it, shows how far its path
    got on chain, and what is still in the factory."""
    lsp, clients = lsp_and_clients(node_factory, 2)
    created = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    instance = created["instance"]
    clients[0].rpc.call("factory-exit", {"instance": instance})

    def lsp_sees_it() -> bool:
        bitcoind.generate_block(1)
        view = lsp.rpc.call("factory-status", {"instance": instance})["factories"][0]
        exited = [c for c in view["clients"] if c["onchain"]["leaf_confirmed"]]
        return len(exited) >= 1

    wait_for(lsp_sees_it, timeout=300)
    view = lsp.rpc.call("factory-status", {"instance": instance})["factories"][0]
    first = view["clients"][0]["onchain"]
    assert first["leaf_confirmed"] and first["path_confirmed"] == first["path_length"]
    assert view["onchain"]["clients_on_chain"] >= 1
    assert view["onchain"]["clients_in_factory"] == 2 - view["onchain"]["clients_on_chain"]


def test_a_co_client_or_a_stranger_cannot_unwatch_a_funded_client(
    node_factory: Any, bitcoind: Any
) -> None:
    """Everyone in a factory knows its instance id. A co-client and a stranger send the funded
    client a PROPOSE and an ABORT for it: the client stays funded, keeps its guards and can still
    exit; the factory keeps paying."""
    from superscalar_plugin.engine import protocol
    from superscalar_plugin.engine.tree import FactoryParams

    lsp, clients = lsp_and_clients(node_factory, 2)
    created = open_factory(lsp, clients)
    bitcoind.generate_block(1)
    victim, co_client = clients
    stranger = node_factory.get_node(options={"plugin": PLUGIN})
    connect_by_ip(stranger, victim)
    connect_by_ip(co_client, victim)
    instance = bytes.fromhex(created["instance"])
    propose = protocol.Propose(
        instance,
        0,
        2,
        FactoryParams(),
        created["timeout_height"],
        b"\x02" * 33,
        CHANNEL_SAT,
        created["early_warning_time"],
    )
    abort = protocol.Text(protocol.PayloadType.ABORT, instance, "go away")
    for sender in (co_client, stranger):
        for payload in (propose, abort):
            sender.rpc.sendcustommsg(victim.info["id"], factory_message(payload))
    time.sleep(2)
    view = victim.rpc.call("factory-status", {"instance": created["instance"]})["factories"][0]
    assert view["state"] == "funded" and "error" not in view
    pay_both_ways(lsp, clients, 20_000_000)
    started = victim.rpc.call("factory-exit", {"instance": created["instance"]})
    assert started["exit"]["reason"] == "requested with factory-exit"
