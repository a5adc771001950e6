"""Self-test of the harness's channel balances, invoices, payments, `close` and `fundchannel`
(tests/harness/payments.py, closing.py, lightningd_rpcs.py) with a tiny payment plugin
(harness/pay_plugin.py). Numbers marked "real node" were read from lightningd v26.06.6 on
regtest doing the same thing."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness import FakeNode, HarnessTimeout, Network, RpcCallError
from harness.bitcoin import CScript, CTxOut, PartiallySignedTransaction, regtest
from harness.network import DUMMY_PLUGIN

PAY_PLUGIN = [sys.executable, str(Path(DUMMY_PLUGIN[1]).parent / "pay_plugin.py")]
# An invoice a real lightningd v26.06.6 (regtest) made, and what its `decode` said of it.
REAL_BOLT11 = (
    "lnbcrt1m1p4sujd7sp5j64cdfyedunrk2mtc5q5z49p35rpjwv5cz7903ct8q985243fujqpp5dfpt4s46vsxht9j0"
    "09papast9hw4ztwxlvqwtex0r9zm2yzu3a2qdqvd45kwunpw3jsxqyjw5qcqp5rzjqvuytqpdyk6wqaxvl47d3vee"
    "5swuwklej79qxjqqg394r4ptqaue5n98g79cvjr245qqqqqpqqqqqzsqqc9qxpqysgq8cq2j6qstr2ys5zm9sr07x"
    "dmlag49x0yqjd9c7neym9jygxuglqj37wmqjqt53yh0kfrpzdksd6au3sfjk5peu4j6s6p7pfxk09a9qsqjgkxh8"
)

REAL_DECODE = {
    "type": "bolt11 invoice",
    "currency": "bcrt",
    "created_at": 1796098494,
    "expiry": 604800,
    "payee": "038194b5f32bdf0aa59812c86c4ef7ad2f294104fa027d1ace9b469bb6f88cf37b",
    "amount_msat": 100000000,
    "description": "migrate",
    "min_final_cltv_expiry": 20,
    "payment_secret": "96ab86a4996f263b2b6bc5014154a18d06193994c0bc57c70b380a7a2ab14f24",
    "features": "02024100",
    "routes": [
        [
            {
                "pubkey": "033845802d25b4e074ccfd7cd8b339a41dc75bf9978a034800444b51d42b07799a",
                "short_channel_id": "5023559x9143880x27309",
                "fee_base_msat": 1,
                "fee_proportional_millionths": 10,
                "cltv_expiry_delta": 6,
            }
        ]
    ],
    "payment_hash": "6a42bac2ba640d75964f7943d0f60b2ddd512dc6fb00e5e4cf1945b5105c8f54",
    "signature": "304402203e00a9681058d448505b2c06ff19bbff515299e4049a5c7a7926cb2220dc47c102202"
    "8f9db0480ba44977d923089b68375de460995a81cf2b2d4341f0526b3cbd282",
    "valid": True,
}


def _pair(net: Network, zeroconf: bool = True) -> tuple[FakeNode, FakeNode]:
    """Two nodes running pay_plugin; with `zeroconf` their openchannel hook accepts zero-conf
    channels (needed for `_factory_channel`)."""
    options = {"pay-zeroconf": zeroconf}
    alice = net.add_node("alice", plugin=PAY_PLUGIN, options=options)
    bob = net.add_node("bob", plugin=PAY_PLUGIN, options=options)
    net.connect(alice, bob)
    return alice, bob


def _chan(node: FakeNode, cid: str) -> dict[str, Any]:
    [ch] = [c for c in node.rpc_call("listpeerchannels")["channels"] if c["channel_id"] == cid]
    return dict(ch)


def _wait(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _hooks(node: FakeNode, kind: str) -> list[dict[str, Any]]:
    """The payloads pay_plugin logged for `kind` (a hook or a notification topic)."""
    prefix = f"pay: {kind} "
    return [
        json.loads(x.message[len(prefix) :])
        for x in node.logs
        if x.source == "plugin" and x.message.startswith(prefix)
    ]


def _open(net: Network, opener: FakeNode, peer: FakeNode, amount: int, **kw: Any) -> str:
    """An ordinary channel: fundchannel, then the blocks until both sides are CHANNELD_NORMAL."""
    cid = str(
        opener.rpc_call(
            "fundchannel", {"id": peer.node_id, "amount": amount, "announce": False, **kw}
        )["channel_id"]
    )
    for _ in range(6):
        if all(_chan(n, cid)["state"] == "CHANNELD_NORMAL" for n in (opener, peer)):
            break
        net.mine(1)
    assert all(_chan(n, cid)["state"] == "CHANNELD_NORMAL" for n in (opener, peer))
    return cid


def _factory_channel(opener: FakeNode, peer: FakeNode, amount: int, push_msat: int) -> str:
    """A channel like a factory's: zero-conf, funded by a tx that is never broadcast."""
    start = opener.rpc_call(
        "fundchannel_start",
        {
            "id": peer.node_id,
            "amount": amount,
            "announce": False,
            "mindepth": 0,
            "push_msat": push_msat,
            "channel_type": [12, 46, 50],
        },
    )
    funded = opener.rpc_call(
        "fundpsbt",
        {"satoshi": amount, "feerate": "normal", "startweight": 300, "excess_as_change": True},
    )
    with regtest():
        from bitcointx.core.psbt import PSBT_Output

        psbt = PartiallySignedTransaction.from_base64(funded["psbt"])
        psbt.add_output(
            CTxOut(amount, CScript(bytes.fromhex(start["scriptpubkey"]))), PSBT_Output()
        )
        b64 = psbt.to_base64()
    return str(
        opener.rpc_call("fundchannel_complete", {"id": peer.node_id, "psbt": b64})["channel_id"]
    )


