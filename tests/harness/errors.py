"""Errors of the harness.

Two families:

- `HarnessError` and subclasses are *findings*: something a real lightningd would not have
  accepted (a schema violation, a plugin that died or broke the protocol, a call to an RPC the fake
  does not serve, a timeout). They are recorded on the `Network` (`network.errors`) as they happen,
  from whatever thread saw them, and the `network` fixture fails the test at teardown if any are
  left. A test that provokes one on purpose takes it with `network.take_errors(kind)`.
- `RpcCallError` is the JSON-RPC error a call returned (what `lightning-cli` would print), raised
  by `FakeNode.rpc_call`. It is a `pyln.client.RpcError`, so `.error` is the error object.
"""

from __future__ import annotations

from typing import Any

from pyln.client import RpcError


class HarnessError(Exception):
    """A finding: something lightningd would have refused or that broke the test set-up."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        self.message = message
        super().__init__(f"[{node}] {message}" if node else message)


class SchemaViolation(HarnessError):
    """A request, response, hook payload, hook result or notification that does not match the
    Core Lightning JSON schema it is checked against."""

    def __init__(self, what: str, errors: list[str], instance: Any, *, node: str | None = None):
        self.what = what
        self.errors = errors
        self.instance = instance
        shown = repr(instance)
        if len(shown) > 600:
            shown = shown[:600] + "..."
        text = f"{what} does not match its schema:\n  - " + "\n  - ".join(errors)
        super().__init__(f"{text}\n  instance: {shown}", node=node)


class PluginDied(HarnessError):
    """The plugin process exited while it was expected to run."""


class PluginProtocolError(HarnessError):
    """The plugin broke the plugin protocol (lightningd would have killed it)."""


class PluginStartError(HarnessError):
    """getmanifest/init failed or the manifest was refused (lightningd would not start it)."""


class UnexpectedCall(HarnessError):
    """The plugin called an RPC the fake does not serve (answered with "Unknown command")."""

    def __init__(self, method: str, params: Any, *, node: str | None = None) -> None:
        self.method = method
        self.params = params
        super().__init__(f"plugin called unknown RPC {method!r} with {params!r}", node=node)


class HarnessTimeout(HarnessError, TimeoutError):
    """Something the harness waited for did not happen in time."""


class RpcCallError(RpcError):  # type: ignore[misc]
    """A JSON-RPC error returned to a caller, shaped like pyln's `RpcError`."""

    def __init__(self, method: str, payload: Any, error: dict[str, Any]) -> None:
        super().__init__(method, payload, error)

    @property
    def code(self) -> int | None:
        code = self.error.get("code")
        return code if isinstance(code, int) else None

    @property
    def message(self) -> str:
        return str(self.error.get("message", ""))


class RpcFail(Exception):
    """Raised by the fake's RPC handlers: becomes a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


# JSON-RPC error codes lightningd uses (common/jsonrpc_errors.h).
JSONRPC2_INVALID_REQUEST = -32600
JSONRPC2_METHOD_NOT_FOUND = -32601
JSONRPC2_INVALID_PARAMS = -32602
LIGHTNINGD = -1
PLUGIN_TERMINATED = -4
CONNECT_ALL_ADDRESSES_FAILED = 401
FUND_MAX_EXCEEDED = 300
FUND_CANNOT_AFFORD = 301
FUNDING_STILL_SYNCING_BITCOIN = 304
FUNDING_PEER_NOT_CONNECTED = 305
FUNDING_UNKNOWN_PEER = 306
FUNDING_NOTHING_TO_CANCEL = 307
FUNDING_CANCEL_NOT_SAFE = 308
FUNDING_PSBT_INVALID = 309
DATASTORE_DEL_DOES_NOT_EXIST = 1200
DATASTORE_DEL_WRONG_GENERATION = 1201
DATASTORE_UPDATE_ALREADY_EXISTS = 1202
DATASTORE_UPDATE_DOES_NOT_EXIST = 1203
DATASTORE_UPDATE_WRONG_GENERATION = 1204
DATASTORE_UPDATE_HAS_CHILDREN = 1205
DATASTORE_UPDATE_NO_CHILDREN = 1206
WAIT_TIMEOUT = 2000
