"""Helpers for tests against a real regtest bitcoind (shared by the policy and exit tests)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from superscalar_plugin.chain.bitcoind import BitcoindProcess, BitcoindRPCError
from superscalar_plugin.engine.ceremony import SignedNodeTx
from superscalar_plugin.engine.taproot import P2A_SCRIPT
from superscalar_plugin.engine.tree import Factory, fee_for

SAT = Decimal(100_000_000)
CPFP_BLOCKMINTXFEE = "0.00005"  # 5 sat/vB: above the tree's 2 sat/vB, so a tree tx alone waits
CPFP_PACKAGE_RATE_KVB = 10_000  # what a bumped parent+child package pays (10 sat/vB)


def btc(sat: int) -> Decimal:
    return Decimal(sat) / SAT


def sat(btc: Decimal) -> int:
    sat = btc * SAT
    assert sat == sat.to_integral_value(), btc
    return int(sat)


def ensure_funds(node: BitcoindProcess, btc: int = 10) -> None:
    if node.wallet.call("getbalances")["mine"]["trusted"] < btc:
        node.mine(101)


def address_of(node: BitcoindProcess, script_pubkey: bytes) -> str:
    """The regtest address of a P2TR scriptPubKey, through a `rawtr()` descriptor."""
    assert script_pubkey[:2] == b"\x51\x20" and len(script_pubkey) == 34
    desc = node.rpc.call("getdescriptorinfo", f"rawtr({script_pubkey[2:].hex()})")["descriptor"]
    [address] = node.rpc.call("deriveaddresses", desc)
    assert node.rpc.call("validateaddress", address)["scriptPubKey"] == script_pubkey.hex()
    return str(address)


def wallet_script(node: BitcoindProcess) -> bytes:
    info = node.wallet.call("getaddressinfo", node.new_address())
    return bytes.fromhex(info["scriptPubKey"])


def send_funding(node: BitcoindProcess, f: Factory) -> tuple[str, int]:
    """The wallet pays exactly `funding_amount` to the funding script; the tx is left unmined."""
    txid = node.wallet.call(
        "sendtoaddress", address_of(node, f.funding_output.script_pubkey), btc(f.funding_amount)
    )
    tx = node.rpc.call("getrawtransaction", txid, True)  # still in the mempool: no txindex needed
    [vout] = [
        o["n"]
        for o in tx["vout"]
        if o["scriptPubKey"]["hex"] == f.funding_output.script_pubkey.hex()
    ]
    assert sat(tx["vout"][vout]["value"]) == f.funding_amount
    return str(txid), int(vout)


def fund(node: BitcoindProcess, f: Factory) -> tuple[tuple[str, int], int]:
    """Funding outpoint, confirmed; and the height of its block."""
    outpoint = send_funding(node, f)
    node.mine(1)
    assert confirmed_height(node, *outpoint) == node.height()
    return outpoint, node.height()


def confirmed_height(node: BitcoindProcess, txid: str, vout: int) -> int | None:
    """Height of the block holding the unspent output `txid:vout`, None if unconfirmed/spent."""
    out = node.rpc.call("gettxout", txid, vout, False)
    if out is None:
        return None
    return node.height() - int(out["confirmations"]) + 1


def utxo(node: BitcoindProcess, txid: str, vout: int) -> tuple[int, bytes] | None:
    out = node.rpc.call("gettxout", txid, vout, False)
    if out is None:
        return None
    return sat(out["value"]), bytes.fromhex(out["scriptPubKey"]["hex"])


def mine_to(node: BitcoindProcess, height: int) -> None:
    if node.height() < height:
        node.mine(height - node.height())
    assert node.height() == height


def test_accept(node: BitcoindProcess, raws: Sequence[bytes]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = node.rpc.call("testmempoolaccept", [r.hex() for r in raws])
    return result


def refused(node: BitcoindProcess, raw: bytes, reason: str) -> None:
    """`raw` is refused by testmempoolaccept and by sendrawtransaction, both saying `reason`."""
    [tested] = test_accept(node, [raw])
    assert tested["allowed"] is False and tested["reject-reason"] == reason, tested
    with pytest.raises(BitcoindRPCError) as refused:
        node.rpc.call("sendrawtransaction", raw.hex())
    assert refused.value.message == reason, refused.value


def delay(f: Factory, states: Sequence[int], node: int) -> int:
    return f.topology.relative_delay(node, states[node])


def anchor_vout(signed: SignedNodeTx) -> int:
    outs = signed.unsigned.tx.outputs
    assert outs[-1].script_pubkey == P2A_SCRIPT
    return len(outs) - 1


def cpfp_child(
    node: BitcoindProcess,
    parent: SignedNodeTx,
    parent_vsize: int,
    parent_fee: int,
    rate_kvb: int = CPFP_PACKAGE_RATE_KVB,
) -> bytes:
    """A wallet-funded child spending `parent`'s P2A anchor (empty witness), paying enough that
    the parent+child package reaches CPFP_PACKAGE_RATE_KVB."""
    anchor = anchor_vout(parent)
    anchor_sat = parent.unsigned.tx.outputs[anchor].amount
    coin = max(node.wallet.call("listunspent", 1), key=lambda u: u["amount"])
    coin_sat = sat(coin["amount"])
    dest = node.new_address()
    inputs = [{"txid": parent.txid, "vout": anchor}, {"txid": coin["txid"], "vout": coin["vout"]}]
    prevtxs = [
        {
            "txid": parent.txid,
            "vout": anchor,
            "scriptPubKey": P2A_SCRIPT.hex(),
            "amount": btc(anchor_sat),
        }
    ]

    def build(fee: int) -> tuple[bytes, int]:
        raw = node.rpc.call(
            "createrawtransaction", inputs, [{dest: btc(coin_sat + anchor_sat - fee)}]
        )
        signed = node.wallet.call("signrawtransactionwithwallet", raw, prevtxs)
        assert signed["complete"] is True, signed
        decoded = node.rpc.call("decoderawtransaction", signed["hex"])
        assert "txinwitness" not in decoded["vin"][0]  # a P2A spend: empty witness
        return bytes.fromhex(signed["hex"]), int(decoded["vsize"])

    _, child_vsize = build(1000)  # the size does not depend on the fee
    fee = fee_for(parent_vsize + child_vsize, rate_kvb) - parent_fee
    raw, vsize = build(fee)
    assert vsize == child_vsize
    return raw