def _pay(
    payer: FakeNode, route: list[dict[str, Any]], inv: dict[str, Any], amount: int
) -> dict[str, Any]:
    payer.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": amount,
        },
    )
    return dict(payer.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 20}))


def _pay_error(
    payer: FakeNode,
    route: list[dict[str, Any]],
    inv: dict[str, Any],
    amount: int,
    secret: str | None = None,
) -> dict[str, Any]:
    payer.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": secret or inv["payment_secret"],
            "amount_msat": amount,
        },
    )
    with pytest.raises(RpcCallError) as e:
        payer.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 20})

    # The sendpay_failure notification: what a waitsendpay waiting at the time got (one called
    # after the failure reads lightningd's database, which keeps no raw_message).
    def note() -> dict[str, Any] | None:
        return next(
            (
                n
                for n in _hooks(payer, "sendpay_failure")
                if n["data"]["payment_hash"] == inv["payment_hash"]
            ),
            None,
        )

    _wait(lambda: note() is not None)
    failure = note()
    assert failure is not None
    assert (e.value.code, e.value.message) == (failure["code"], failure["message"])
    return failure


# ------------------------------------------------------------------ channels
def test_balances_reserves_and_gossip_follow_lightningd(network: Network) -> None:
    """A private 1M-sat channel bob opens to alice pushing 400k sat: the numbers a real
    lightningd v26.06.6 showed for the same channel (anchors, 3750 perkw, 1% reserves)."""
    alice, bob = _pair(network, zeroconf=False)
    res = bob.rpc_call(
        "fundchannel",
        {"id": alice.node_id, "amount": 1_000_000, "announce": False, "push_msat": 400_000_000},
    )
    cid = res["channel_id"]
    assert res["channel_type"]["names"] == [
        "static_remotekey/even",
        "anchors/even",
        "scid_alias/even",
    ]
    assert {"tx", "txid", "outnum"} <= set(res) and res["txid"] in network.chain.mempool
    # before lock-in: our alias only, our gossip only, no scid
    ch = _chan(alice, cid)
    assert ch["state"] == "CHANNELD_AWAITING_LOCKIN" and "short_channel_id" not in ch
    assert set(ch["alias"]) == {"local"} and set(ch["updates"]) == {"local"}
    assert ch["status"] == [
        "CHANNELD_AWAITING_LOCKIN:Funding needs 3 more confirmations to be ready."
    ]
    assert ch["state_changes"] == []  # the first state is notified, not listed
    for node, ours, spendable, receivable in (
        (bob, 600_000_000, 578_718_000, 390_000_000),
        (alice, 400_000_000, 390_000_000, 578_718_000),
    ):
        ch = _chan(node, cid)
        assert ch["to_us_msat"] == ours and ch["total_msat"] == 1_000_000_000
        assert (ch["spendable_msat"], ch["receivable_msat"]) == (spendable, receivable)  # real node
        assert ch["our_reserve_msat"] == ch["their_reserve_msat"] == 10_000_000
        assert ch["feerate"] == {"perkw": 3750, "perkb": 15000}
        assert ch["last_tx_fee_msat"] == 4_215_000  # real node
        assert ch["funding"]["pushed_msat"] == 400_000_000
    network.mine(1)
    ch = _chan(alice, cid)
    assert ch["short_channel_id"] == f"{network.blockheight}x1x0"
    assert ch["state"] == "CHANNELD_AWAITING_LOCKIN"  # funding-confirms 3 on both sides
    network.mine(2)
    for node, other in ((alice, bob), (bob, alice)):
        ch = _chan(node, cid)
        assert ch["state"] == "CHANNELD_NORMAL" and ch["status"] == [
            "CHANNELD_NORMAL:Channel ready for use."
        ]
        assert ch["alias"]["remote"] == _chan(other, cid)["alias"]["local"]
        gossip = {
            "htlc_minimum_msat": 0,
            "htlc_maximum_msat": 990_000_000,
            "cltv_expiry_delta": 34,
            "fee_base_msat": 1000,
            "fee_proportional_millionths": 10,
        }
        assert ch["updates"] == {"local": gossip, "remote": gossip}
        assert ch["htlcs"] == [] and ch["maximum_htlc_out_msat"] == 990_000_000
        assert [c["message"] for c in ch["state_changes"]] == ["Lockin complete"]
    alice.wait_for_log(r"pay: channel_state_changed .*\"new_state\": \"CHANNELD_NORMAL\"")
    # reserve: what the opener wants the peer to keep; the opener keeps 1% (the peer's default)
    cid2 = alice.rpc_call(
        "fundchannel",
        {
            "id": bob.node_id,
            "amount": 200_000,
            "announce": False,
            "reserve": 5000,
            "push_msat": 50_000_000,
        },
    )["channel_id"]
    network.mine(3)
    a, b = _chan(alice, cid2), _chan(bob, cid2)
    assert (a["their_reserve_msat"], a["our_reserve_msat"]) == (5_000_000, 2_000_000)
    assert (b["their_reserve_msat"], b["our_reserve_msat"]) == (2_000_000, 5_000_000)
    assert b["spendable_msat"] == 45_000_000  # 50k pushed less the 5k bob must keep
    assert a["spendable_msat"] == 150_000_000 - 2_000_000 - 11_282_000  # less the opener's fee
    assert b["receivable_msat"] == a["spendable_msat"]


