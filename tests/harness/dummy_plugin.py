#!/usr/bin/env python3
"""A tiny pyln-client plugin for the harness self-test: it declares what the real plugin declares
(non-dynamic, feature bit 271 in init and node, custom message 32800) and exercises the paths a
factory creation uses (custom messages, the openchannel hook, fundchannel_start/complete with a
PSBT built by python-bitcointx, signpsbt/sendpsbt, the datastore)."""

from __future__ import annotations

import os
from typing import Any

from pyln.client import Plugin, RpcError

from superscalar_plugin.chain import btx

from bitcointx.core.psbt import PartiallySignedTransaction, PSBT_Output  # isort: skip

FACTORY_MSG = 32800
plugin = Plugin(
    dynamic=False,
    init_features=1 << 271,
    node_features=1 << 271,
    custom_msgs=[FACTORY_MSG],
)
plugin.add_option("dummy-reject", False, "Reject every channel open", opt_type="bool")
plugin.add_option("dummy-label", "dummy", "A string option, echoed in logs")


def _msg(body: bytes) -> str:
    return FACTORY_MSG.to_bytes(2, "big").hex() + body.hex()


@plugin.init()
def init(
    options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **kwargs: Any
) -> None:
    plugin.log(
        f"dummy: init label={options.get('dummy-label')} network={configuration['network']} "
        f"lightning-dir={configuration['lightning-dir']} "
        f"init-features={configuration['feature_set']['init']}"
    )


@plugin.hook("custommsg")
def on_custommsg(peer_id: str, payload: str, plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    msgtype = int(payload[:4], 16)
    body = bytes.fromhex(payload[4:])
    plugin.log(f"dummy: custommsg type {msgtype} from {peer_id}: {body!r}")
    if msgtype != FACTORY_MSG:
        return {"result": "continue"}
    if body == b"bad-hook-result":
        return {"result": "bogus"}  # not in the schema's enum: the harness must catch it
    if body.startswith(b"ping:"):
        plugin.rpc.sendcustommsg(peer_id, _msg(b"pong:" + body[5:]))
    return {"result": "continue"}


@plugin.hook("openchannel")
def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    plugin.log(f"dummy: openchannel from {openchannel['id']} for {openchannel['funding_msat']}msat")
    if plugin.get_option("dummy-reject"):
        return {"result": "reject", "error_message": "dummy says no"}
    return {"result": "continue", "mindepth": 0}


@plugin.hook("peer_connected")
def on_peer_connected(peer: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    plugin.log(
        f"dummy: peer_connected {peer['id']} {peer['direction']} features={peer['features']}"
    )
    return {"result": "continue"}


@plugin.subscribe("connect")
def on_connect(plugin: Plugin, connect: dict[str, Any], **kwargs: Any) -> None:
    plugin.log(f"dummy: connect {connect['id']} {connect['direction']}")


@plugin.subscribe("disconnect")
def on_disconnect(plugin: Plugin, disconnect: dict[str, Any], **kwargs: Any) -> None:
    plugin.log(f"dummy: disconnect {disconnect['id']}")


@plugin.subscribe("block_added")
def on_block_added(plugin: Plugin, block_added: dict[str, Any], **kwargs: Any) -> None:
    plugin.log(f"dummy: block_added {block_added['height']}")


@plugin.subscribe("channel_state_changed")
def on_state(plugin: Plugin, channel_state_changed: dict[str, Any], **kwargs: Any) -> None:
    c = channel_state_changed
    plugin.log(f"dummy: channel_state_changed {c['channel_id']} -> {c['new_state']}")


@plugin.method("dummy-send")
def dummy_send(plugin: Plugin, peer_id: str, text: str) -> dict[str, Any]:
    """Send `text` to `peer_id` in a type-32800 custom message."""
    return plugin.rpc.sendcustommsg(peer_id, _msg(text.encode()))


@plugin.method("dummy-open")
def dummy_open(plugin: Plugin, id: str, amount: int) -> dict[str, Any]:
    """Open a zero-conf unannounced channel with `id`: fundchannel_start, a funding PSBT from
    fundpsbt plus the channel output, fundchannel_complete, then signpsbt and sendpsbt."""
    start = plugin.rpc.fundchannel_start(id, amount, announce=False, mindepth=0)
    # version, locktime, counts, segwit marker; plus the channel output (P2WSH, 43 bytes)
    startweight = 4 * (4 + 4 + 1 + 1) + 2 + 4 * (8 + 1 + 34)
    funding = plugin.rpc.fundpsbt(
        satoshi=amount, feerate="normal", startweight=startweight, excess_as_change=True
    )
    psbt = PartiallySignedTransaction.from_base64(funding["psbt"])
    psbt.add_output(
        btx.CTxOut(amount, btx.CScript(bytes.fromhex(start["scriptpubkey"]))), PSBT_Output()
    )
    unsigned = psbt.to_base64()
    done = plugin.rpc.fundchannel_complete(id, unsigned, withhold=False)
    signed = plugin.rpc.signpsbt(unsigned)["signed_psbt"]
    sent = plugin.rpc.sendpsbt(signed)
    return {
        "channel_id": done["channel_id"],
        "txid": sent["txid"],
        "scriptpubkey": start["scriptpubkey"],
        "mindepth": start.get("mindepth"),
    }


@plugin.method("dummy-store")
def dummy_store(plugin: Plugin, key: str, value: str) -> dict[str, Any]:
    """Write `value` under ["dummy", key] in the datastore."""
    return plugin.rpc.datastore(key=["dummy", key], string=value, mode="create-or-replace")


@plugin.method("dummy-read")
def dummy_read(plugin: Plugin, key: str) -> dict[str, Any]:
    """Read ["dummy", key] from the datastore."""
    entries = plugin.rpc.listdatastore(key=["dummy", key])["datastore"]
    return {"value": entries[0].get("string") if entries else None}


@plugin.method("dummy-call")
def dummy_call(plugin: Plugin, method: str, params: Any = None) -> dict[str, Any]:
    """Call any RPC from inside the plugin; returns {"result"} or {"error"}."""
    try:
        return {"result": plugin.rpc.call(method, params)}
    except RpcError as e:
        return {"error": e.error}


@plugin.method("dummy-crash")
def dummy_crash(plugin: Plugin) -> None:
    """Exit at once with code 3 (no reply)."""
    os._exit(3)


if __name__ == "__main__":
    plugin.run()
