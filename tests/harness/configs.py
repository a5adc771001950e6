"""`setconfig` as lightningd v26.06.6 serves it for a plugin's option: only a `dynamic` option,
the value forwarded to the plugin as a JSON *string* (`{"config": name, "val": "5"}`, whatever
the option's type, as lightningd's plugin_set_dynamic_opt writes it), the plugin's error passed
back with its code and message (nothing changes), else the new value is what `listconfigs`
shows and the answer is the option's new `config` object."""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from .errors import JSONRPC2_INVALID_PARAMS, LIGHTNINGD, RpcFail

if TYPE_CHECKING:
    from .node import FakeNode


def _as_token_text(val: Any) -> str:
    if isinstance(val, bool):
        return "true" if val else "false"
    return val if isinstance(val, str) else str(val)


def _typed(kind: str, text: str) -> tuple[str, Any]:
    if kind == "int":
        try:
            return "value_int", int(text)
        except ValueError:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"'{text}' is not a number") from None
    if kind == "bool":
        if text not in ("true", "false"):
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"'{text}' is not a bool")
        return "value_bool", text == "true"
    return "value_str", text


def rpc_setconfig(me: FakeNode, p: dict[str, Any]) -> dict[str, Any]:
    name = p["config"]
    opt = next(
        (o for o in (me.manifest or {}).get("options", []) or [] if o.get("name") == name), None
    )
    if opt is None:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"Unknown config option '{name}'")
    if not opt.get("dynamic"):
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"'{name}' is not a dynamic config option")
    if "val" not in p:
        raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{name} requires a value")
    if isinstance(p["val"], list):
        raise RpcFail(
            JSONRPC2_INVALID_PARAMS, f"{name} is not a multi option: val must not be an array"
        )
    text = _as_token_text(p["val"])
    kind, value = _typed(opt["type"], text)
    assert me.process is not None
    fut = me.process.request("setconfig", {"config": name, "val": text})
    try:
        resp = fut.result(timeout=me.timeout)
    except FutureTimeout as e:
        raise RpcFail(LIGHTNINGD, f"plugin did not answer setconfig {name}") from e
    if "error" in resp:
        err = resp["error"]
        raise RpcFail(int(err.get("code", LIGHTNINGD)), str(err.get("message", "")))
    if "result" not in resp:
        raise RpcFail(LIGHTNINGD, f"Malformed setvalue {name} plugin return")
    if me.init_request is not None:
        me.init_request.setdefault("options", {})[name] = value
    return {
        "config": {
            "config": name,
            "source": f"{me.lightning_dir}/config.setconfig:1",
            "plugin": " ".join(me.plugin_cmd),
            "dynamic": True,
            kind: value,
        }
    }


CONFIG_HANDLERS = {"setconfig": rpc_setconfig}
