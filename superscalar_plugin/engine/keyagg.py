"""BIP327 KeySort, KeyAgg and ApplyTweak: `KeyAggContext` over libsecp256k1's keyagg cache.

Per factory, nothing is done twice: a caller's `parsed_cache` keeps each key decompressed once,
and a context keeps the contexts `apply_tweak` made from it. `tweaked_aggregate` lets the
taproot outputs of a factory be computed from its aggregates' contexts (the same tweak that
signing for those outputs needs). Re-exported by `musig2`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from coincurve._libsecp256k1 import ffi, lib

from superscalar_plugin.engine.errors import MuSigError
from superscalar_plugin.engine.libsecp import (
    CTX,
    fail,
    name_at,
    parse_pubkey_into,
    require_bytes,
    serialize_pubkey,
)


def key_sort(pubkeys: Sequence[bytes]) -> list[bytes]:
    """BIP327 KeySort: lexicographic order of the 33-byte encodings (duplicates kept)."""
    for i, pk in enumerate(pubkeys):
        if type(pk) is not bytes or len(pk) != 33:
            require_bytes(pk, 33, name_at("pubkey", i))
    return sorted(bytes(pk) for pk in pubkeys)


class KeyAggContext:
    """BIP327 KeyAgg context (keys in the given order) plus any tweaks; an immutable value.

    Wraps a `secp256k1_musig_keyagg_cache`. `apply_tweak` returns a new context; the parsed public
    keys are shared between a context and the contexts derived from it.
    """

    __slots__ = (
        "__weakref__",
        "_aggregate",
        "_cache",
        "_index",
        "_parsed",
        "_pubkeys",
        "_tweaked",
        "_tweaks",
    )

    _cache: Any
    _parsed: Any
    _index: dict[bytes, int]
    _pubkeys: tuple[bytes, ...]
    _tweaks: tuple[tuple[bytes, bool], ...]
    _aggregate: bytes
    _tweaked: dict[tuple[bytes, bool], KeyAggContext]  # apply_tweak's results, made once

    def __init__(self) -> None:
        raise TypeError("use KeyAggContext.key_agg(pubkeys)")

    @classmethod
    def _build(
        cls,
        cache: Any,
        parsed: Any,
        index: dict[bytes, int],
        pubkeys: tuple[bytes, ...],
        tweaks: tuple[tuple[bytes, bool], ...],
    ) -> KeyAggContext:
        self = object.__new__(cls)
        agg = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_musig_pubkey_get(CTX, agg, cache):  # pragma: no cover
            fail("secp256k1_musig_pubkey_get failed")
        setattr_ = object.__setattr__  # past the immutability check: a new object
        setattr_(self, "_cache", cache)
        setattr_(self, "_parsed", parsed)
        setattr_(self, "_index", index)
        setattr_(self, "_pubkeys", pubkeys)
        setattr_(self, "_tweaks", tweaks)
        setattr_(self, "_aggregate", serialize_pubkey(agg))
        setattr_(self, "_tweaked", {})
        return self

    @classmethod
    def key_agg(
        cls, pubkeys: Sequence[bytes], parsed_cache: dict[bytes, bytes] | None = None
    ) -> KeyAggContext:
        """BIP327 KeyAgg. The keys are aggregated in the order given: sort them first if wanted.

        `parsed_cache` (owned by the caller, e.g. one per factory) keeps each key's parsed 64-byte
        `secp256k1_pubkey`, which libsecp256k1 allows to be copied: aggregating many overlapping
        key sets then decompresses each key only once."""
        n = len(pubkeys)
        if n == 0:
            raise MuSigError("KeyAgg needs at least one public key")
        parsed = ffi.new("secp256k1_pubkey[]", n)
        known = [parsed_cache.get(pk) for pk in pubkeys] if parsed_cache is not None else []
        if known and None not in known:  # every key parsed before: one copy
            ffi.memmove(parsed, b"".join(known), 64 * n)  # type: ignore[arg-type]
            keys = list(pubkeys)
        else:
            keys = [_parse_key(parsed + i, pk, i, parsed_cache) for i, pk in enumerate(pubkeys)]
        index: dict[bytes, int] = {}
        for i, data in enumerate(keys):
            index.setdefault(data, i)
        ptrs = ffi.new("secp256k1_pubkey *[]", [parsed + i for i in range(n)])
        cache = ffi.new("secp256k1_musig_keyagg_cache *")
        if not lib.secp256k1_musig_pubkey_agg(CTX, ffi.NULL, cache, ptrs, n):
            fail("key aggregation failed")
        ctx = cls._build(cache, parsed, index, tuple(keys), ())
        _AGGREGATES[ctx.xonly_pubkey] = ctx
        return ctx

    def apply_tweak(self, tweak: bytes, is_xonly: bool) -> KeyAggContext:
        """BIP327 ApplyTweak: a new context with a plain (is_xonly=False) or x-only tweak.

        The result is kept: a factory tweaks each of its aggregates for the taproot output it
        builds (`tweaked_aggregate`) and again to sign the transaction that spends it."""
        data = require_bytes(tweak, 32, "tweak")
        kept = self._tweaked.get((data, bool(is_xonly)))
        if kept is not None:
            return kept
        cache = ffi.new("secp256k1_musig_keyagg_cache *")
        ffi.memmove(cache, self._cache, ffi.sizeof("secp256k1_musig_keyagg_cache"))
        fn = (
            lib.secp256k1_musig_pubkey_xonly_tweak_add
            if is_xonly
            else lib.secp256k1_musig_pubkey_ec_tweak_add
        )
        if not fn(CTX, ffi.NULL, cache, data):
            fail("tweak rejected: the tweak must be less than n and the result cannot be infinity")
        tweaked = KeyAggContext._build(
            cache, self._parsed, self._index, self._pubkeys, (*self._tweaks, (data, bool(is_xonly)))
        )
        self._tweaked[(data, bool(is_xonly))] = tweaked
        return tweaked

    @property
    def aggregate_pubkey(self) -> bytes:
        """33-byte compressed aggregate key, tweaks included."""
        return self._aggregate

    @property
    def xonly_pubkey(self) -> bytes:
        """32-byte x-only aggregate key, tweaks included (the BIP340 key the signature checks)."""
        return self._aggregate[1:]

    @property
    def pubkeys(self) -> tuple[bytes, ...]:
        return self._pubkeys

    @property
    def tweaks(self) -> tuple[tuple[bytes, bool], ...]:
        """The tweaks applied so far, as (tweak, is_xonly), in order."""
        return self._tweaks

    def _pubkey_ptr(self, pubkey: bytes, what: str) -> Any:
        i = self._index.get(pubkey)
        if i is None:
            raise MuSigError(f"{what} must be included in the list of pubkeys")
        return self._parsed + i

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeyAggContext is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("KeyAggContext is immutable")

    def __copy__(self) -> KeyAggContext:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> KeyAggContext:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_keyagg, (self._pubkeys, self._tweaks))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyAggContext):
            return NotImplemented
        return self._pubkeys == other._pubkeys and self._tweaks == other._tweaks

    def __hash__(self) -> int:
        return hash((self._pubkeys, self._tweaks))

    def __repr__(self) -> str:
        return (
            f"KeyAggContext(n={len(self._pubkeys)}, tweaks={len(self._tweaks)}, "
            f"aggregate={self._aggregate.hex()})"
        )


# The untweaked contexts alive in this process, by x-only aggregate key.
_AGGREGATES: weakref.WeakValueDictionary[bytes, KeyAggContext] = weakref.WeakValueDictionary()


def tweaked_aggregate(internal_key: bytes, tweak: bytes) -> tuple[bytes, int] | None:
    """BIP341's (output key, parity) for an internal key that is the aggregate of a live
    `KeyAggContext`, or None for any other key. BIP327's x-only ApplyTweak computes exactly
    BIP341's Q = lift_x(P) + tG, and the tweaked context is kept for signing that output."""
    ctx = _AGGREGATES.get(internal_key)
    if ctx is None:
        return None
    tweaked = ctx.apply_tweak(tweak, is_xonly=True)
    return tweaked.xonly_pubkey, tweaked.aggregate_pubkey[0] & 1


def _parse_key(out: Any, pk: object, i: int, parsed_cache: dict[bytes, bytes] | None) -> bytes:
    known = parsed_cache.get(pk) if parsed_cache is not None and type(pk) is bytes else None
    if known is not None:
        ffi.memmove(out, known, 64)
        return pk  # type: ignore[return-value]
    data = parse_pubkey_into(out, pk, i)
    if parsed_cache is not None:
        parsed_cache[data] = bytes(ffi.buffer(out, 64))
    return data


def _rebuild_keyagg(
    pubkeys: tuple[bytes, ...], tweaks: tuple[tuple[bytes, bool], ...]
) -> KeyAggContext:
    ctx = KeyAggContext.key_agg(pubkeys)
    for tweak, is_xonly in tweaks:
        ctx = ctx.apply_tweak(tweak, is_xonly)
    return ctx