def test_fundchannel_waits_for_both_sides_mindepth(network: Network) -> None:
    """The peer's openchannel hook runs (the dummy's asks for mindepth 0: the zeroconf type
    bit is set), but the opener still waits for its own funding-confirms; a node configured
    with funding-confirms 1 locks in at the first block."""
    alice = network.add_node("alice", plugin=PAY_PLUGIN)
    bob = network.add_node("bob")  # the dummy plugin
    carol = network.add_node("carol", plugin=PAY_PLUGIN, config={"funding-confirms": 1})
    network.connect(alice, bob)
    network.connect(carol, alice)
    before = alice.rpc_call("listfunds")["outputs"]
    res = alice.rpc_call("fundchannel", {"id": bob.node_id, "amount": 300_000})
    bob.wait_for_log(r"dummy: openchannel from .* for 300000000msat")
    assert 50 in res["channel_type"]["bits"] and res["outnum"] == 0
    tx = network.chain.txs[res["txid"]].tx
    assert int(tx.vout[0].nValue) == 300_000
    after = alice.rpc_call("listfunds")["outputs"]
    assert len([o for o in after if o["status"] == "unconfirmed"]) == 1  # the change
    assert len(after) == len(before)  # one UTXO spent, the change in its place
    network.mine(2)
    assert _chan(alice, res["channel_id"])["state"] == "CHANNELD_AWAITING_LOCKIN"
    network.mine(1)
    assert _chan(bob, res["channel_id"])["state"] == "CHANNELD_NORMAL"
    # carol opens to alice: both wait for 1 (carol's config) and 3 (alice's): 3 blocks
    cid = carol.rpc_call("fundchannel", {"id": alice.node_id, "amount": 100_000, "mindepth": 1})[
        "channel_id"
    ]
    network.mine(1)
    assert _chan(carol, cid)["state"] == "CHANNELD_AWAITING_LOCKIN"
    network.mine(2)
    assert _chan(carol, cid)["state"] == "CHANNELD_NORMAL"
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("fundchannel", {"id": bob.node_id, "amount": 10**9})
    assert e.value.code == 301 and "Could not afford" in e.value.message


# ------------------------------------------------------------------ invoices
def test_invoice_decode_and_a_real_nodes_invoice(network: Network) -> None:
    alice, bob = _pair(network)
    assert alice.rpc_call("decode", [REAL_BOLT11]) == REAL_DECODE
    cid = _open(network, bob, alice, 500_000)
    inv = alice.rpc_call(
        "invoice",
        {
            "amount_msat": 123_456,
            "label": "one",
            "description": "a test",
            "cltv": 40,
            "expiry": 600,
        },
    )
    dec = bob.rpc_call("decode", {"string": inv["bolt11"]})
    assert dec["payee"] == alice.node_id and dec["amount_msat"] == 123_456
    assert dec["payment_hash"] == inv["payment_hash"]
    assert dec["payment_secret"] == inv["payment_secret"] and dec["expiry"] == 600
    assert dec["min_final_cltv_expiry"] == 40 and dec["features"] == "02024100"
    assert dec["created_at"] + 600 == inv["expires_at"]
    # the route hint: bob's alias for the channel (alice's alias.remote), bob's fees
    [[hint]] = dec["routes"]
    assert hint["pubkey"] == bob.node_id
    assert hint["short_channel_id"] == _chan(alice, cid)["alias"]["remote"]
    assert (hint["fee_base_msat"], hint["cltv_expiry_delta"]) == (1000, 34)
    assert alice.rpc_call("decode", [inv["bolt11"].upper()])["payment_hash"] == inv["payment_hash"]
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("invoice", {"amount_msat": 1, "label": "one", "description": "again"})
    assert e.value.code == 900 and e.value.message == "Duplicate label 'one'"
    broken = inv["bolt11"][:-1] + ("q" if inv["bolt11"][-1] != "q" else "p")  # bad checksum
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("decode", [broken])
    assert e.value.code == -32602 and "Bad bech32 string" in e.value.message
    listed = alice.rpc_call("listinvoices", {"label": "one"})["invoices"]
    assert [(i["status"], i["amount_msat"]) for i in listed] == [("unpaid", 123_456)]
    alice.wait_for_log(r"pay: invoice_creation .*\"label\": \"one\"")
    # the invoice's capacity warning when nobody can pay it that much
    big = alice.rpc_call("invoice", {"amount_msat": 10**12, "label": "big", "description": "x"})
    assert big["warning_capacity"] == "Insufficient incoming channel capacity to pay invoice"


