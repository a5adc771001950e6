"""The real plugin process, run the way lightningd runs it (tests/harness), 1 LSP + 4 clients.

Every request, response, hook payload and hook result crossing the plugin's boundary is validated
against Core Lightning's v26.06.6 schemas by the harness; any finding fails the test at teardown.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from superscalar_plugin.engine import blip56, protocol, wire
from superscalar_plugin.engine.tx import Tx

from harness.errors import RpcCallError
from harness.network import SUPERSCALAR_PLUGIN, Network
from harness.node import FakeNode

PLUGIN = SUPERSCALAR_PLUGIN
CHANNEL_SAT = 100_000


def _setup(
    network_factory: Callable[..., Network], n: int = 4, timeout: int = 8
) -> tuple[Network, FakeNode, list[FakeNode]]:
    net = network_factory(plugin=PLUGIN, timeout=60)
    lsp = net.add_node("lsp", options={"superscalar-ceremony-timeout": timeout})
    clients = [
        net.add_node(
            f"client{i}",
            options={
                "superscalar-accept-from": lsp.node_id,
                "superscalar-ceremony-timeout": timeout,
            },
        )
        for i in range(n)
    ]
    for c in clients:
        net.connect(lsp, c)
    return net, lsp, clients


def _create(
    lsp: FakeNode, clients: list[FakeNode], *, rpc_timeout: float = 60, **extra: Any
) -> Any:
    params = {"clients": [c.node_id for c in clients], "channel_sat": CHANNEL_SAT, **extra}
    last: Exception | None = None
    for _ in range(50):  # until every client's handshake arrived
        try:
            return lsp.rpc_call("factory-create", params, timeout=rpc_timeout)
        except RpcCallError as e:
            if "has not announced SuperScalar support" not in str(e):
                raise
            last = e
            import time

            time.sleep(0.1)
    raise AssertionError(f"handshake never completed: {last}")


def _wait(check: Callable[[], bool], timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _reserved(node: FakeNode) -> list[Any]:
    return [o for o in node.rpc_call("listfunds")["outputs"] if o.get("reserved")]


CLOSING = ("CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE", "AWAITING_UNILATERAL", "ONCHAIN")


def _none_open(node: FakeNode, timeout: float = 20.0) -> None:
    """Every channel of an aborted creation is closed (or gone): the LSP completed them before
    the ceremony, so an abort closes them; none can take an HTLC again."""
    deadline = time.monotonic() + timeout
    while True:
        states = [c["state"] for c in node.rpc_call("listpeerchannels")["channels"]]
        if all(s in CLOSING for s in states):
            return
        assert time.monotonic() < deadline, f"{node.name}: channels still open: {states}"
        time.sleep(0.2)


def _status(node: FakeNode) -> list[dict[str, Any]]:
    return list(node.rpc_call("factory-status")["factories"])


def _piggyback(msg_hex: str) -> protocol.Payload | None:
    msg = bytes.fromhex(msg_hex)
    if int.from_bytes(msg[:2], "big") != blip56.FACTORY_MESSAGE_TYPE:
        return None
    parsed = blip56.decode_factory_message(msg)
    return protocol.decode(parsed.payload) if isinstance(parsed, blip56.Piggyback) else None


def _ceremony_type(payload: protocol.Payload | None) -> wire.MsgType | None:
    if not isinstance(payload, protocol.Ceremony):
        return None
    return wire.MsgType(payload.message[0])


def test_lsp_and_four_clients_create_a_factory(network_factory: Callable[..., Network]) -> None:
    net, lsp, clients = _setup(network_factory)
    created = _create(lsp, clients)
    assert created["role"] == "lsp" and created["state"] == "funded"
    phases = ["propose_accept", "fundchannel_start", "fundchannel_complete", "sign", "fund"]
    assert list(created["timings"]) == phases and all(v >= 0 for v in created["timings"].values())
    instance = created["instance"]
    funding = created["funding"]
    broadcast = net.chain.txs[funding["txid"]]  # signed and sent by the LSP's wallet
    assert broadcast.broadcast_by == "lsp"
    assert broadcast.tx.vout[funding["vout"]].nValue == funding["amount_sat"]
    _wait(
        lambda: [c["channel_state"] for c in _status(lsp)[0]["clients"]] == ["CHANNELD_NORMAL"] * 4
    )
    assert not _reserved(lsp)
    # two DW layers (the state over both leaves, the leaf), both in state 0
    assert [c["dw_state"] for c in created["clients"]] == [[0, 0]] * 4
    for i, c in enumerate(clients):
        # FUNDED was sent before factory-create answered; each client stores it in its own time
        _wait(lambda c=c: _status(c)[0]["state"] == "funded")
        [mine] = _status(c)
        assert mine["instance"] == instance and mine["role"] == "client"
        assert mine["state"] == "funded" and mine["index"] == i
        assert mine["funding_txid"] == funding["txid"]
        assert mine["early_warning_time"] == created["early_warning_time"]
        assert [e["kind"] for e in mine["exit_path"]] == ["kickoff", "state", "kickoff", "leaf"]
        for e in mine["exit_path"]:  # fully signed transactions, ready to broadcast by hand
            tx = Tx.deserialize(bytes.fromhex(e["raw"]))
            assert tx.txid == e["txid"] and len(tx.witnesses[0][0]) == 64
        _wait(
            lambda c=c: (
                [ch["state"] for ch in c.rpc_call("listpeerchannels")["channels"]]
                == ["CHANNELD_NORMAL"]
            )
        )
        chans = c.rpc_call("listpeerchannels")["channels"]
        # The channel lives on the leaf tx of its stored exit path.
        assert chans[0]["funding_txid"] == mine["exit_path"][-1]["txid"]
    # Everything is in lightningd's datastore, as versioned JSON, and no secret nonce is there.
    stored = lsp.rpc_call("listdatastore", {"key": ["superscalar", "factories"]})["datastore"]
    record = json.loads(stored[0]["string"])
    assert record["version"] == 1 and record["state"] == "funded"
    assert "nonce" not in stored[0]["string"]
    listed = lsp.rpc_call("factory-list")["factories"]
    assert listed == [
        {
            "instance": instance,
            "role": "lsp",
            "state": "funded",
            "phase": "active",
            "timeout_height": created["timeout_height"],
            "early_warning_time": created["early_warning_time"],
        }
    ]


def test_a_silent_client_aborts_cleanly_and_is_named(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, timeout=3)
    silent = clients[2]

    def drop_ceremony_replies(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        kind = _ceremony_type(_piggyback(msg_hex))
        return None if src is silent and kind is not None else msg_hex

    net.intercept = drop_ceremony_replies
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    message = str(info.value)
    assert silent.node_id in message and "did not answer the signing ceremony" in message
    assert not _reserved(lsp)
    _none_open(lsp)
    [lsp_view] = _status(lsp)
    assert lsp_view["state"] == "aborted" and silent.node_id in lsp_view["error"]
    for c in clients:
        c.wait_for_log("LSP aborted")
        assert [f["state"] for f in _status(c)] == ["aborted"]


def test_a_bad_partial_signature_aborts_naming_the_client(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory)
    culprit = clients[1]

    def tamper(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = _piggyback(msg_hex)
        if src is not culprit or _ceremony_type(payload) is not wire.MsgType.PARTIAL_SIGS:
            return msg_hex
        assert isinstance(payload, protocol.Ceremony)
        msg = wire.decode(payload.message)
        assert isinstance(msg, wire.NodeValues)
        node, psig = msg.values[0]
        bad = replace(msg, values=((node, bytes([psig[0] ^ 1]) + psig[1:]), *msg.values[1:]))
        body = protocol.encode(replace(payload, message=bad.encode()))
        return blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, body).encode().hex()

    net.intercept = tamper
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    message = str(info.value)
    assert "invalid partial signature from client 1" in message and culprit.node_id in message
    assert not _reserved(lsp)
    _none_open(lsp)


def test_sigkill_mid_ceremony_then_restart_is_consistent_and_never_reuses_nonces(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, timeout=30)
    held: list[str] = []

    def hold_nonces(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        # A creation's nonces come with the ACCEPTs: the partial signatures are the round
        # the LSP waits for when it dies.
        if _ceremony_type(_piggyback(msg_hex)) is wire.MsgType.PARTIAL_SIGS:
            held.append(msg_hex)
            return None
        return msg_hex

    net.intercept = hold_nonces
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = _create(lsp, clients)
        except Exception as e:  # the RPC dies with the plugin
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    clients[0].wait_for_log("accepting factory channel")
    import time

    deadline = time.monotonic() + 20
    while len(held) < len(clients) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(held) == len(clients), "the ceremony never reached the signature round"
    lsp.kill()
    t.join(30)
    assert "error" in outcome
    net.take_errors()  # the killed plugin's pending RPC is an expected finding
    net.intercept = None
    lsp.restart()
    # On restart the unfunded factory is aborted: inputs freed, channels gone, clients told.
    lsp.wait_for_log("aborted: the LSP restarted during creation")
    _wait(lambda: _status(lsp)[0]["state"] == "aborted")
    [view] = _status(lsp)
    assert not _reserved(lsp)
    for c in clients:
        c.wait_for_log("LSP aborted")
    # Replaying the old signature messages to the restarted LSP is refused (no ceremony).
    for msg in held:
        lsp.deliver_custommsg(clients[0], msg)
    # A fresh factory with the same clients works: new instance, fresh nonces.
    created = _create(lsp, clients)
    assert created["state"] == "funded" and created["instance"] != view["instance"]
    stored = lsp.rpc_call("listdatastore", {"key": ["superscalar", "factories"]})["datastore"]
    assert all("nonce" not in e["string"] for e in stored)


MALFORMED = {
    "too short": "8020",
    "unknown submessage": "80200006",
    "bad tlv order": "80200004" + "fd0400" + "00" + "0020" + "00" * 32,
    "unknown even tlv": "80200004" + blip56.encode_tlvs({2: b"x"}).hex(),
    "protocol ids not a multiple of 32": "80200002" + blip56.encode_tlvs({512: b"x" * 33}).hex(),
    "piggyback without payload": "80200004" + blip56.encode_tlvs({0: bytes(32)}).hex(),
}


def _pig(payload: bytes) -> str:
    return blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, payload).encode().hex()


for kind in protocol.PayloadType:
    MALFORMED[f"truncated {kind.name}"] = _pig(bytes([kind]) + bytes(20))
    MALFORMED[f"garbage {kind.name}"] = _pig(bytes([kind]) + bytes(32) + b"\xff" * 7)
MALFORMED["unknown payload type"] = _pig(b"\x63" + bytes(40))
for t in wire.MsgType:
    MALFORMED[f"ceremony {t.name} garbage"] = _pig(
        bytes([protocol.PayloadType.CEREMONY]) + bytes(32) + bytes([t]) + b"\x01\x02"
    )


def test_malformed_messages_of_every_kind_are_rejected_and_the_plugin_lives(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, clients = _setup(network_factory, n=1)
    for target, sender in ((clients[0], lsp), (lsp, clients[0])):
        for name, msg_hex in MALFORMED.items():
            target.deliver_custommsg(sender, msg_hex)
            assert target.plugin_running, f"plugin died on {name}"
        assert target.rpc_call("factory-status")["factories"] == []
        target.wait_for_log("dropped malformed factory message|rejected message")
    # Still fully working afterwards.
    created = _create(lsp, clients)
    assert created["state"] == "funded"


def test_bad_factory_create_parameters_fail_and_leave_nothing_behind(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    outsider = net.add_node("outsider")  # runs the plugin but is not connected to the LSP
    ids = [c.node_id for c in clients]
    _create(lsp, clients, channel_sat=[CHANNEL_SAT, CHANNEL_SAT + 1])  # handshake done, works
    cases: list[tuple[dict[str, Any], str]] = [
        ({"clients": [*ids, outsider.node_id]}, f"client {outsider.node_id} is not connected"),
        ({"clients": [ids[0], ids[0]]}, "listed twice"),
        ({"clients": ["02" + "zz" * 32]}, "is not a node id"),
        ({"clients": []}, "non-empty list"),
        ({"channel_sat": 100}, "channel_sat: 100 is below the minimum"),
        ({"channel_sat": [CHANNEL_SAT]}, "1 amounts for 2 clients"),
        ({"channel_sat": "lots"}, "is not an amount"),
        ({"channel_sat": 2_000_000_000}, "cannot fund"),
        ({"step_blocks": 1000}, "exceeds the limit of 2016"),
        ({"arity": "0"}, "arity"),
        ({"feerate": 500}, "feerate"),
    ]
    for override, needle in cases:
        params = {"clients": ids, "channel_sat": CHANNEL_SAT, **override}
        with pytest.raises(RpcCallError) as info:
            lsp.rpc_call("factory-create", params, timeout=30)
        assert needle in str(info.value), (override, str(info.value))
        assert info.value.error["code"] != -32600 or "internal" not in str(info.value)
        assert not _reserved(lsp), override
    # Only the one good factory's channels exist.
    assert len(lsp.rpc_call("listpeerchannels")["channels"]) == 2


def _htlc(scid: str, cltv: int, outgoing: str | None = None, out_cltv: int = 0) -> dict[str, Any]:
    onion: dict[str, Any] = {
        "payload": "00",
        "next_onion": "00" * 20,
        "shared_secret": "11" * 32,
        "forward_msat": 1_000_000,
        "outgoing_cltv_value": out_cltv or cltv,
    }
    if outgoing is not None:
        onion["short_channel_id"] = outgoing
    return {
        "onion": onion,
        "htlc": {
            "short_channel_id": scid,
            "id": 0,
            "amount_msat": 1_000_000,
            "cltv_expiry": cltv,
            "cltv_expiry_relative": 40,
            "payment_hash": "22" * 32,
        },
    }


def test_htlc_rules_on_factory_channels_and_ordinary_channels_untouched(
    network_factory: Callable[..., Network],
) -> None:
    _net, lsp, clients = _setup(network_factory, n=2)
    created = _create(lsp, clients)
    ewt, timeout = created["early_warning_time"], created["timeout_height"]
    height = lsp.rpc_call("getinfo")["blockheight"]
    chan = lsp.rpc_call("listpeerchannels", {"id": clients[0].node_id})["channels"][0]
    factory_scid = chan["alias"]["local"]
    ordinary = "123x4x5"

    def verdict(payload: dict[str, Any]) -> dict[str, Any]:
        return lsp.call_hook("htlc_accepted", payload)

    # Arriving on a factory channel, we are the payee.
    assert verdict(_htlc(factory_scid, height + ewt + 1))["result"] == "continue"
    payee = verdict(_htlc(factory_scid, height + ewt))
    assert payee["result"] == "fail" and payee["failure_message"].startswith("400f")
    # Arriving on a factory channel, forwarded elsewhere.
    soon = verdict(_htlc(factory_scid, height + ewt, outgoing=ordinary, out_cltv=height + 500))
    assert soon["result"] == "fail" and soon["failure_message"].startswith("100e")
    late = verdict(_htlc(factory_scid, timeout - ewt + 1, outgoing=ordinary))
    assert late == {"result": "fail", "failure_message": "0015"}
    # Forwarded into a factory channel: the outgoing cltv must respect the same window, and
    # more: the LSP offers no HTLC inside its own exit trigger (the EWT plus `exit-margin`, 12).
    margin = 12
    for out in (height + ewt, height + ewt + margin):
        into = verdict(_htlc(ordinary, height + 600, outgoing=factory_scid, out_cltv=out))
        assert into["result"] == "fail" and into["failure_message"].startswith("100e")
    ok = verdict(
        _htlc(ordinary, height + 600, outgoing=factory_scid, out_cltv=height + ewt + margin + 1)
    )
    assert ok["result"] == "continue"
    # Ordinary channels are never touched, whatever the cltv.
    for cltv in (height + 1, height + 10_000):
        assert verdict(_htlc(ordinary, cltv))["result"] == "continue"
        assert verdict(_htlc(ordinary, cltv, outgoing="7x7x7"))["result"] == "continue"
    # The client's side of the factory channel follows the same rules.
    cchan = clients[0].rpc_call("listpeerchannels")["channels"][0]
    client_scid = cchan["alias"]["local"]
    _wait(
        lambda: (
            clients[0].call_hook("htlc_accepted", _htlc(client_scid, height + 2))["result"]
            == "fail"
        )
    )
    assert (
        clients[0].call_hook("htlc_accepted", _htlc(client_scid, height + ewt + 5))["result"]
        == "continue"
    )


SMALL = {"states_per_layer": 2, "step_blocks": 3}


def _mine_until(net: Network, check: Callable[[], bool], max_blocks: int = 40) -> None:
    import time

    for _ in range(max_blocks):
        if check():
            return
        net.mine(1)
        time.sleep(0.3)  # the plugins handle block_added on their worker
    assert check(), "not reached within the blocks allowed"


def test_a_client_exits_alone_while_the_lsp_is_offline(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    created = _create(lsp, clients, **SMALL)
    instance = created["instance"]
    assert created["funding"]["confirmations"] == 0
    net.mine(1)  # the funding confirms
    _wait(lambda: _status(lsp)[0]["funding"]["confirmations"] == 1)
    lsp.kill()
    net.take_errors()
    me = clients[0]
    started = me.rpc_call("factory-exit", {"instance": instance}, timeout=30)
    assert started["exit"]["reason"] == "requested with factory-exit"
    [kickoff, leaf] = started["exit"]["txs"]
    assert kickoff["status"] == "broadcast" and leaf["status"] == "waiting"

    def status() -> dict[str, Any]:
        return dict(me.rpc_call("factory-status", {"instance": instance})["factories"][0])

    _mine_until(net, lambda: status()["exit"]["done"])
    txs = {t["kind"]: t for t in status()["exit"]["txs"]}
    assert txs["kickoff"]["status"] == txs["leaf"]["status"] == "confirmed"
    # The leaf waited out its nSequence after the kickoff confirmed (the fake chain would not
    # have refused it: the plugin itself held it back).
    delay = next(e["relative_delay"] for e in status()["exit_path"] if e["kind"] == "leaf")
    assert delay == 3 and txs["leaf"]["height"] >= txs["kickoff"]["height"] + delay
    chan = me.rpc_call("listpeerchannels")["channels"][0]
    assert me.closed_channels == [chan["channel_id"]]  # handed to lightningd's onchain handling
    assert status()["exit"]["channels_closed"] == [chan["channel_id"]]


def test_the_lsp_sweeps_the_factory_after_its_timeout(
    network_factory: Callable[..., Network],
) -> None:
    net = network_factory(plugin=PLUGIN, timeout=60)
    lsp = net.add_node("lsp", options={"superscalar-lifetime-blocks": 90})
    clients = [
        net.add_node(f"client{i}", options={"superscalar-accept-from": lsp.node_id})
        for i in range(2)
    ]
    for c in clients:
        net.connect(lsp, c)
    created = _create(lsp, clients, **SMALL)
    timeout, funding = created["timeout_height"], created["funding"]
    net.mine(1)
    for c in clients:  # clients that never exit before T lose their claim: that is the design
        c.kill()
    net.take_errors()
    net.mine(timeout - 1 - net.blockheight)
    import time

    time.sleep(0.5)
    assert "sweeps" not in lsp.rpc_call("factory-status")["factories"][0]  # not before T
    net.mine(1)  # tip T: the sweep can go into block T+1

    def swept() -> bool:
        view = lsp.rpc_call("factory-status")["factories"][0]
        return bool(view.get("sweeps")) and all(s["confirmed"] for s in view["sweeps"])

    _mine_until(net, swept, max_blocks=5)
    [sweep] = lsp.rpc_call("factory-status")["factories"][0]["sweeps"]
    assert sweep["outpoint"] == f"{funding['txid']}:{funding['vout']}"
    tx = net.chain.txs[sweep["txid"]].tx
    assert tx.nLockTime == timeout and len(tx.vout) == 1
    assert 0 < funding["amount_sat"] - tx.vout[0].nValue < 10_000  # the fee, at lightningd's rate
    # Idempotent, also across a restart: more blocks, no second sweep, nothing more to do.
    lsp.restart(reconnect=False)
    net.mine(2)
    time.sleep(0.5)
    [again] = lsp.rpc_call("factory-status")["factories"][0]["sweeps"]
    assert again == sweep and again["confirmed"]


def test_invoices_on_a_node_with_factory_channels_carry_the_ewt(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    loner = net.add_node("loner")  # the plugin, but no factory channel

    def invoice(node: FakeNode, params: Any) -> dict[str, Any]:
        call = {"rpc_command": {"jsonrpc": "2.0", "id": 7, "method": "invoice", "params": params}}
        return node.call_hook("rpc_command", call)

    named = {"amount_msat": 1000, "label": "a", "description": "d"}
    assert invoice(clients[0], named) == {"result": "continue"}  # no factory yet
    created = _create(lsp, clients)
    ewt = created["early_warning_time"]
    _wait(lambda: "replace" in invoice(clients[0], named))
    replaced = invoice(clients[0], named)["replace"]
    assert replaced["method"] == "invoice" and replaced["id"] == 7
    assert replaced["params"] == {**named, "cltv": 18 + ewt}  # cltv-final 18, raised by the EWT
    positional = invoice(clients[0], [1000, "b", "d", 3600, None, None, None, 40])["replace"]
    assert positional["params"]["cltv"] == 40 + ewt and positional["params"]["label"] == "b"
    capped = invoice(clients[0], {**named, "cltv": 2000})["replace"]
    assert capped["params"]["cltv"] == 2016  # never above max-locktime-blocks
    assert invoice(loner, named) == {"result": "continue"}
    other = {"rpc_command": {"jsonrpc": "2.0", "id": 8, "method": "getinfo", "params": {}}}
    assert clients[0].call_hook("rpc_command", other) == {"result": "continue"}


def test_a_client_killed_mid_ceremony_is_named_and_restarts_aborted(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, timeout=3)
    victim = clients[1]

    def kill_on_signatures(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        if src is victim and _ceremony_type(_piggyback(msg_hex)) is wire.MsgType.PARTIAL_SIGS:
            victim.kill()  # dies right after sending its partial signatures, which never arrive
            return None
        return msg_hex

    net.intercept = kill_on_signatures
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    assert victim.node_id in str(info.value)
    net.take_errors()
    net.intercept = None
    assert not _reserved(lsp)
    victim.restart()
    _wait(lambda: [f["state"] for f in _status(victim)] == ["aborted"])
    assert "restarted before the factory was signed" in _status(victim)[0]["error"]


def test_every_node_restarts_and_nothing_is_lost(network_factory: Callable[..., Network]) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    created = _create(lsp, clients, **SMALL)
    instance = created["instance"]
    net.mine(1)
    before = {n.name: _status(n) for n in (lsp, *clients)}
    for node in (lsp, *clients):
        node.restart()
    for node in (lsp, *clients):
        after = _status(node)
        assert [f["instance"] for f in after] == [instance]
        assert after[0]["state"] == before[node.name][0]["state"]
        if after[0]["role"] == "client":
            assert after[0]["exit_path"] == before[node.name][0]["exit_path"]
    # The restored client can still exit alone with what it stored.
    lsp.kill()
    net.take_errors()
    clients[1].rpc_call("factory-exit", {"instance": instance}, timeout=30)

    def done() -> bool:
        return bool(_status(clients[1])[0]["exit"]["done"])

    _mine_until(net, done)


def test_a_stranger_cannot_disturb_a_factory_it_is_not_part_of(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    stranger = net.add_node("stranger", options={"superscalar-accept-from": lsp.node_id})
    net.connect(lsp, stranger)
    net.connect(stranger, clients[0])

    def meddle(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        payload = _piggyback(msg_hex)
        if isinstance(payload, protocol.Propose) and dst is clients[0]:
            # The stranger learned the instance id: it sends junk and an abort to both sides.
            for kind in (protocol.PayloadType.ABORT, protocol.PayloadType.REJECT):
                junk = protocol.Text(kind, payload.instance_id, "stranger says stop")
                body = blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, protocol.encode(junk))
                lsp.deliver_custommsg(stranger, body.encode().hex())
                clients[0].deliver_custommsg(stranger, body.encode().hex())
        return msg_hex

    net.intercept = meddle
    created = _create(lsp, clients)
    assert created["state"] == "funded"
    lsp.wait_for_log("not a client of factory")
    clients[0].wait_for_log("dropped a message from .* for factory")


def test_peers_without_the_feature_are_never_sent_factory_messages(
    network_factory: Callable[..., Network],
) -> None:
    from pathlib import Path

    net, lsp, clients = _setup(network_factory, n=1)
    bare = net.add_node(
        "bare", plugin=[sys.executable, str(Path(__file__).parent / "harness" / "bare_plugin.py")]
    )
    net.connect(lsp, bare)
    _create(lsp, clients)  # factory traffic flows to the client ...
    lsp.restart()  # ... and after a restart the LSP greets the connected peers again
    import time

    time.sleep(0.5)
    # ... but the bare peer never got an (even, unknown to it) 32800 message: still connected.
    assert any(
        p["id"] == bare.node_id and p["connected"] for p in lsp.rpc_call("listpeers")["peers"]
    )
    assert not any(m.dst == bare.name for m in net.messages)


def test_a_restart_between_the_channels_and_the_funding_broadcast_finishes_the_factory(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, n=2)
    created = _create(lsp, clients)
    instance = created["instance"]
    key = ["superscalar", "factories", instance]
    [entry] = lsp.rpc_call("listdatastore", {"key": key})["datastore"]
    record = json.loads(entry["string"])
    # As if the LSP died after every fundchannel_complete, before (or while) sending the funding.
    record["state"] = "completing"
    lsp.rpc_call("datastore", {"key": key, "string": json.dumps(record), "mode": "must-replace"})
    lsp.restart()
    # Signing the funding again fails (its inputs are spent): the chain decides. It confirms.
    lsp.wait_for_log("waiting to see it confirm")
    net.mine(1)
    _wait(lambda: _status(lsp)[0]["state"] == "funded")
    assert _status(lsp)[0]["funding"]["txid"] == created["funding"]["txid"]
    # Had a channel not been completed, the restart would abort instead.
    record["clients"][1]["channel_id"] = None
    record["confirmed"] = []
    lsp.rpc_call("datastore", {"key": key, "string": json.dumps(record), "mode": "must-replace"})
    lsp.restart()
    _wait(lambda: _status(lsp)[0]["state"] == "aborted")


def test_a_client_that_disconnects_during_creation_is_named(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory)
    leaver = clients[3]

    def leave(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        if dst is leaver and isinstance(_piggyback(msg_hex), protocol.InFactory):
            net.disconnect(lsp, leaver)  # gone just before its channel opens
            return None
        return msg_hex

    net.intercept = leave
    with pytest.raises(RpcCallError) as info:
        _create(lsp, clients)
    assert leaver.node_id in str(info.value)
    assert not _reserved(lsp)
    assert all(
        ch["peer_id"] != leaver.node_id for ch in lsp.rpc_call("listpeerchannels")["channels"]
    )
    assert lsp.rpc_call("listpeerchannels")["channels"] == []  # the others' opens were cancelled


def test_the_lsp_status_shows_a_client_that_exited_on_its_own(
    network_factory: Callable[..., Network],
) -> None:
    """A client exits without asking (the LSP stays up): the LSP's factory-status names the
    client, how much of its path confirmed, and who is still inside the factory."""
    net, lsp, clients = _setup(network_factory, n=4)
    instance = _create(lsp, clients, **SMALL)["instance"]
    net.mine(1)
    before = _status(lsp)[0]
    assert before["onchain"]["clients_on_chain"] == 0
    assert before["onchain"]["clients_in_factory"] == 4
    assert before["clients"][0]["onchain"]["path_confirmed"] == 0
    me = clients[0]
    me.rpc_call("factory-exit", {"instance": instance}, timeout=30)

    def client_done() -> bool:
        return bool(
            me.rpc_call("factory-status", {"instance": instance})["factories"][0]["exit"]["done"]
        )

    _mine_until(net, client_done)
    _mine_until(net, lambda: _status(lsp)[0]["clients"][0]["onchain"]["leaf_confirmed"])
    view = _status(lsp)[0]
    mine = view["clients"][0]["onchain"]
    assert mine["path_confirmed"] == mine["path_length"] and mine["last_confirmed_height"]
    # clients 0 and 1 share the leaf; clients 2 and 3 are still inside the factory
    assert [c["onchain"]["leaf_confirmed"] for c in view["clients"]] == [True, True, False, False]
    assert view["onchain"]["clients_on_chain"] == 2
    assert view["onchain"]["clients_in_factory"] == 2
    assert "exit" not in view  # the LSP itself started no exit


def test_a_client_guards_its_channel_from_the_moment_it_stored_its_path(
    network_factory: Callable[..., Network],
) -> None:
    """Seen on a real lightningd: the client made an invoice right after creation, before the
    LSP's FUNDED reached it, so the invoice lacked the EWT and the client's own guard then refused
    the payment. A client is in the factory once its path is stored: from then on its invoices
    carry the EWT and its channel's HTLCs are checked, FUNDED or not."""
    net, lsp, clients = _setup(network_factory, n=2)

    def drop_funded(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
        return None if isinstance(_piggyback(msg), protocol.Funded) else msg

    net.intercept = drop_funded
    created = _create(lsp, clients)
    ewt = created["early_warning_time"]
    me = clients[0]
    assert _status(me)[0]["state"] == "ready"  # FUNDED never arrived
    call = {
        "rpc_command": {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "invoice",
            "params": {"amount_msat": 1000, "label": "a", "description": "d"},
        }
    }
    assert me.call_hook("rpc_command", call)["replace"]["params"]["cltv"] == 18 + ewt
    [chan] = me.rpc_call("listpeerchannels")["channels"]
    height = net.blockheight
    too_soon = {
        "onion": {
            "payload": "00",
            "type": "tlv",
            "forward_msat": 1000,
            "outgoing_cltv_value": height + 5,
            "shared_secret": "00" * 32,
            "next_onion": "00" * 1366,
        },
        "htlc": {
            "short_channel_id": chan["alias"]["local"],
            "id": 0,
            "amount_msat": 1000,
            "cltv_expiry": height + 5,
            "cltv_expiry_relative": 5,
            "payment_hash": "00" * 32,
        },
    }
    assert me.call_hook("htlc_accepted", too_soon)["result"] == "fail"
