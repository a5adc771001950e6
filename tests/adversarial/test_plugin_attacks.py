"""Attacks through the real plugin process (tests/harness): every peer is an adversary.

A stranger, a co-client and the LSP itself drive bytes at a node; each test expects the safe
outcome. Issue 9, plugin items (client and routing roles)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_plugin_harness import _create, _setup

from superscalar_plugin.engine import blip56, protocol

from .plugin_hostile import HostileLsp, htlc_request, open_channels, pig, status, unpig, wait
from harness.bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    b2lx,
    lx,
)
from harness.errors import RpcCallError
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

FACTORIES = ["superscalar", "factories"]


def _state(node: FakeNode) -> str:
    [f] = status(node)
    return str(f["state"])


# --- 4. only the factory's LSP may change a client's state ----------------------------------


def test_a_co_client_or_repeated_propose_never_unwatches_a_signed_client(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    victim, co_client = clients
    net.connect(co_client, victim)
    proposals: dict[str, protocol.Propose] = {}

    def watch(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = unpig(msg_hex)
        if isinstance(payload, protocol.Propose):
            proposals[dst.name] = payload
        if isinstance(payload, protocol.Funded) and dst is victim:
            return None  # the victim stays READY: signed, not yet told of the funding
        return msg_hex

    net.intercept = watch
    _create(lsp, clients)
    wait(lambda: _state(victim) == "ready", what="victim ready")
    net.intercept = None
    # The co-client knows the instance id: it replays its own PROPOSE and the victim's.
    for p in (proposals[co_client.name], proposals[victim.name]):
        victim.deliver_custommsg(co_client, pig(p))
    victim.wait_for_log("dropped a message from .* for factory")
    # The LSP itself repeats its PROPOSE: nothing changes either.
    victim.deliver_custommsg(lsp, pig(proposals[victim.name]))
    # A co-client's ABORT and junk are dropped.
    victim.deliver_custommsg(
        co_client,
        pig(protocol.Text(protocol.PayloadType.ABORT, proposals[victim.name].instance_id, "stop")),
    )
    time.sleep(0.5)
    [mine] = status(victim)
    assert mine["state"] == "ready" and not mine.get("error"), mine
    assert victim.rpc_call("factory-exit", [mine["instance"]])["state"] == "ready"


def test_an_lsp_abort_after_signing_keeps_the_client_watching(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=1)
    [victim] = clients
    instance: list[bytes] = []

    def hold_funded(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = unpig(msg_hex)
        if isinstance(payload, protocol.Funded):
            instance.append(payload.instance_id)
            return None
        return msg_hex

    net.intercept = hold_funded
    _create(lsp, clients)
    wait(lambda: _state(victim) == "ready", what="victim ready")
    victim.deliver_custommsg(
        lsp, pig(protocol.Text(protocol.PayloadType.ABORT, instance[0], "changed my mind"))
    )
    victim.wait_for_log("after our path was signed")
    [mine] = status(victim)
    assert mine["state"] == "ready", mine  # still guarded, watched and exitable


# --- 8. ceremony deadlines hold whatever arrives ---------------------------------------------


def test_a_message_flood_cannot_starve_the_ceremony_timeout(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2, timeout=2)
    stranger = net.add_node("stranger")
    net.connect(stranger, lsp)
    silent = clients[1]

    def drop_accept(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        return None if src is silent and isinstance(unpig(msg_hex), protocol.Accept) else msg_hex

    net.intercept = drop_accept
    stop = threading.Event()
    junk = blip56.SupportedProtocols((blip56.SUPERSCALAR_PROTOCOL_ID,)).encode().hex()

    def flood() -> None:
        while not stop.wait(0.1):
            lsp.deliver_custommsg(stranger, junk)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        started = time.monotonic()
        with pytest.raises(RpcCallError) as info:
            _create(lsp, clients, rpc_timeout=20)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        flooder.join()
    assert silent.node_id in str(info.value) and "timed out" in str(info.value)
    assert not [o for o in lsp.rpc_call("listfunds")["outputs"] if o.get("reserved")]


# --- 11. a bad stored record is quarantined, the others served -------------------------------


def test_a_bad_stored_record_is_quarantined_and_the_rest_served(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, clients = _setup(network_factory, n=1)
    [client] = clients
    created = _create(lsp, clients)
    [entry] = client.rpc_call("listdatastore", {"key": FACTORIES})["datastore"]
    good = json.loads(entry["string"])
    bad: dict[str, dict[str, Any]] = {
        "aa" * 32: {**good, "instance_id": "aa" * 32, "n_clients": 0},
        "bb" * 32: {**good, "instance_id": "bb" * 32, "client_index": 5},
        "cc" * 32: {
            **good,
            "instance_id": "cc" * 32,
            "path": [{**good["path"][0], "raw": "00ff"}],
        },
    }
    for instance, record in bad.items():
        client.rpc_call("datastore", {"key": [*FACTORIES, instance], "string": json.dumps(record)})
    client.restart()
    for instance in bad:
        client.wait_for_log(f"quarantined factory record {instance[:16]}")
    served = status(client)
    assert [f["instance"] for f in served] == [created["instance"]]
    assert served[0]["state"] == "funded"
    left = client.rpc_call("listdatastore", {"key": FACTORIES})["datastore"]
    assert [e["key"][-1] for e in left] == [created["instance"]]
    moved = client.rpc_call("listdatastore", {"key": ["superscalar", "quarantine"]})["datastore"]
    assert sorted(e["key"][-1] for e in moved) == sorted(bad)


# --- 3. the confirmed funding output is what the root was signed against ---------------------


def _funding_tx(amount: int, script: bytes, seed: int) -> CMutableTransaction:
    spent = COutPoint(lx(f"{seed:064x}"), 0)
    return CMutableTransaction([CMutableTxIn(spent)], [CMutableTxOut(amount, CScript(script))])


@pytest.mark.parametrize("lie", ["honest", "amount", "script"])
def test_a_funding_output_other_than_signed_marks_the_factory_compromised(
    network_factory: Callable[..., Network], lie: str
) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN, timeout=30)
    lsp = net.add_node("lsp")
    client = net.add_node("client0", options={"superscalar-accept-from": lsp.node_id})
    net.connect(lsp, client)
    hostile = HostileLsp(net, lsp, [client])
    hostile.propose_all()
    factory = hostile.factory(open_channels(hostile))
    amount, script = factory.funding_amount, factory.funding_output.script_pubkey
    if lie == "amount":
        amount -= 50_000  # the client signed for funding_amount; the LSP funds less
    elif lie == "script":
        script = b"\x51\x20" + bytes(32)  # another taproot output of the same amount
    tx = _funding_tx(amount, script, seed=7)
    txid = b2lx(tx.GetTxid())
    hostile.sign(factory, (txid, 0))
    hostile.send(0, protocol.Funded(hostile.instance, txid, 0))
    wait(lambda: _state(client) == "funded", what="client funded")
    net.broadcast(tx)
    net.mine(1)
    if lie == "honest":
        client.wait_for_log("funding output checked")
        [f] = status(client)
        assert "compromised" not in f and not f.get("error")
        return
    client.wait_for_log("COMPROMISED")
    [f] = status(client)
    assert f["compromised"] is True and f["state"] == "funded"
    assert ("holds" if lie == "amount" else "pays script") in str(f["error"])
    # Closed: no more funds into a worthless channel.
    wait(lambda: client.rpc_call("listpeerchannels")["channels"][0]["state"] != "CHANNELD_NORMAL")
    [ch] = client.rpc_call("listpeerchannels")["channels"]
    scid = ch["alias"]["local"]
    height = net.blockheight
    htlc = htlc_request(scid, height)
    assert client.call_hook("htlc_accepted", htlc)["result"] == "fail"
    net.mine(2)
    time.sleep(0.5)
    assert len([x for x in client.logs if "COMPROMISED" in str(x)]) == 1  # said once
    # A record whose confirmation an older version recorded unchecked is checked at start-up.
    key = [*FACTORIES, f["instance"]]
    [entry] = client.rpc_call("listdatastore", {"key": key})["datastore"]
    unchecked = {**json.loads(entry["string"]), "error": None}
    client.rpc_call(
        "datastore", {"key": key, "string": json.dumps(unchecked), "mode": "must-replace"}
    )
    client.restart()
    client.wait_for_log("COMPROMISED")
    assert status(client)[0]["compromised"] is True


# --- 14. a duplicate factory key is refused at ACCEPT, naming the client ----------------------


@pytest.mark.parametrize("whose", ["lsp", "co-client"])
def test_a_duplicate_accept_key_is_refused_naming_the_client(
    network_factory: Callable[..., Network], whose: str
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    honest, culprit = clients
    keys: dict[str, bytes] = {}
    held: list[bytes] = []  # the culprit's instance id while it waits for the key it copies
    forged: set[str] = set()

    def forge(instance: bytes) -> str:
        msg = pig(protocol.Accept(instance, keys[whose]))
        forged.add(msg)
        return msg

    def reuse_key(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = unpig(msg_hex)
        if msg_hex in forged:
            return msg_hex
        if isinstance(payload, protocol.Propose):
            keys["lsp"] = payload.lsp_pubkey
        if isinstance(payload, protocol.Accept) and src is honest:
            keys["co-client"] = payload.client_pubkey
            if held:  # the culprit answers right after, with the honest client's key
                later = forge(held.pop())
                threading.Timer(0.2, lambda: lsp.deliver_custommsg(culprit, later)).start()
        if isinstance(payload, protocol.Accept) and src is culprit:
            if whose in keys:
                return forge(payload.instance_id)
            held.append(payload.instance_id)
            return None
        return msg_hex

    net.intercept = reuse_key
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    message = str(info.value)
    assert culprit.node_id in message and "factory key" in message, message
    assert "internal error" not in message
    assert lsp.rpc_call("listpeerchannels")["channels"] == []
    assert not [o for o in lsp.rpc_call("listfunds")["outputs"] if o.get("reserved")]


# --- 15. the funding txid sendpsbt returns is the one the clients signed against -------------


def test_a_funding_txid_other_than_signed_aborts_naming_both(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, clients = _setup(network_factory, n=2)
    builtin = lsp._builtin
    other = "ee" * 32

    def lying_wallet(method: str, params: Any, source: str) -> Any:
        result = builtin(method, params, source)
        if method == "sendpsbt":
            result = {**result, "txid": other}
        return result

    lsp._builtin = lying_wallet  # type: ignore[method-assign]
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    assert f"sendpsbt broadcast funding {other}, not " in str(info.value)
    [view] = status(lsp)
    assert view["state"] == "aborted"


# --- 16. an abort tells each client only about itself ----------------------------------------


def test_an_abort_reason_never_carries_a_co_clients_id_or_words(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=3)
    culprit = clients[1]

    def refuse_with_a_message(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = unpig(msg_hex)
        if isinstance(payload, protocol.Accept) and src is culprit:
            text = "visit evil.example for a better LSP"
            return pig(protocol.Text(protocol.PayloadType.REJECT, payload.instance_id, text))
        return msg_hex

    net.intercept = refuse_with_a_message
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    assert culprit.node_id in str(info.value)  # the operator is told who
    for c in clients:
        wait(lambda c=c: _state(c) == "aborted", what=f"{c.name} aborted")
        [view] = status(c)
        error = str(view["error"])
        others = [o.node_id for o in clients if o is not c]
        assert not any(o in error for o in others), error
        if c is not culprit:
            assert "evil.example" not in error, error


# --- 17. HTLCs replayed at start-up wait for the guards -------------------------------------


def test_an_htlc_replayed_during_start_up_is_checked(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=1)
    [client] = clients
    _create(lsp, clients)
    [ch] = client.rpc_call("listpeerchannels")["channels"]
    scid = ch["alias"]["local"]
    builtin = client._builtin

    def slow_start(method: str, params: Any, source: str) -> Any:
        if method == "listdatastore" and source == "socket":
            time.sleep(2)  # a start-up with many records, or a busy lightningd
        return builtin(method, params, source)

    client._builtin = slow_start  # type: ignore[method-assign]
    client.restart()
    height = net.blockheight
    too_soon = {  # expires before the tree could be published: must be failed
        "onion": {
            "payload": "00",
            "next_onion": "00" * 20,
            "shared_secret": "11" * 32,
            "forward_msat": 1_000_000,
            "outgoing_cltv_value": height + 2,
        },
        "htlc": {
            "short_channel_id": scid,
            "id": 0,
            "amount_msat": 1_000_000,
            "cltv_expiry": height + 2,
            "cltv_expiry_relative": 2,
            "payment_hash": "22" * 32,
        },
    }
    assert sum("superscalar ready" in str(line) for line in client.logs) == 1  # not yet again
    assert client.call_hook("htlc_accepted", too_soon)["result"] == "fail"


# --- 10. proposals cost a bounded, temporary amount of state ---------------------------------


def test_a_proposal_flood_is_bounded_and_its_leftovers_forgotten(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=SUPERSCALAR_PLUGIN, timeout=30)
    lsp = net.add_node("lsp")
    client = net.add_node(
        "client0",
        options={"superscalar-accept-from": lsp.node_id, "superscalar-ceremony-timeout": 1},
    )
    net.connect(lsp, client)
    hostile = HostileLsp(net, lsp, [client])
    template = hostile.propose_message(0)
    for i in range(12):  # proposals it never means to sign
        flood = dataclasses.replace(template, instance_id=hashlib.sha256(b"%d" % i).digest())
        hostile.send(0, flood)
    answers = [hostile.inbox.get(timeout=15)[1] for _ in range(12)]
    accepted = [a for a in answers if isinstance(a, protocol.Accept)]
    refused = [a for a in answers if isinstance(a, protocol.Text)]
    assert len(accepted) == 4 and len(refused) == 8, answers
    assert all("already pending" in r.reason for r in refused)
    assert sum("refusing factory" in str(line) for line in client.logs) == 1  # rate-limited
    client.wait_for_log("the LSP went silent during the ceremony")  # after 3 x 1 s
    wait(lambda: all(f["state"] == "aborted" for f in status(client)) and len(status(client)) == 4)
    # Free again: a new proposal is accepted ...
    hostile.send(0, dataclasses.replace(template, instance_id=hashlib.sha256(b"new").digest()))
    assert isinstance(hostile.inbox.get(timeout=15)[1], protocol.Accept)
    wait(lambda: [f["state"] for f in status(client)] == ["aborted"] * 5)
    # ... and a day of blocks later nothing of the never-signed factories is left.
    net.mine(150)
    wait(lambda: client.rpc_call("listdatastore", {"key": FACTORIES})["datastore"] == [])
    assert status(client) == []