def test_the_plugins_own_invoice_passes_its_rpc_command_hook(
    network_factory: Any,
) -> None:
    """lightningd calls a plugin's rpc_command hook for the plugin's own `invoice`: from a worker
    thread the hook answers (here it raises the cltv); from the main loop it cannot, and a
    real node hangs there (checked on v26.06.6): the harness reports a HarnessTimeout."""
    net = network_factory(timeout=3)
    node = net.add_node("n", plugin=PAY_PLUGIN, options={"pay-invoice-cltv": 77})
    inv = node.rpc_call("pay-invoice", {"amount_msat": 5000, "label": "threaded"})
    assert node.rpc_call("decode", [inv["bolt11"]])["min_final_cltv_expiry"] == 77
    [seen] = _hooks(node, "rpc_command")
    assert seen["method"] == "invoice" and seen["params"]["label"] == "threaded"
    out = node.rpc_call("pay-invoice-sync", {"amount_msat": 5000, "label": "stuck"}, timeout=10)
    assert "did not answer the rpc_command hook" in out["error"]["message"]
    assert net.take_errors(HarnessTimeout)
    # lightning-cli's raw token as a label: lightningd's param_label refuses it (a node whose
    # plugin has no rpc_command hook: pyln-client would die of the raw token)
    other = net.add_node("other")
    with pytest.raises(RpcCallError) as e:
        other.cli("invoice", "1000", "1.2.3", "desc")
    assert e.value.message == "label: should be a string or number: invalid token '1.2.3'"
    assert other.cli("invoice", "1000", "123", "desc")["bolt11"].startswith("lnbcrt10n1")


# ------------------------------------------------------------------ payments
def test_a_direct_payment(network: Network) -> None:
    alice, bob = _pair(network)
    cid = _open(network, alice, bob, 500_000)
    inv = bob.rpc_call(
        "invoice", {"amount_msat": 10_000_000, "label": "coffee", "description": "coffee"}
    )
    before_a, before_b = _chan(alice, cid), _chan(bob, cid)
    height = network.blockheight
    route = [
        {
            "id": bob.node_id,
            "channel": before_a["short_channel_id"],
            "amount_msat": 10_000_000,
            "delay": 18,
        }
    ]
    sent = alice.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": 10_000_000,
            "label": "for coffee",
        },
    )
    assert sent["status"] == "pending" and sent["message"].startswith("Monitor status")
    done = alice.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 20})
    assert done["status"] == "complete" and done["amount_sent_msat"] == 10_000_000
    assert done["label"] == "for coffee" and done["destination"] == bob.node_id
    [paid] = bob.rpc_call("listinvoices", ["coffee"])["invoices"]
    assert paid["status"] == "paid" and paid["payment_preimage"] == done["payment_preimage"]
    assert paid["amount_received_msat"] == 10_000_000 and paid["pay_index"] == 1
    after_a, after_b = _chan(alice, cid), _chan(bob, cid)
    assert after_a["to_us_msat"] == before_a["to_us_msat"] - 10_000_000
    assert after_b["to_us_msat"] == before_b["to_us_msat"] + 10_000_000
    assert after_a["out_payments_fulfilled"] == 1 and after_b["in_fulfilled_msat"] == 10_000_000
    assert after_a["min_to_us_msat"] == after_a["to_us_msat"]
    # the final hop's hook: no short_channel_id, the secret, the incoming channel
    [hook] = _hooks(bob, "htlc_accepted")
    assert hook["peer_id"] == alice.node_id and "forward_to" not in hook
    assert "short_channel_id" not in hook["onion"]
    assert hook["onion"]["payment_secret"] == inv["payment_secret"]
    assert hook["onion"]["total_msat"] == hook["onion"]["forward_msat"] == 10_000_000
    assert hook["onion"]["outgoing_cltv_value"] == height + 1 + 18
    assert hook["htlc"] == {
        "short_channel_id": after_b["short_channel_id"],
        "id": 0,
        "amount_msat": 10_000_000,
        "cltv_expiry": height + 19,
        "cltv_expiry_relative": 19,
        "payment_hash": inv["payment_hash"],
    }
    assert len(hook["onion"]["next_onion"]) == 2 * 1366
    [ip] = [h for h in _hooks(bob, "invoice_payment") if "payment" in h]  # the hook's
    assert ip["payment"]["label"] == "coffee" and ip["payment"]["msat"] == 10_000_000
    alice.wait_for_log(r"pay: sendpay_success")
    bob.wait_for_log(r"pay: invoice_payment \{\"label\"")
    [listed] = alice.rpc_call("listsendpays", {"payment_hash": inv["payment_hash"]})["payments"]
    assert listed["status"] == "complete"
    # paying again: lightningd says it already succeeded (idempotent)
    again = alice.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
            "amount_msat": 10_000_000,
        },
    )
    assert again["status"] == "complete"


