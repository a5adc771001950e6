"""JSON-RPC errors in pyln's form (kept apart so the service never imports pyln)."""

from __future__ import annotations


def make_rpc_exception(message: str, code: int) -> Exception:
    from pyln.client import RpcException

    exc: Exception = RpcException(message, code)
    return exc
