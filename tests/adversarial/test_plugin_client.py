"""The one plugin call site the engine's sign-once rule changes, through the real plugin process
(tests/harness): a signed client's Signer stays DONE whatever its LSP sends, and the plugin must
then neither store the path again nor move the record back from funded."""

from __future__ import annotations

import time
from collections.abc import Callable

from test_plugin_harness import _create

from superscalar_plugin.engine import blip56, protocol, wire

from .plugin_hostile import lsp_with_clients
from harness.network import SUPERSCALAR_PLUGIN as PLUGIN, Network
from harness.node import FakeNode


def _ceremony(instance: str, message: bytes) -> str:
    payload = protocol.encode(protocol.Ceremony(bytes.fromhex(instance), message))
    return blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, payload).encode().hex()


def test_late_ceremony_messages_leave_a_funded_client_funded_with_its_path(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = lsp_with_clients(network_factory, PLUGIN, 60)
    requests: list[str] = []

    def keep_requests(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        msg = bytes.fromhex(msg_hex)
        if int.from_bytes(msg[:2], "big") == blip56.FACTORY_MESSAGE_TYPE and dst is clients[0]:
            parsed = blip56.decode_factory_message(msg)
            if isinstance(parsed, blip56.Piggyback):
                p = protocol.decode(parsed.payload)
                if isinstance(p, protocol.Ceremony) and p.message[0] == wire.MsgType.SIGN_REQUEST:
                    requests.append(msg_hex)
        return msg_hex

    net.intercept = keep_requests
    created = _create(lsp, clients)
    assert created["state"] == "funded" and len(requests) == 1
    [before] = clients[0].rpc_call("factory-status")["factories"]
    deadline = time.monotonic() + 20
    while before["state"] != "funded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        [before] = clients[0].rpc_call("factory-status")["factories"]
    sign_request = protocol.decode(
        blip56.decode_factory_message(bytes.fromhex(requests[0])).payload  # type: ignore[union-attr]
    )
    assert isinstance(sign_request, protocol.Ceremony)
    session = wire.decode(sign_request.message).session
    # The LSP (or anyone speaking for it) sends an ABORT of the finished ceremony, then replays
    # the SIGN_REQUEST: both are refused or ignored; nothing the client holds changes.
    clients[0].deliver_custommsg(
        lsp, _ceremony(created["instance"], wire.Abort(session, "late").encode())
    )
    clients[0].deliver_custommsg(lsp, requests[0])
    # Refused by the signer, or dropped before it (a funded client keeps no ceremony session).
    clients[0].wait_for_log("already signed this factory|no ceremony in flight")
    [after] = clients[0].rpc_call("factory-status")["factories"]
    assert after["state"] == "funded"
    assert [e["txid"] for e in after["exit_path"]] == [e["txid"] for e in before["exit_path"]]