def test_a_circular_route_and_where_the_peer_forwards_it(network: Network) -> None:
    """alice moves funds from an old channel X to a new channel Y with bob by paying herself
    over [bob via X, alice via Y]. As on a real v26.06.6 node, bob's lightningd forwards on the
    channel to alice with the largest spendable amount (best_channel), here X itself, unless his
    htlc_accepted hook names Y in `forward_to`; and Y must be named by bob's alias for it."""
    alice, bob = _pair(network)
    x = _factory_channel(bob, alice, 1_000_000, 400_000_000)  # never broadcast
    y = _open(network, bob, alice, 500_000)
    fee = 1000 + 100_000_000 * 10 // 1_000_000

    def route() -> list[dict[str, Any]]:
        return [
            {
                "id": bob.node_id,
                "channel": _chan(alice, x)["alias"]["local"],
                "amount_msat": 100_000_000 + fee,
                "delay": 18 + 34,
            },
            {
                "id": alice.node_id,
                "channel": _chan(alice, y)["alias"]["remote"],
                "amount_msat": 100_000_000,
                "delay": 18,
            },
        ]

    inv = alice.rpc_call(
        "invoice", {"amount_msat": 100_000_000, "label": "m1", "description": "migrate"}
    )
    x0, y0 = _chan(alice, x)["to_us_msat"], _chan(alice, y)["to_us_msat"]
    assert _pay(alice, route(), inv, 100_000_000)["status"] == "complete"
    [fwd] = _hooks(bob, "htlc_accepted")
    assert fwd["forward_to"] == x  # best_channel: bob can spend more on X than on Y
    assert fwd["onion"]["short_channel_id"] == route()[1]["channel"]
    assert fwd["onion"]["forward_msat"] == 100_000_000
    [final] = _hooks(alice, "htlc_accepted")
    assert final["htlc"]["short_channel_id"] == _chan(alice, x)["alias"]["local"]
    assert _chan(alice, x)["to_us_msat"] == x0 - fee and _chan(alice, y)["to_us_msat"] == y0
    assert bob.rpc_call("getinfo")["fees_collected_msat"] == fee
    # bob's plugin chooses Y
    bob.rpc_call("pay-mode", {"htlc": f"forward_to:{y}"})
    inv2 = alice.rpc_call(
        "invoice", {"amount_msat": 100_000_000, "label": "m2", "description": "migrate"}
    )
    assert _pay(alice, route(), inv2, 100_000_000)["status"] == "complete"
    assert _chan(alice, x)["to_us_msat"] == x0 - fee - 100_000_000 - fee
    assert _chan(alice, y)["to_us_msat"] == y0 + 100_000_000
    assert _chan(bob, y)["out_fulfilled_msat"] == 100_000_000
    bob.wait_for_log(r"pay: forward_event .*\"status\": \"settled\"")
    # Y by its real scid: refused for a scid_alias channel (unknown_next_peer), no forward_to
    bob.rpc_call("pay-mode", {})
    inv3 = alice.rpc_call("invoice", {"amount_msat": 1_000_000, "label": "m3", "description": "x"})
    bad = [
        dict(route()[0], amount_msat=1_000_000 + 1000 + 10),
        dict(route()[1], amount_msat=1_000_000, channel=_chan(alice, y)["short_channel_id"]),
    ]
    err = _pay_error(alice, bad, inv3, 1_000_000)
    assert (
        err["code"] == 204
        and err["message"] == "failed: WIRE_UNKNOWN_NEXT_PEER (reply from remote)"
    )
    assert err["data"]["erring_index"] == 1 and err["data"]["erring_node"] == bob.node_id
    assert (
        err["data"]["erring_channel"] == bad[1]["channel"] and err["data"]["raw_message"] == "400a"
    )
    assert "forward_to" not in _hooks(bob, "htlc_accepted")[-1]


