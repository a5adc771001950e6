"""Self-test of the lightningd-less harness (tests/harness/) with a dummy pyln-client plugin."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

from harness import (
    FakeNode,
    Network,
    PluginDied,
    PluginStartError,
    RpcCallError,
    SchemaViolation,
    UnexpectedCall,
)
from harness.bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CTxOut,
    PartiallySignedTransaction,
    has_feature,
    lx,
    regtest,
)
from harness.network import DUMMY_PLUGIN

# The fixtures `network` and `network_factory` come from harness.fixtures via tests/conftest.py.
FACTORY_MSG = "8020"


def _pair(net: Network) -> tuple[FakeNode, FakeNode]:
    a, b = net.add_node("alice"), net.add_node("bob")
    net.connect(a, b)
    return a, b


def test_manifest_and_init(network: Network) -> None:
    node = network.add_node("lsp", options={"dummy-label": "hello"})
    m = node.manifest
    assert m is not None
    assert m["dynamic"] is False
    for place in ("init", "node"):
        assert has_feature(m["featurebits"][place], 271)
    assert 32800 in m["custommessages"]
    assert {"dummy-send", "dummy-open", "dummy-store", "dummy-read"} <= node.plugin_methods
    assert {"custommsg", "openchannel", "peer_connected"} <= set(node.hooks)
    assert {"connect", "disconnect", "block_added"} <= node.subscriptions
    # init as lightningd sends it: options with defaults, configuration, our features incl. 271
    assert node.init_request is not None
    assert node.init_request["options"] == {"dummy-reject": False, "dummy-label": "hello"}
    conf = node.init_request["configuration"]
    assert conf["network"] == "regtest" and conf["rpc-file"] == "lightning-rpc"
    assert has_feature(conf["feature_set"]["init"], 271)
    node.wait_for_log(r"dummy: init label=hello network=regtest")
    info = node.rpc_call("getinfo")
    assert info["id"] == node.node_id and info["network"] == "regtest"
    assert has_feature(info["our_features"]["node"], 271)
    # the same through pyln's LightningRpc on the unix socket (lightning-cli's path)
    assert node.rpc.getinfo()["blockheight"] == network.blockheight


def test_dynamic_plugin_with_featurebits_is_refused(network: Network, tmp_path) -> None:
    script = tmp_path / "dyn.py"
    script.write_text(
        "from pyln.client import Plugin\n"
        "p = Plugin(dynamic=True, init_features=1 << 271)\n"
        "p.run()\n"
    )
    with pytest.raises(Exception, match="non-dynamic"):
        network.add_node("dyn", plugin=[sys.executable, str(script)])
    network.take_errors()


def test_custommsg_round_trip(network: Network) -> None:
    a, b = _pair(network)
    # both sides: peer_connected hook, connect notification, peer listed with bit 271
    b.wait_for_log(rf"dummy: peer_connected {a.node_id} in")
    a.wait_for_log(rf"dummy: connect {b.node_id} out")
    peers = a.rpc_call("listpeers")["peers"]
    assert [p["id"] for p in peers] == [b.node_id]
    assert peers[0]["connected"] and has_feature(peers[0]["features"], 271)
    # a -> b "ping:hi"; b's custommsg hook answers "pong:hi" with sendcustommsg
    a.rpc_call("dummy-send", [b.node_id, "ping:hi"])
    b.wait_for_log(r"custommsg type 32800 .*b'ping:hi'")
    a.wait_for_log(r"custommsg type 32800 .*b'pong:hi'")
    sent = [(m.src, m.dst) for m in network.messages]
    assert sent == [("alice", "bob"), ("bob", "alice")]
    network.disconnect(a, b)
    b.wait_for_log(rf"dummy: disconnect {a.node_id}")
    err = a.rpc_call(
        "dummy-call",
        {"method": "sendcustommsg", "params": {"node_id": b.node_id, "msg": FACTORY_MSG + "00"}},
    )
    assert err["error"]["message"] in ("Peer is not connected", f"No such peer: {b.node_id}")


def test_intercept_drops_and_tampers(network: Network) -> None:
    a, b = _pair(network)

    def intercept(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
        body = bytes.fromhex(msg[4:])
        if body == b"drop me":
            return None
        return msg.replace(b"secret".hex(), b"SECRET".hex())

    network.intercept = intercept
    a.rpc_call("dummy-send", {"peer_id": b.node_id, "text": "drop me"})
    a.rpc_call("dummy-send", {"peer_id": b.node_id, "text": "a secret"})
    b.wait_for_log(r"b'a SECRET'")
    assert not b.is_in_log("drop me")
    assert [m.delivered is None for m in network.messages] == [True, False]


def test_openchannel_flow_reaches_normal(network: Network) -> None:
    a, b = _pair(network)
    res = a.rpc_call("dummy-open", {"id": b.node_id, "amount": 500_000})
    assert res["mindepth"] == 0
    b.wait_for_log(r"dummy: openchannel from .* for 500000000msat")
    for node, opener in ((a, "local"), (b, "remote")):
        (ch,) = node.rpc_call("listpeerchannels")["channels"]
        assert ch["state"] == "CHANNELD_NORMAL" and ch["opener"] == opener
        assert ch["channel_id"] == res["channel_id"] and ch["funding_txid"] == res["txid"]
        assert ch["private"] is True and "short_channel_id" not in ch
        assert 50 in ch["channel_type"]["bits"]  # zeroconf
        assert ch["alias"]["local"] and ch["alias"]["remote"]
        node.wait_for_log(rf"channel_state_changed {res['channel_id']} -> CHANNELD_NORMAL")
    a_alias = a.rpc_call("listpeerchannels")["channels"][0]["alias"]
    b_alias = b.rpc_call("listpeerchannels")["channels"][0]["alias"]
    assert a_alias == {"local": b_alias["remote"], "remote": b_alias["local"]}
    # the funding tx went out; its inputs are spent in a's wallet, the change came back
    assert res["txid"] in network.chain.mempool
    funds = a.rpc_call("listfunds")
    assert any(o["status"] == "unconfirmed" for o in funds["outputs"])
    assert sum(o["status"] == "confirmed" for o in funds["outputs"]) == 9
    network.mine(1)
    (ch,) = a.rpc_call("listpeerchannels")["channels"]
    assert ch["short_channel_id"].startswith(f"{network.blockheight}x")
    b.wait_for_log(rf"dummy: block_added {network.blockheight}")


def test_openchannel_reject_and_cancel(network: Network) -> None:
    a = network.add_node("alice")
    b = network.add_node("bob", options={"dummy-reject": True})
    network.connect(a, b)
    with pytest.raises(RpcCallError) as e:
        a.rpc_call("fundchannel_start", {"id": b.node_id, "amount": 100_000})
    assert e.value.code == -1 and "dummy says no" in e.value.message
    c = network.add_node("carol")
    network.connect(a, c)
    start = a.rpc_call("fundchannel_start", [c.node_id, "100000sat"])
    assert start["scriptpubkey"].startswith("0020") and start["funding_address"].startswith(
        "bcrt1q"
    )
    assert c.rpc_call("listpeerchannels")["channels"][0]["state"] == "OPENINGD"
    assert a.rpc_call("fundchannel_cancel", [c.node_id])["cancelled"]
    assert c.rpc_call("listpeerchannels")["channels"] == []
    with pytest.raises(RpcCallError) as e:
        a.rpc_call("fundchannel_cancel", [c.node_id])
    assert e.value.code == 307
    with pytest.raises(RpcCallError) as e:
        a.rpc_call("fundchannel_start", {"id": "02" + "11" * 32, "amount": 100_000})
    assert e.value.code == 306


def test_fundchannel_complete_checks_the_psbt(network: Network) -> None:
    a, b = _pair(network)
    start = a.rpc_call(
        "fundchannel_start", {"id": b.node_id, "amount": 200_000, "mindepth": 0, "announce": False}
    )
    spk = CScript(bytes.fromhex(start["scriptpubkey"]))
    with regtest():

        def psbt_paying(amount: int, witness_utxo: bool) -> str:
            tx = CMutableTransaction(
                [CMutableTxIn(COutPoint(lx("11" * 32), 0))],
                [CMutableTxOut(amount, spk)],
                nVersion=2,
            )
            p = PartiallySignedTransaction(unsigned_tx=tx)
            if witness_utxo:
                p.set_utxo(CTxOut(amount + 1000, CScript(bytes([0, 20]) + bytes(20))), 0)
            return str(p.to_base64())

        wrong_amount, no_utxo, good = (
            psbt_paying(199_999, True),
            psbt_paying(200_000, False),
            psbt_paying(200_000, True),
        )
    for psbt, code, text in (
        (wrong_amount, 309, "should be 200000sat"),
        (no_utxo, 309, "Input 0 is non-segwit and unsigned"),
    ):
        with pytest.raises(RpcCallError) as e:
            a.rpc_call("fundchannel_complete", {"id": b.node_id, "psbt": psbt})
        assert e.value.code == code and text in e.value.message
    res = a.rpc_call("fundchannel_complete", {"id": b.node_id, "psbt": good})
    assert res["commitments_secured"] is True
    assert b.rpc_call("listpeerchannels")["channels"][0]["state"] == "CHANNELD_NORMAL"
    # Committed and zero-conf, so CHANNELD_NORMAL at once: lightningd cancels only a channel
    # AWAITING_LOCKIN (tests/test_lightningd_nodedb.py), so an abort must close it instead.
    with pytest.raises(RpcCallError, match="No channels being opened or awaiting lock-in"):
        a.rpc_call("fundchannel_cancel", {"id": b.node_id})
    assert [c["state"] for c in b.rpc_call("listpeerchannels")["channels"]] == ["CHANNELD_NORMAL"]


def test_datastore_survives_kill_and_restart(network: Network) -> None:
    a, b = _pair(network)
    a.rpc_call("dummy-store", {"key": "state", "value": "v1"})
    pid = a.process.pid if a.process else None
    a.kill()
    assert a.plugin_state == "dead"
    with pytest.raises(RpcCallError) as e:  # the plugin's methods left with it
        a.rpc_call("dummy-read", ["state"])
    assert e.value.code == -32601
    a.restart()
    assert a.process is not None and a.process.pid != pid
    assert a.rpc_call("dummy-read", ["state"]) == {"value": "v1"}
    # the restart reconnected the peer, and the peer saw the disconnect
    b.wait_for_log(rf"dummy: disconnect {a.node_id}")
    b.wait_for_log(rf"dummy: connect {a.node_id} in")
    assert network.take_errors() == []  # a kill is not a death


def test_datastore_semantics(network: Network) -> None:
    node = network.add_node("n")
    ds = node.rpc_call("datastore", {"key": ["p", "a"], "string": "x"})
    assert ds == {"key": ["p", "a"], "generation": 0, "hex": "78", "string": "x"}
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("datastore", {"key": ["p", "a"], "string": "y"})
    assert e.value.code == 1202
    ds = node.rpc_call(
        "datastore", {"key": ["p", "a"], "hex": "79", "mode": "must-append", "generation": 0}
    )
    assert ds["string"] == "xy" and ds["generation"] == 1
    with pytest.raises(RpcCallError) as e:
        node.rpc_call(
            "datastore", {"key": ["p", "a"], "string": "z", "mode": "must-replace", "generation": 0}
        )
    assert e.value.code == 1204
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("datastore", {"key": ["p"], "string": "z", "mode": "create-or-replace"})
    assert e.value.code == 1205
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("datastore", {"key": ["p", "a", "b"], "string": "z"})
    assert e.value.code == 1206
    node.rpc_call("datastore", {"key": ["p", "b", "c"], "string": "deep"})
    listed = node.rpc_call("listdatastore", {"key": "p"})["datastore"]
    assert listed == [
        {"key": ["p", "a"], "generation": 1, "hex": "7879", "string": "xy"},
        {"key": ["p", "b"]},
    ]
    assert node.rpc_call("listdatastore")["datastore"] == [{"key": ["p"]}]
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("deldatastore", {"key": ["p", "a"], "generation": 0})
    assert e.value.code == 1201
    node.rpc_call("deldatastore", [["p", "a"]])
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("deldatastore", {"key": ["p", "a"]})
    assert e.value.code == 1200


def test_bad_hook_result_is_caught(network: Network) -> None:
    a, b = _pair(network)
    a.rpc_call("dummy-send", [b.node_id, "bad-hook-result"])
    b.wait_for_log(r"FINDING SchemaViolation: .*custommsg hook result")
    (v,) = network.take_errors(SchemaViolation)
    assert v.node == "bob" and "custommsg hook result" in str(v) and "'bogus'" in str(v)


def test_schema_violation_in_a_plugin_request(network: Network) -> None:
    node = network.add_node("n")
    out = node.rpc_call(
        "dummy-call",
        {"method": "datastore", "params": {"key": ["x"], "string": "v", "mode": "bogus"}},
    )
    assert out["error"]["code"] == -32602
    (v,) = network.take_errors(SchemaViolation)
    assert "datastore request" in str(v) and "mode" in str(v)


def test_unexpected_rpc_is_reported(network: Network) -> None:
    node = network.add_node("n")
    out = node.rpc_call("dummy-call", {"method": "getnonsense", "params": {}})
    assert out["error"] == {"code": -32601, "message": "Unknown command 'getnonsense'"}
    assert node.unknown_calls == ["getnonsense"]
    (u,) = network.take_errors(UnexpectedCall)
    assert u.method == "getnonsense"


def test_plugin_death_is_detected(network: Network) -> None:
    node = network.add_node("n")
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("dummy-crash")
    assert e.value.code == -4
    (d,) = network.take_errors(PluginDied)
    assert "code 3" in str(d)
    assert node.plugin_state == "dead"


def test_wallet_rpcs(network: Network) -> None:
    node = network.add_node("n", utxos=3, utxo_sat=100_000)
    with pytest.raises(RpcCallError) as e:
        node.rpc_call("fundpsbt", {"satoshi": 1_000_000, "feerate": "253perkw", "startweight": 0})
    assert e.value.code == 301
    funded = node.rpc_call(
        "fundpsbt",
        {"satoshi": 150_000, "feerate": "1000perkw", "startweight": 200, "excess_as_change": True},
    )
    assert len(funded["reservations"]) == 2 and funded["change_outnum"] == 0
    with regtest():
        psbt = PartiallySignedTransaction.from_base64(funded["psbt"])
        assert all(i.witness_utxo is not None for i in psbt.inputs)
    # only one UTXO left unreserved
    with pytest.raises(RpcCallError):
        node.rpc_call("fundpsbt", {"satoshi": 150_000, "feerate": "normal", "startweight": 0})
    unres = node.rpc_call("unreserveinputs", {"psbt": funded["psbt"]})["reservations"]
    assert all(r["was_reserved"] and not r["reserved"] for r in unres)
    with pytest.raises(RpcCallError) as e:  # signing needs reserved inputs
        node.rpc_call("signpsbt", {"psbt": funded["psbt"]})
    assert "not reserved" in e.value.message
    node.rpc_call("reserveinputs", {"psbt": funded["psbt"]})
    signed = node.rpc_call("signpsbt", {"psbt": funded["psbt"]})["signed_psbt"]
    sent = node.rpc_call("sendpsbt", {"psbt": signed})
    prevout = psbt.unsigned_tx.vin[0].prevout
    spent_utxo = f"{prevout.hash[::-1].hex()}:{prevout.n}"
    with pytest.raises(RpcCallError) as e:
        node.rpc_call(
            "utxopsbt",
            {"satoshi": 10_000, "feerate": "normal", "startweight": 0, "utxos": [spent_utxo]},
        )
    assert "Already spent" in e.value.message
    network.mine(1)
    statuses = sorted(o["status"] for o in node.rpc_call("listfunds")["outputs"])
    assert statuses == ["confirmed", "confirmed"]
    assert sent["txid"] in network.chain.txs
    addr = node.rpc_call("newaddr", {"addresstype": "all"})
    assert addr["bech32"].startswith("bcrt1q") and addr["p2tr"].startswith("bcrt1p")
    s1 = node.rpc_call("makesecret", {"string": "factory 1"})["secret"]
    assert s1 == node.rpc_call("makesecret", [b"factory 1".hex()])["secret"]  # positional: hex
    assert s1 != network.add_node("m").rpc_call("makesecret", {"string": "factory 1"})["secret"]
    configs = node.rpc_call("listconfigs")["configs"]
    assert configs["network"]["value_str"] == "regtest"
    assert configs["dummy-label"] == {
        "value_str": "dummy",
        "source": "default",
        "plugin": " ".join(node.plugin_cmd),
        "dynamic": False,
    }
    # 18 is the harness's default, not a regtest lightningd's (10): as if set on the cmdline
    assert node.rpc_call("listconfigs", ["cltv-final"]) == {
        "configs": {"cltv-final": {"value_int": 18, "source": "cmdline"}}
    }
    rates = node.rpc_call("feerates", {"style": "perkw"})
    assert rates["perkw"]["opening"] >= rates["perkw"]["floor"]


def test_hooks_called_by_hand_are_checked(network: Network) -> None:
    node = network.add_node("n")
    htlc = {
        "onion": {"payload": "", "next_onion": "00" * 1366, "shared_secret": "11" * 32},
        "htlc": {
            "short_channel_id": "1x2x3",
            "id": 0,
            "amount_msat": 1000,
            "cltv_expiry": 200,
            "cltv_expiry_relative": 40,
            "payment_hash": "22" * 32,
        },
    }
    # the dummy has no htlc_accepted hook: lightningd's default applies
    assert node.call_hook("htlc_accepted", htlc) == {"result": "continue"}
    assert network.take_errors() == []
    node.call_hook("htlc_accepted", {"onion": htlc["onion"]})  # "htlc" missing
    (v,) = network.take_errors(SchemaViolation)
    assert "htlc_accepted hook payload" in str(v) and "'htlc' is a required property" in str(v)


def test_waitblockheight_wakes_on_mine(network: Network) -> None:
    node = network.add_node("n")
    target = network.blockheight + 2
    out: dict[str, object] = {}
    t = threading.Thread(
        target=lambda: out.update(
            node.rpc_call(
                "dummy-call", {"method": "waitblockheight", "params": {"blockheight": target}}
            )
        )
    )
    t.start()
    network.mine(2)
    t.join(timeout=10)
    assert out == {"result": {"blockheight": target}}


def test_undeclared_even_message_disconnects(network: Network) -> None:
    a, b = _pair(network)
    b.kill()  # its plugin (which declared 32800) is gone: lightningd no longer accepts the type
    a.rpc_call("dummy-send", [b.node_id, "hello?"])
    a.wait_for_log(rf"dummy: disconnect {b.node_id}")
    assert not a.rpc_call("listpeers")["peers"]


def test_stop_leaves_no_process(network_factory: Callable[..., Network]) -> None:
    net = network_factory()
    nodes = [net.add_node(f"n{i}") for i in range(3)]
    pids = [n.process.pid for n in nodes if n.process]
    net.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_plugin_that_refuses_developer_fails_to_start(
    network_factory: Callable[..., Network], tmp_path
) -> None:
    """lightningd passes `--developer` in developer mode: a plugin whose argument parser refuses
    unknown options (as click does) dies at getmanifest, here as on a real node."""
    script = tmp_path / "strict.py"
    script.write_text(
        "import argparse, runpy, sys\n"
        "argparse.ArgumentParser().parse_args()\n"  # exits 2 on any argument
        f"runpy.run_path({str(DUMMY_PLUGIN[1])!r}, run_name='__main__')\n"
    )
    dev = network_factory()
    with pytest.raises(PluginStartError, match="getmanifest"):
        dev.add_node("strict", plugin=[sys.executable, str(script)])
    assert dev.take_errors(PluginStartError)
    plain = network_factory(developer=False)
    node = plain.add_node("strict", plugin=[sys.executable, str(script)])
    assert node.plugin_state == "running"


def test_rpc_command_hook_gets_raw_tokens_and_respects_filters(network: Network, tmp_path) -> None:
    """Every command passes the rpc_command hook with lightning-cli's raw tokens (127.0.0.1 is
    not JSON), unless the hook's filters leave it out."""
    script = tmp_path / "rpccmd.py"
    script.write_text(
        "import os\n"
        "from pyln.client import Plugin\n"
        "p = Plugin()\n"
        "@p.hook('rpc_command', filters=os.environ.get('FILTERS', '').split() or None)\n"
        "def on(rpc_command, plugin, **kw):\n"
        "    plugin.log('rpc_command ' + rpc_command['method'])\n"
        "    return {'result': 'continue'}\n"
        "p.run()\n"
    )
    a = network.add_node("a", plugin=[sys.executable, str(script)], env={"FILTERS": "getinfo"})
    b = network.add_node("b", plugin=[sys.executable, str(script)])
    assert a.hooks["rpc_command"]["filters"] == ["getinfo"]
    a.cli("connect", b.node_id, "127.0.0.1", str(b.port))  # filtered out: never reaches a
    a.cli("getinfo")
    a.wait_for_log(r"rpc_command getinfo")
    assert not a.is_in_log(r"rpc_command connect")
    # b has no filters: pyln-client cannot parse the raw token and the process dies
    b.cli("connect", a.node_id, "127.0.0.1", str(a.port))
    assert b.process is not None and b.process.wait(10) is not None
    assert network.take_errors(PluginDied)


