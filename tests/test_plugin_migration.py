"""A factory's end through the real plugin process in the fake lightningd (tests/harness): the
migration into a successor, and what a hostile peer can (not) do to it. CI runs these; the same
flows on a real lightningd are in tests/test_lightningd_ladder*.py."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from test_plugin_harness import _create, _setup

from superscalar_plugin.engine import protocol

from adversarial.plugin_hostile import pig, wait
from harness.network import Network
from harness.node import FakeNode

PAID_MSAT = 30_000_000
MIN_DEPTH = 3  # superscalar-move-min-depth's default


def _status(node: FakeNode, instance: str) -> dict[str, Any]:
    return dict(node.rpc_call("factory-status", {"instance": instance})["factories"][0])


def _channel(node: FakeNode, peer: FakeNode, funding_txid: str) -> dict[str, Any]:
    chans = node.rpc_call("listpeerchannels", {"id": peer.node_id})["channels"]
    return next(c for c in chans if c["funding_txid"] == funding_txid)


def _pay_into(lsp: FakeNode, client: FakeNode, instance: str, amount: int) -> None:
    """The LSP pays the client's invoice over the client's channel in `instance`."""
    leaf = _status(client, instance)["exit_path"][-1]["txid"]
    inv = client.rpc_call(
        "invoice", {"amount_msat": amount, "label": os.urandom(4).hex(), "description": "in"}
    )
    decoded = client.rpc_call("decode", {"string": inv["bolt11"]})
    chan = _channel(lsp, client, leaf)
    route = [
        {
            "id": client.node_id,
            "channel": chan["alias"]["local"],
            "amount_msat": amount,
            "delay": int(decoded["min_final_cltv_expiry"]) + 3,
        }
    ]
    lsp.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": amount,
        },
    )
    lsp.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 20})


def _funded(
    network_factory: Callable[..., Network], n: int
) -> tuple[Network, FakeNode, list[FakeNode], str]:
    net, lsp, clients = _setup(network_factory, n)
    instance = _create(lsp, clients)["instance"]
    net.mine(1)
    for c in clients:
        wait(lambda c=c: _status(c, instance)["state"] == "funded", what="funded")
        _pay_into(lsp, c, instance, PAID_MSAT)
    return net, lsp, clients, instance


def test_a_migration_moves_every_balance_and_spends_the_old_funding_by_key_path(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients, old = _funded(network_factory, 2)
    new = lsp.rpc_call("factory-migrate", {"instance": old}, timeout=60)["instance"]
    net.mine(MIN_DEPTH)  # clients move only into a successor confirmed this deep

    def closing() -> bool:
        return bool(_status(lsp, old).get("handover_txid"))

    wait(closing, what="every key handed over")
    net.mine(1)
    wait(lambda: _status(lsp, old)["state"] == "closed", what="the key-path spend confirmed")
    final = _status(lsp, old)
    assert final["phase"] == "closed" and final["successors"] == [new]
    spend = next(
        t for t in net.chain.txs.values() if t.tx.GetTxid()[::-1].hex() == final["handover_txid"]
    )
    assert len(spend.tx.vin) == 1 and len(spend.tx.wit.vtxinwit[0].scriptWitness.stack) == 1
    for c in clients:
        assert _status(c, old)["state"] == "handed_over"
        old_leaf = _status(c, old)["exit_path"][-1]["txid"]
        new_leaf = _status(c, new)["exit_path"][-1]["txid"]
        was, now = _channel(c, lsp, old_leaf), _channel(c, lsp, new_leaf)
        assert was["state"] == "CLOSINGD_COMPLETE"
        assert int(was["to_us_msat"]) <= 1_000_000  # at most lightningd's floor reserve
        assert int(now["to_us_msat"]) >= PAID_MSAT - 1_000_000 - 2_000


def test_moves_from_a_stranger_or_to_a_bad_target_change_nothing(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients, old = _funded(network_factory, 2)
    me, mate = clients
    stranger = net.add_node("stranger")
    net.connect(stranger, me)
    net.connect(stranger, lsp)
    net.connect(mate, me)
    instance = bytes.fromhex(old)
    bogus = [
        (stranger, protocol.Move(instance, protocol.MoveTarget.FACTORY, os.urandom(32))),
        (mate, protocol.Move(instance, protocol.MoveTarget.CHANNEL, os.urandom(32))),
        (lsp, protocol.Move(instance, protocol.MoveTarget.FACTORY, instance)),  # itself
        (lsp, protocol.Move(instance, protocol.MoveTarget.FACTORY, os.urandom(32))),
        (lsp, protocol.Move(instance, protocol.MoveTarget.CHANNEL, os.urandom(32))),
        (stranger, protocol.Key(instance, os.urandom(32))),
    ]
    for sender, payload in bogus:
        target = lsp if isinstance(payload, protocol.Key) else me
        if sender is target:
            continue
        sender.rpc_call("sendcustommsg", {"node_id": target.node_id, "msg": pig(payload)})
    # What the LSP sent was refused in so many words; nothing moved, no key left.
    wait(lambda: bool(_status(lsp, old)["clients"][0].get("refusal")), what="a refusal")
    mine = _status(me, old)
    assert mine["state"] == "funded" and mine["moving_to"] is None
    assert not any(c["handed_over"] for c in _status(lsp, old)["clients"])
    leaf = mine["exit_path"][-1]["txid"]
    assert int(_channel(me, lsp, leaf)["to_us_msat"]) >= PAID_MSAT
    assert me.plugin_running and lsp.plugin_running


def test_a_wrong_key_is_refused_and_the_factory_stays_open(
    network_factory: Callable[..., Network],
) -> None:
    _, lsp, clients, old = _funded(network_factory, 2)
    liar = clients[0]
    for secret in (os.urandom(32), bytes(32), b"\xff" * 32):
        liar.rpc_call(
            "sendcustommsg",
            {"node_id": lsp.node_id, "msg": pig(protocol.Key(bytes.fromhex(old), secret))},
        )
    wait(lambda: lsp.is_in_log(r"refused the key"), what="the refusal")
    view = _status(lsp, old)
    assert view["state"] == "funded" and view["clients_inside"] == 2
    assert "handover_txid" not in view
    assert len([x for x in lsp.logs if "refused the key" in x.message]) == 1  # rate-limited


def _untouched(lsp: FakeNode, me: FakeNode, old: str) -> None:
    """Nothing moved out of `old`, no key left, and the old channel still works for `me`."""
    mine = _status(me, old)
    assert mine["state"] == "funded" and mine["moving_to"] is None
    assert not any(c["handed_over"] for c in _status(lsp, old)["clients"])
    leaf = mine["exit_path"][-1]["txid"]
    assert int(_channel(me, lsp, leaf)["to_us_msat"]) >= PAID_MSAT


def test_an_unconfirmed_successor_gets_no_balance_and_no_key(
    network_factory: Callable[..., Network],
) -> None:
    """A hostile LSP asks clients to move into a successor whose funding it then never lets
    confirm (or double-spends): below `move-min-depth` nothing moves and no key leaves."""
    net, lsp, clients, old = _funded(network_factory, 2)
    new = lsp.rpc_call("factory-migrate", {"instance": old}, timeout=60)["instance"]
    net.mine(MIN_DEPTH - 1)
    time.sleep(1.0)  # an honest LSP asks only at MIN_DEPTH: no refusal (and no log of one) yet
    assert not any(c.get("refusal") for c in _status(lsp, old)["clients"])
    # The hostile one asks now.
    move = protocol.Move(bytes.fromhex(old), protocol.MoveTarget.FACTORY, bytes.fromhex(new))
    for c in clients:
        lsp.rpc_call("sendcustommsg", {"node_id": c.node_id, "msg": pig(move)})
    wait(
        lambda: "target_unconfirmed" in (_status(lsp, old)["clients"][0].get("refusal") or ""),
        what="the refusal",
    )
    for c in clients:
        _untouched(lsp, c, old)


def test_a_dear_fee_on_the_target_takes_nothing(
    network_factory: Callable[..., Network],
) -> None:
    """A hostile LSP sets a 10^9 ppm fee on its successor's channels, then asks clients to move:
    the move is refused before any payment, the old channel takes HTLCs again, no key leaves."""
    net, lsp, clients, old = _funded(network_factory, 2)
    new = lsp.rpc_call("factory-migrate", {"instance": old}, timeout=60)["instance"]
    for c in _status(lsp, new)["clients"]:
        lsp.rpc_call("setchannel", {"id": c["channel_id"], "feeppm": 10**9})
    net.mine(MIN_DEPTH)
    wait(
        lambda: all(
            "fee_above_cap" in (c.get("refusal") or "") for c in _status(lsp, old)["clients"]
        ),
        what="both refusals",
    )
    for c in clients:
        _untouched(lsp, c, old)
    _pay_into(lsp, clients[0], old, 1_000_000)  # the door reopened: it takes HTLCs again