def test_payment_failures_are_reported_as_lightningd_reports_them(network: Network) -> None:
    alice, bob = _pair(network)
    x = _factory_channel(bob, alice, 1_000_000, 400_000_000)
    y = _open(network, bob, alice, 500_000)
    balances = {
        n.name: (_chan(n, x)["to_us_msat"], _chan(n, y)["to_us_msat"]) for n in (alice, bob)
    }
    alias_x, alias_y = _chan(alice, x)["alias"]["local"], _chan(alice, y)["alias"]["remote"]
    height = network.blockheight

    def route(
        first: int, delay1: int = 18 + 34, delay2: int = 18, amount: int = 50_000_000
    ) -> list[dict[str, Any]]:
        return [
            {"id": bob.node_id, "channel": alias_x, "amount_msat": first, "delay": delay1},
            {"id": alice.node_id, "channel": alias_y, "amount_msat": amount, "delay": delay2},
        ]

    def invoice(label: str, amount: int = 50_000_000) -> dict[str, Any]:
        return dict(
            alice.rpc_call("invoice", {"amount_msat": amount, "label": label, "description": label})
        )

    ok_fee = 1000 + 500
    # the fee: bob wants 1000 + 10 ppm for Y
    err = _pay_error(alice, route(50_000_000 + ok_fee - 1), inv := invoice("fee"), 50_000_000)
    assert (
        err["code"] == 204 and err["message"] == "failed: WIRE_FEE_INSUFFICIENT (reply from remote)"
    )
    data = err["data"]
    assert (data["erring_index"], data["failcode"], data["erring_node"]) == (1, 0x100C, bob.node_id)
    assert (
        data["raw_message"] == "100c" + (50_000_000 + ok_fee - 1).to_bytes(8, "big").hex() + "0000"
    )
    assert data["status"] == "pending" and data["erring_channel"] == alias_y
    bob.wait_for_log(r"pay: forward_event .*WIRE_FEE_INSUFFICIENT")
    # once failed, waitsendpay reads the database: status failed, no raw_message
    again = alice.rpc_call("listsendpays", {"payment_hash": inv["payment_hash"]})["payments"]
    assert again[0]["status"] == "failed"
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("waitsendpay", [inv["payment_hash"]])
    assert (
        e.value.error["data"]["status"] == "failed" and "raw_message" not in e.value.error["data"]
    )
    # the cltv delta: bob needs 34 blocks between the HTLC he gets and the one he sends
    err = _pay_error(alice, route(50_000_000 + ok_fee, delay1=18 + 33), invoice("cltv"), 50_000_000)
    assert err["data"]["failcodename"] == "WIRE_INCORRECT_CLTV_EXPIRY"
    cltv_in = height + 1 + 18 + 33
    assert err["data"]["raw_message"] == "100d" + cltv_in.to_bytes(4, "big").hex() + "0000"
    # the final cltv: below cltv-final (18) from now: alice answers incorrect_or_unknown (203)
    err = _pay_error(
        alice, route(50_000_000 + ok_fee, delay1=16 + 34, delay2=16), invoice("final"), 50_000_000
    )
    assert err["code"] == 203
    assert (
        err["data"]["raw_message"]
        == "400f" + (50_000_000).to_bytes(8, "big").hex() + (height).to_bytes(4, "big").hex()
    )
    assert (err["data"]["erring_index"], err["data"]["erring_node"]) == (2, alice.node_id)
    # a wrong payment secret
    err = _pay_error(
        alice, route(50_000_000 + ok_fee), invoice("secret"), 50_000_000, secret="00" * 32
    )
    assert err["code"] == 203 and err["data"]["failcode"] == 0x400F
    # too little for the invoice
    err = _pay_error(
        alice, route(40_000_000 + 1400, amount=40_000_000), invoice("less"), 40_000_000
    )
    assert err["code"] == 203
    # the forwarder's hook refuses it
    bob.rpc_call("pay-mode", {"htlc": "fail:2002"})
    err = _pay_error(alice, route(50_000_000 + ok_fee), invoice("hook"), 50_000_000)
    assert err["message"] == "failed: WIRE_TEMPORARY_NODE_FAILURE (reply from remote)"
    assert err["data"]["raw_message"] == "2002" and err["data"]["erring_index"] == 1
    # the payee's invoice_payment hook refuses it
    bob.rpc_call("pay-mode", {})
    alice.rpc_call("pay-mode", {"invoice_payment": "reject"})
    err = _pay_error(alice, route(50_000_000 + ok_fee), invoice("rejected"), 50_000_000)
    assert err["code"] == 203 and err["data"]["erring_index"] == 2
    alice.rpc_call("pay-mode", {})
    # more than alice can spend on X: her own channeld refuses it (a local failure)
    err = _pay_error(
        alice, route(500_000_000, amount=499_000_000), invoice("big", 499_000_000), 499_000_000
    )
    assert err["code"] == 204 and err["message"].startswith(
        "failed: WIRE_TEMPORARY_CHANNEL_FAILURE (WIRE_TEMPORARY_CHANNEL_FAILURE: Capacity "
        "exceeded - HTLC fee: "
    )
    assert (err["data"]["erring_index"], err["data"]["erring_node"]) == (0, alice.node_id)
    assert err["data"]["erring_channel"] == alias_x and "raw_message" not in err["data"]
    alice.wait_for_log(r"pay: sendpay_failure")
    # a channel alice does not have
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call(
            "sendpay", {"route": [dict(route(1)[0], channel="9x9x9")], "payment_hash": "11" * 32}
        )
    assert e.value.code == 204 and e.value.message == "No connection to first peer found"
    assert e.value.error["data"] == {
        "erring_index": 0,
        "failcode": 16394,
        "failcodename": "WIRE_UNKNOWN_NEXT_PEER",
        "erring_node": alice.node_id,
    }
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("waitsendpay", {"payment_hash": "22" * 32})
    assert e.value.code == 208 and e.value.message == (
        f"Never attempted payment part 0 for '{'22' * 32}'"
    )
    # nothing moved
    assert balances == {
        n.name: (_chan(n, x)["to_us_msat"], _chan(n, y)["to_us_msat"]) for n in (alice, bob)
    }
    assert all(_chan(n, c)["htlcs"] == [] for n in (alice, bob) for c in (x, y))


