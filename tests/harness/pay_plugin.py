#!/usr/bin/env python3
"""A tiny pyln-client plugin for the harness's payment self-tests: it logs every `htlc_accepted`
and `invoice_payment` payload (as `pay: <hook> <json>`) and every payment notification, and
answers the hooks as `pay-mode` says (and `openchannel` with mindepth 0 if `--pay-zeroconf`):

- htlc: "continue" | "fail:<failure_message hex>" | "onion:<failure_onion hex>" |
  "resolve:<payment_key>" | "forward_to:<channel_id>" | "hold:<seconds>" (then continue) |
  "payload:<tlv hex>" | "bogus" (a result outside the schema)
- invoice_payment: "continue" | "reject" | "fail:<failure_message hex>"

With `--pay-invoice-cltv=N` (N > 0) its `rpc_command` hook (filtered on `invoice`) replaces an
invoice's `cltv` with N, as the real plugin raises it. `pay-invoice` calls `invoice` from a
thread (so the hook can answer), `pay-invoice-sync` from the plugin's main loop (which cannot
answer its own hook meanwhile: a deadlock, on a real node too)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from pyln.client import Plugin, RpcError

plugin = Plugin()
plugin.add_option(
    "pay-invoice-cltv", 0, "cltv the rpc_command hook puts in invoices", opt_type="int"
)
plugin.add_option(
    "pay-zeroconf", False, "openchannel hook: accept with mindepth 0", opt_type="bool"
)
MODE = {"htlc": "continue", "invoice_payment": "continue"}


def _log(kind: str, obj: Any) -> None:
    plugin.log(f"pay: {kind} {json.dumps(obj, sort_keys=True)}")


@plugin.method("pay-mode")
def pay_mode(
    plugin: Plugin, htlc: str = "continue", invoice_payment: str = "continue"
) -> dict[str, str]:
    """How the next hooks answer."""
    MODE.update(htlc=htlc, invoice_payment=invoice_payment)
    return dict(MODE)


@plugin.hook("htlc_accepted")
def on_htlc(
    onion: dict[str, Any], htlc: dict[str, Any], plugin: Plugin, **kwargs: Any
) -> dict[str, Any]:
    _log("htlc_accepted", {"onion": onion, "htlc": htlc, **kwargs})
    kind, _, arg = MODE["htlc"].partition(":")
    if kind == "hold":
        time.sleep(float(arg))
    elif kind == "fail":
        return {"result": "fail", "failure_message": arg}
    elif kind == "onion":
        return {"result": "fail", "failure_onion": arg}
    elif kind == "resolve":
        return {"result": "resolve", "payment_key": arg}
    elif kind == "forward_to":
        return {"result": "continue", "forward_to": arg}
    elif kind == "payload":
        return {"result": "continue", "payload": arg}
    elif kind == "bogus":
        return {"result": "bogus"}
    return {"result": "continue"}


@plugin.hook("openchannel")
def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    if plugin.get_option("pay-zeroconf"):
        return {"result": "continue", "mindepth": 0}
    return {"result": "continue"}


@plugin.hook("invoice_payment")
def on_invoice_payment(payment: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    _log("invoice_payment", {"payment": payment})
    kind, _, arg = MODE["invoice_payment"].partition(":")
    if kind == "reject":
        return {"result": "reject"}
    if kind == "fail":
        return {"result": "reject", "failure_message": arg}
    return {"result": "continue"}


@plugin.hook("rpc_command", filters=["invoice"])
def on_rpc_command(rpc_command: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    cltv = int(plugin.get_option("pay-invoice-cltv"))
    _log("rpc_command", rpc_command)
    params = rpc_command.get("params")
    if not cltv or not isinstance(params, dict):
        return {"result": "continue"}
    return {"replace": {**rpc_command, "jsonrpc": "2.0", "params": {**params, "cltv": cltv}}}


@plugin.async_method("pay-invoice")
def pay_invoice(plugin: Plugin, request: Any, amount_msat: int, label: str) -> None:
    """`invoice` from a worker thread: the main loop stays free for our own rpc_command hook."""

    def run() -> None:
        try:
            request.set_result(plugin.rpc.invoice(amount_msat, label, "from the plugin"))
        except RpcError as e:
            request.set_result({"error": e.error})

    threading.Thread(target=run, daemon=True).start()


@plugin.method("pay-invoice-sync")
def pay_invoice_sync(plugin: Plugin, amount_msat: int, label: str) -> dict[str, Any]:
    """`invoice` from the main loop: our rpc_command hook cannot run until we return."""
    try:
        return dict(plugin.rpc.invoice(amount_msat, label, "from the plugin"))
    except RpcError as e:
        return {"error": e.error}


for _topic in (
    "channel_state_changed",
    "invoice_creation",
    "invoice_payment",
    "sendpay_success",
    "sendpay_failure",
    "forward_event",
):

    def _make(topic: str) -> Any:
        def handler(plugin: Plugin, **kwargs: Any) -> None:
            _log(topic, kwargs.get(topic, kwargs))

        return handler

    plugin.add_subscription(_topic, _make(_topic))


if __name__ == "__main__":
    plugin.run()
