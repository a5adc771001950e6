"""Reading stored records' JSON fields strictly: each helper names the field it refuses."""

from __future__ import annotations

from typing import Any

from .errors import StoreError


def get(d: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return None
        raise StoreError(f"record field {key!r} is missing")
    value = d[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise StoreError(f"record field {key!r} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise StoreError(f"record field {key!r} must be {kind.__name__}")
    return value


def hexfield(d: dict[str, Any], key: str, length: int | None = None, optional: bool = False) -> Any:
    value = get(d, key, str, optional)
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise StoreError(f"record field {key!r} is not hex") from e
    if length is not None and len(raw) != length:
        raise StoreError(f"record field {key!r} must be {length} bytes")
    return value


def pairs(d: dict[str, Any], key: str, second: type) -> tuple[Any, ...]:
    out = []
    for item in get(d, key, list):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], second)
            or isinstance(item[1], bool)
        ):
            raise StoreError(f"{key} entries must be [string, {second.__name__}] pairs")
        out.append((item[0], item[1]))
    return tuple(out)