def test_the_hook_can_resolve_or_answer_out_of_schema(network: Network) -> None:
    """`resolve` with the preimage pays without any invoice; a wrong key fails with a bare
    0x400f (lightningd checks the hash); a result outside the schema is a finding (lightningd
    would exit) and the HTLC fails."""
    alice, bob = _pair(network)
    cid = _factory_channel(alice, bob, 400_000, 0)
    preimage = "42" * 32
    phash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    route = [
        {
            "id": bob.node_id,
            "channel": _chan(alice, cid)["alias"]["local"],
            "amount_msat": 3_000_000,
            "delay": 20,
        }
    ]
    bob.rpc_call("pay-mode", {"htlc": f"resolve:{preimage}"})
    alice.rpc_call("sendpay", {"route": route, "payment_hash": phash})
    done = alice.rpc_call("waitsendpay", {"payment_hash": phash, "timeout": 20})
    assert done["payment_preimage"] == preimage and _chan(bob, cid)["to_us_msat"] == 3_000_000
    bob.rpc_call("pay-mode", {"htlc": "resolve:" + "43" * 32})
    other = hashlib.sha256(bytes.fromhex("44" * 32)).hexdigest()
    err = _pay_error(alice, route, {"payment_hash": other, "payment_secret": "00" * 32}, 3_000_000)
    assert err["code"] == 203 and err["data"]["raw_message"] == "400f"
    bob.rpc_call("pay-mode", {"htlc": "bogus"})
    third = hashlib.sha256(bytes.fromhex("45" * 32)).hexdigest()
    err = _pay_error(alice, route, {"payment_hash": third, "payment_secret": "00" * 32}, 3_000_000)
    assert err["data"]["failcodename"] == "WIRE_TEMPORARY_NODE_FAILURE"
    [finding] = network.take_errors()
    assert "htlc_accepted hook result" in str(finding)
    assert _chan(bob, cid)["to_us_msat"] == 3_000_000


def test_an_htlc_in_flight_is_listed_and_waitsendpay_times_out(network: Network) -> None:
    alice, bob = _pair(network)
    cid = _factory_channel(alice, bob, 400_000, 0)
    inv = bob.rpc_call(
        "invoice", {"amount_msat": 20_000_000, "label": "slow", "description": "slow"}
    )
    bob.rpc_call("pay-mode", {"htlc": "hold:3"})
    spendable = _chan(alice, cid)["spendable_msat"]
    route = [
        {
            "id": bob.node_id,
            "channel": _chan(alice, cid)["alias"]["local"],
            "amount_msat": 20_000_000,
            "delay": 20,
        }
    ]
    alice.rpc_call(
        "sendpay",
        {
            "route": route,
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
        },
    )
    bob.wait_for_log(r"pay: htlc_accepted")
    a, b = _chan(alice, cid), _chan(bob, cid)
    expiry = network.blockheight + 21
    assert a["htlcs"] == [
        {
            "direction": "out",
            "id": 0,
            "amount_msat": 20_000_000,
            "expiry": expiry,
            "payment_hash": inv["payment_hash"],
            "state": "SENT_ADD_ACK_REVOCATION",
        }
    ]
    assert b["htlcs"] == [
        {
            "direction": "in",
            "id": 0,
            "amount_msat": 20_000_000,
            "expiry": expiry,
            "payment_hash": inv["payment_hash"],
            "state": "RCVD_ADD_ACK_REVOCATION",
            "status": "Waiting for the htlc_accepted hook of plugin pay_plugin.py",
        }
    ]
    assert a["spendable_msat"] < spendable - 20_000_000 and a["to_us_msat"] == 400_000_000
    assert a["out_payments_offered"] == 1 and b["in_offered_msat"] == 20_000_000
    assert alice.rpc_call("listsendpays")["payments"][0]["status"] == "pending"
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 1})
    assert (e.value.code, e.value.message) == (200, "Timed out while waiting")
    done = alice.rpc_call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 20})
    assert done["status"] == "complete" and _chan(alice, cid)["htlcs"] == []


# ------------------------------------------------------------------ close
def _states(node: FakeNode, cid: str) -> list[str]:
    return [n["new_state"] for n in _hooks(node, "channel_state_changed") if n["channel_id"] == cid]


def test_a_mutual_close_of_a_factory_channel(network: Network) -> None:
    """Its funding tx never reaches the chain: both sides go SHUTTING_DOWN, SIGEXCHANGE,
    COMPLETE (as a real node's notifications say), the closing tx waits for an input that
    never comes, and the channel takes no more HTLCs."""
    alice, bob = _pair(network)
    cid = _factory_channel(bob, alice, 1_000_000, 400_000_000)
    alias = _chan(alice, cid)["alias"]["local"]
    res = alice.rpc_call("close", {"id": cid, "unilateraltimeout": 0})
    assert res["type"] == "mutual" and len(res["txs"]) == len(res["txids"]) == 1
    for node, closer, cause, first in (
        (alice, "local", "user", "User or plugin invoked close command"),
        (bob, "remote", "remote", "Peer closes channel"),
    ):
        _wait(
            lambda node=node: (
                _states(node, cid)[-3:]
                == ["CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE"]
            )
        )
        ch = _chan(node, cid)
        assert ch["state"] == "CLOSINGD_COMPLETE" and ch["closer"] == closer
        assert "owner" not in ch
        assert [c["message"] for c in ch["state_changes"]] == [
            "Lockin complete",
            first,
            "Start closingd",
            "Closing complete",
        ]
        assert {c["cause"] for c in ch["state_changes"][1:]} == {cause}
        assert ch["status"] == [
            f"CLOSINGD_SIGEXCHANGE:We agreed on a closing fee of 2895 "
            f"satoshi for tx:{res['txids'][0]}"
        ]  # 2895: real node
    network.mine(2)
    assert res["txids"][0] not in network.chain.txs  # its input never existed
    assert _chan(alice, cid)["state"] == "CLOSINGD_COMPLETE"
    # no more HTLCs over it
    inv = bob.rpc_call("invoice", {"amount_msat": 1000, "label": "late", "description": "x"})
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call(
            "sendpay",
            {
                "route": [{"id": bob.node_id, "channel": alias, "amount_msat": 1000, "delay": 20}],
                "payment_hash": inv["payment_hash"],
            },
        )
    assert e.value.message == "No connection to first peer found"
    with pytest.raises(RpcCallError) as e:
        alice.rpc_call("close", [cid])
    assert e.value.message == f"id: Channel id not found: invalid token '\"{cid}\"'"
    assert alice.closed_channels == [cid]