def test_hook_filters_are_checked_like_lightningd(network: Network, tmp_path) -> None:
    script = tmp_path / "badfilter.py"
    script.write_text(
        "from pyln.client import Plugin\n"
        "p = Plugin()\n"
        "@p.hook('peer_connected', filters=['x'])\n"
        "def on(plugin, **kw):\n"
        "    return {'result': 'continue'}\n"
        "p.run()\n"
    )
    with pytest.raises(PluginStartError, match="does not allow filters"):
        network.add_node("bad", plugin=[sys.executable, str(script)])
    network.take_errors()


def test_a_reorg_replaces_blocks_and_can_drop_a_tx(network: Network) -> None:
    """`Network.reorg`: new hashes from the fork up, block_added for each new block, orphaned
    txs back in the next block unless dropped (with their descendants)."""
    node = network.add_node("n", utxos=2, utxo_sat=100_000)

    def send() -> str:
        funded = node.rpc_call(
            "fundpsbt",
            {
                "satoshi": 10_000,
                "feerate": "1000perkw",
                "startweight": 200,
                "excess_as_change": True,
            },
        )
        signed = node.rpc_call("signpsbt", {"psbt": funded["psbt"]})["signed_psbt"]
        return str(node.rpc_call("sendpsbt", {"psbt": signed})["txid"])

    kept, dropped = send(), send()
    [old] = network.mine(1)
    fork = network.blockheight
    block = node.rpc_call("getrawblockbyheight", {"height": fork})
    assert block["blockhash"] == old
    prev = node.rpc_call("getrawblockbyheight", {"height": fork - 1})["blockhash"]
    assert bytes.fromhex(block["block"])[4:36][::-1].hex() == prev  # the header links back
    new = network.reorg(1, drop={dropped})
    assert len(new) == 2 and old not in new and network.blockheight == fork + 1
    assert node.rpc_call("getrawblockbyheight", {"height": fork})["blockhash"] == new[0]
    assert network.chain.txs[kept].height == fork  # mined again on the new branch
    assert dropped not in network.chain.txs and dropped not in network.chain.mempool