def test_a_mutual_close_of_a_channel_on_chain(network: Network) -> None:
    alice, bob = _pair(network)
    cid = _open(network, alice, bob, 300_000, push_msat=100_000_000)
    res = bob.rpc_call("close", [alice.node_id])  # by peer id: its only channel
    assert res["type"] == "mutual"
    closing = network.chain.txs[res["txids"][0]].tx
    outs = sorted(int(o.nValue) for o in closing.vout)
    assert outs == [100_000, 200_000 - 2895]  # the opener pays the fee
    network.mine(1)
    for node in (alice, bob):
        assert _chan(node, cid)["state"] == "ONCHAIN"
        _wait(lambda node=node: _states(node, cid)[-2:] == ["FUNDING_SPEND_SEEN", "ONCHAIN"])
        assert any(
            o["amount_msat"] in (100_000_000, (200_000 - 2895) * 1000)
            for o in node.rpc_call("listfunds")["outputs"]
        )
    network.mine(99)
    assert alice.rpc_call("listpeerchannels")["channels"] == []  # forgotten


def test_close_with_the_peer_away(network: Network) -> None:
    """Peer offline: unilateraltimeout expires into a unilateral close (what the harness always
    did); with unilateraltimeout=0 the call waits for the peer, then closes mutually."""
    alice, bob = _pair(network)
    c1 = _factory_channel(alice, bob, 200_000, 0)
    c2 = _factory_channel(bob, alice, 200_000, 0)
    network.disconnect(alice, bob)
    started = time.monotonic()
    res = alice.rpc_call("close", {"id": c1, "unilateraltimeout": 1})
    assert res == {"txs": [], "txids": [], "type": "unilateral"}
    assert time.monotonic() - started >= 1
    assert [c["new_state"] for c in _chan(alice, c1)["state_changes"]] == [
        "CHANNELD_NORMAL",
        "CHANNELD_SHUTTING_DOWN",
        "AWAITING_UNILATERAL",
    ]
    assert _chan(alice, c1)["state_changes"][-1]["message"] == (
        "Forcibly closed by `close` command timeout"
    )
    out: list[Any] = []
    waiter = threading.Thread(
        target=lambda: out.append(alice.rpc_call("close", {"id": c2, "unilateraltimeout": 0}))
    )
    waiter.start()
    waiter.join(1.5)
    assert waiter.is_alive() and _chan(alice, c2)["state"] == "CHANNELD_SHUTTING_DOWN"
    assert _chan(bob, c2)["state"] == "CHANNELD_NORMAL"  # bob has not heard yet
    network.connect(alice, bob)
    waiter.join(10)
    assert out and out[0]["type"] == "mutual"
    assert _chan(bob, c2)["state"] == "CLOSINGD_COMPLETE"


def test_close_waits_for_htlcs_in_flight(network: Network) -> None:
    alice, bob = _pair(network)
    cid = _factory_channel(alice, bob, 400_000, 0)
    inv = bob.rpc_call("invoice", {"amount_msat": 5_000_000, "label": "x", "description": "x"})
    bob.rpc_call("pay-mode", {"htlc": "hold:2"})
    alice.rpc_call(
        "sendpay",
        {
            "route": [
                {
                    "id": bob.node_id,
                    "channel": _chan(alice, cid)["alias"]["local"],
                    "amount_msat": 5_000_000,
                    "delay": 20,
                }
            ],
            "payment_hash": inv["payment_hash"],
            "payment_secret": inv["payment_secret"],
        },
    )
    bob.wait_for_log(r"pay: htlc_accepted")
    out: list[Any] = []
    closer = threading.Thread(target=lambda: out.append(alice.rpc_call("close", [cid])))
    closer.start()
    _wait(lambda: _chan(alice, cid)["state"] == "CHANNELD_SHUTTING_DOWN")
    assert not out  # the HTLC still has to settle
    closer.join(15)
    assert out and out[0]["type"] == "mutual"
    done = alice.rpc_call("waitsendpay", [inv["payment_hash"]])
    assert done["status"] == "complete"
    assert _chan(bob, cid)["to_us_msat"] == 5_000_000