def test_an_overridden_rpc_can_hang_for_one_peer_while_others_answer(network: Network) -> None:
    """`FakeNode.overrides`: a test-made handler replaces one RPC of one node; it may block (a
    peer that never answers) without blocking the node's other RPCs."""
    from harness.lightningd_rpcs import HANDLERS

    node = network.add_node("n")
    release = threading.Event()

    def hung_getinfo(me: FakeNode, p: dict[str, object]) -> object:
        release.wait(30)
        return HANDLERS["getinfo"](me, p)

    node.overrides["getinfo"] = hung_getinfo
    answers: list[object] = []
    caller = threading.Thread(target=lambda: answers.append(node.rpc_call("getinfo")))
    caller.start()
    caller.join(0.5)
    assert caller.is_alive() and not answers  # still hanging
    assert node.rpc_call("listfunds")["outputs"]  # the node answers everything else
    release.set()
    caller.join(10)
    assert answers and answers[0]["id"] == node.node_id  # type: ignore[index]


def test_sendrawtransaction_requires_allowhighfees_like_lightningd(network: Network) -> None:
    """lightningd v26.06.6 (bcli) refuses a `sendrawtransaction` without `allowhighfees`: the
    plugin's first key-path hand-over spend did exactly that on a real node, unseen here."""
    node = network.add_node("lsp")
    with pytest.raises(RpcCallError, match="missing required parameter: allowhighfees"):
        node.rpc_call("sendrawtransaction", {"tx": "00"})
    refused = node.rpc_call("sendrawtransaction", {"tx": "00", "allowhighfees": False})
    assert refused["success"] is False and "decode" in refused["errmsg"]


def test_fundchannels_at_once_never_spend_the_same_coin(network: Network) -> None:
    """lightningd serializes coin selection: several `fundchannel` calls at once (factory-close
    opens up to eight) each take their own coins. The fake once let two take the same one."""
    opener = network.add_node("opener")
    peers = [network.add_node(f"peer{i}") for i in range(4)]
    for p in peers:
        network.connect(opener, p)
    results: list[object] = []

    def fund(p: FakeNode) -> None:
        try:
            results.append(opener.rpc_call("fundchannel", {"id": p.node_id, "amount": 200_000}))
        except Exception as e:  # collected: the assertion below names it
            results.append(e)

    threads = [threading.Thread(target=fund, args=(p,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, dict) for r in results), results
    spent = [
        (i.prevout.hash, i.prevout.n)
        for r in results
        for i in CMutableTransaction.deserialize(bytes.fromhex(r["tx"])).vin  # type: ignore[index]
    ]
    assert len(spent) == len(set(spent))
