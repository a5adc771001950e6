"""BIP327 MuSig2 and BIP340 Schnorr over libsecp256k1 (coincurve's cffi `lib`).

One function per BIP327 algorithm, named as in the spec. There is no curve arithmetic here: every
point and scalar operation is done by libsecp256k1's `musig`, `schnorrsig`, `extrakeys` modules.

Deviations from BIP327 imposed by libsecp256k1's musig API (each raises `MuSigError` rather than
silently doing something else):

* `Session.create` signs 32-byte messages only (`secp256k1_musig_nonce_process` takes `msg32`).
* `nonce_gen` takes an optional 32-byte `msg` and 32-byte `extra_in` only, and binds the nonce to
  the aggregate key of a `KeyAggContext` rather than to a bare x-only `aggpk`.
* There is no `DeterministicSign`.

Performance notes: the one randomized context of `libsecp` is reused; a `KeyAggContext` keeps its
parsed public keys; input buffers are passed to C as `bytes` (no copy); only output structs are
allocated per call. The BIP340 single-key helpers live in `bip340` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from coincurve._libsecp256k1 import ffi, lib

from superscalar_plugin.engine.bip340 import (
    pubkey_from_secret,
    schnorr_sign,
    schnorr_verify,
    taproot_tweak_seckey,
    xonly,
)
from superscalar_plugin.engine.errors import InvalidPartialSignature, MuSigError, NonceReuseError
from superscalar_plugin.engine.keyagg import KeyAggContext, key_sort, tweaked_aggregate
from superscalar_plugin.engine.libsecp import (
    CTX,
    SECNONCE_SIZE,
    ZERO_SECNONCE,
    fail,
    invalid_seckey,
    name_at,
    parse_pubkey,
    parse_pubkey_into,
    require_bytes,
    signing_keypair,
)

__all__ = [
    "KeyAggContext",
    "SecretNonce",
    "Session",
    "key_sort",
    "nonce_agg",
    "nonce_gen",
    "partial_sig_agg",
    "partial_sig_verify",
    "partial_sign",
    "pubkey_from_secret",
    "schnorr_sign",
    "schnorr_verify",
    "taproot_tweak_seckey",
    "tweaked_aggregate",
    "xonly",
]


# --------------------------------------------------------------------------------------------------
# Nonces
# --------------------------------------------------------------------------------------------------


_TAKE_LOCK = threading.Lock()


class _Serialized(bytes):
    """Bytes that keep the libsecp256k1 struct they were serialized from, so that this process
    never parses its own nonces again (two point decompressions each). Anything else (a peer's
    bytes) is parsed as usual; pickling or copying gives plain bytes."""

    parsed: Any

    @classmethod
    def of(cls, struct: Any, buffer_type: Any, serialize: Any) -> Any:
        out = ffi.new(buffer_type)
        serialize(CTX, out, struct)
        self = cls(ffi.buffer(out))
        self.parsed = struct
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (bytes(self),))


# Parsed once: ffi.new with a type object skips the lookup of the type's name.
_BYTES_32 = ffi.typeof("unsigned char[32]")
_BYTES_66 = ffi.typeof("unsigned char[66]")
_SECNONCE_T = ffi.typeof("secp256k1_musig_secnonce *")
_PUBNONCE_T = ffi.typeof("secp256k1_musig_pubnonce *")
_PSIG_T = ffi.typeof("secp256k1_musig_partial_sig *")


class _PubNonce(_Serialized):
    pass


class _AggNonce(_Serialized):
    pass


class SecretNonce:
    """A signer's secret nonce: single use, never copied, pickled or serialized.

    `partial_sign` consumes it (libsecp256k1 zeroes it, and so do we even when signing fails); a
    second use raises `NonceReuseError`.
    """

    __slots__ = ("__weakref__", "_pubkey", "_secnonce", "_used")

    _secnonce: Any
    _pubkey: bytes
    _used: bool

    def __init__(self) -> None:
        raise TypeError("secret nonces come only from nonce_gen()")

    @classmethod
    def _wrap(cls, secnonce: Any, pubkey: bytes) -> SecretNonce:
        self = object.__new__(cls)
        object.__setattr__(self, "_secnonce", secnonce)  # past the immutability check: new object
        object.__setattr__(self, "_pubkey", pubkey)
        object.__setattr__(self, "_used", False)
        return self

    @property
    def pubkey(self) -> bytes:
        """The 33-byte public key of the signer this nonce was generated for."""
        return self._pubkey

    @property
    def used(self) -> bool:
        return self._used

    def _take(self) -> Any:
        # Atomic check-and-mark: cffi releases the GIL inside C, so two threads must never both
        # get past this point with the same nonce.
        with _TAKE_LOCK:
            if self._used:
                raise NonceReuseError("secret nonce already used: a nonce signs at most once")
            self._used = True
        return self._secnonce

    def _wipe(self) -> None:
        ffi.memmove(self._secnonce, ZERO_SECNONCE, SECNONCE_SIZE)

    def __del__(self) -> None:
        if getattr(self, "_used", True):  # wiped: by libsecp256k1 as it signed, or on failure
            return
        with contextlib.suppress(Exception):  # also during interpreter shutdown
            ffi.memmove(self._secnonce, ZERO_SECNONCE, SECNONCE_SIZE)

    def __copy__(self) -> NoReturn:
        raise NonceReuseError("a secret nonce cannot be copied")

    def __deepcopy__(self, memo: dict[int, object]) -> NoReturn:
        raise NonceReuseError("a secret nonce cannot be copied")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise NonceReuseError("a secret nonce cannot be pickled or serialized")

    def __reduce__(self) -> NoReturn:
        raise NonceReuseError("a secret nonce cannot be pickled or serialized")

    def __getstate__(self) -> NoReturn:
        raise NonceReuseError("a secret nonce cannot be pickled or serialized")

    def __setattr__(self, name: str, value: object) -> None:
        if name not in SecretNonce.__slots__ or (name != "_used" and hasattr(self, name)):
            raise AttributeError("SecretNonce is immutable")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"SecretNonce(pubkey={self._pubkey.hex()}, used={self._used})"


def nonce_gen(
    pubkey: bytes,
    *,
    seckey: bytes | None = None,
    keyagg: KeyAggContext | None = None,
    msg: bytes | None = None,
    extra_in: bytes | None = None,
    session_rand: bytes | None = None,
) -> tuple[SecretNonce, bytes]:
    """BIP327 NonceGen: (secret nonce, 66-byte public nonce).

    `session_rand` must be fresh randomness for every call; it defaults to `os.urandom(32)` and is
    only passed explicitly by test vectors. `seckey`, `keyagg`, `msg` (32 bytes) and `extra_in`
    (32 bytes) are optional extra inputs that harden the nonce against bad randomness.
    """
    pk, pk_bytes = _signer_pubkey(pubkey, keyagg)
    rand = ffi.new(
        _BYTES_32,
        os.urandom(32) if session_rand is None else require_bytes(session_rand, 32, "session_rand"),
    )
    sk = ffi.NULL if seckey is None else require_bytes(seckey, 32, "secret key")
    if seckey is not None and not lib.secp256k1_ec_seckey_verify(CTX, sk):
        invalid_seckey()
    msg32 = ffi.NULL if msg is None else require_bytes(msg, 32, "nonce_gen msg (libsecp256k1)")
    extra32 = (
        ffi.NULL if extra_in is None else require_bytes(extra_in, 32, "extra_in (libsecp256k1)")
    )
    cache = ffi.NULL if keyagg is None else keyagg._cache
    secnonce = ffi.new(_SECNONCE_T)
    pubnonce = ffi.new(_PUBNONCE_T)
    ok = lib.secp256k1_musig_nonce_gen(CTX, secnonce, pubnonce, rand, sk, pk, msg32, cache, extra32)
    if not ok:
        ffi.memmove(secnonce, ZERO_SECNONCE, SECNONCE_SIZE)
        fail("nonce generation failed (is session_rand all zero?)")
    public = _PubNonce.of(pubnonce, _BYTES_66, lib.secp256k1_musig_pubnonce_serialize)
    return SecretNonce._wrap(secnonce, pk_bytes), public


def _signer_pubkey(pubkey: object, keyagg: KeyAggContext | None) -> tuple[Any, bytes]:
    """The parsed key: the one `keyagg` already parsed if it is one of its keys."""
    i = keyagg._index.get(pubkey) if keyagg is not None and type(pubkey) is bytes else None
    if keyagg is not None and i is not None:
        return keyagg._parsed + i, keyagg._pubkeys[i]
    pk = ffi.new("secp256k1_pubkey *")
    return pk, parse_pubkey_into(pk, pubkey)


def _parse_pubnonce_into(out: Any, pubnonce: object, index: int | None = None) -> None:
    if type(pubnonce) is not bytes or len(pubnonce) != 66:
        pubnonce = require_bytes(pubnonce, 66, name_at("pubnonce", index))
    if not lib.secp256k1_musig_pubnonce_parse(CTX, out, pubnonce):
        fail(
            f"{name_at('pubnonce', index)} is invalid (each half must be a valid compressed point)"
        )


def nonce_agg(pubnonces: Sequence[bytes]) -> bytes:
    """BIP327 NonceAgg: the 66-byte aggregate nonce (an infinite half is 33 zero bytes)."""
    n = len(pubnonces)
    if n == 0:
        raise MuSigError("NonceAgg needs at least one public nonce")
    parsed = ffi.new("secp256k1_musig_pubnonce[]", n)
    ptrs = ffi.new("secp256k1_musig_pubnonce *[]", n)
    for i, pn in enumerate(pubnonces):
        if type(pn) is _PubNonce:
            ptrs[i] = pn.parsed
        else:
            ptrs[i] = parsed + i
            _parse_pubnonce_into(ptrs[i], pn, i)
    agg = ffi.new("secp256k1_musig_aggnonce *")
    if not lib.secp256k1_musig_nonce_agg(CTX, agg, ptrs, n):  # pragma: no cover
        fail("nonce aggregation failed")
    aggnonce: bytes = _AggNonce.of(agg, _BYTES_66, lib.secp256k1_musig_aggnonce_serialize)
    return aggnonce


def _parse_aggnonce(aggnonce: object) -> tuple[Any, bytes]:
    data = require_bytes(aggnonce, 66, "aggnonce")
    agg = ffi.new("secp256k1_musig_aggnonce *")
    if not lib.secp256k1_musig_aggnonce_parse(CTX, agg, data):
        fail("aggnonce is invalid")
    return agg, data


# --------------------------------------------------------------------------------------------------
# Signing session
# --------------------------------------------------------------------------------------------------


class Session:
    """The result of BIP327's session setup for one (aggnonce, message, key context).

    Immutable; shared by every signer (and the aggregator) of the same message.
    """

    __slots__ = ("_aggnonce", "_keyagg", "_msg", "_session")

    _session: Any
    _keyagg: KeyAggContext
    _aggnonce: bytes
    _msg: bytes

    def __init__(self) -> None:
        raise TypeError("use Session.create(aggnonce, msg, keyagg)")

    @classmethod
    def create(cls, aggnonce: bytes, msg: bytes, keyagg: KeyAggContext) -> Session:
        if not isinstance(keyagg, KeyAggContext):
            raise MuSigError("keyagg must be a KeyAggContext")
        if type(aggnonce) is _AggNonce:  # from nonce_agg in this process: already parsed
            agg, agg_bytes = aggnonce.parsed, bytes(aggnonce)
        else:
            agg, agg_bytes = _parse_aggnonce(aggnonce)
        msg_bytes = require_bytes(msg, 32, "message (libsecp256k1 signs 32-byte messages)")
        session = ffi.new("secp256k1_musig_session *")
        if not lib.secp256k1_musig_nonce_process(CTX, session, agg, msg_bytes, keyagg._cache):
            fail("nonce processing failed")
        self = object.__new__(cls)
        for name, value in (
            ("_session", session),
            ("_keyagg", keyagg),
            ("_aggnonce", agg_bytes),
            ("_msg", msg_bytes),
        ):
            object.__setattr__(self, name, value)
        return self

    @property
    def keyagg(self) -> KeyAggContext:
        return self._keyagg

    @property
    def aggnonce(self) -> bytes:
        return self._aggnonce

    @property
    def msg(self) -> bytes:
        return self._msg

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Session is immutable")

    def __copy__(self) -> Session:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Session:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Session.create, (self._aggnonce, self._msg, self._keyagg))

    def __repr__(self) -> str:
        return f"Session(msg={self._msg.hex()}, aggnonce={self._aggnonce.hex()})"


def partial_sign(secnonce: SecretNonce, seckey: bytes, session: Session) -> bytes:
    """BIP327 Sign: a 32-byte partial signature. Consumes `secnonce`, even when it fails."""
    if not isinstance(secnonce, SecretNonce):
        raise MuSigError("secnonce must be a SecretNonce from nonce_gen()")
    raw_nonce = secnonce._take()
    try:
        if not isinstance(session, Session):
            raise MuSigError("session must be a Session")
        keyagg = session._keyagg
        if secnonce._pubkey not in keyagg._index:
            raise MuSigError("The signer's pubkey must be included in the list of pubkeys.")
        keypair, pubkey = signing_keypair(seckey)
        if pubkey != secnonce._pubkey:
            raise MuSigError("secret key does not match the pubkey the nonce was generated for")
        psig = ffi.new(_PSIG_T)
        # libsecp256k1 zeroes the secret nonce as soon as it has read it, even when it fails.
        if not lib.secp256k1_musig_partial_sign(
            CTX, psig, raw_nonce, keypair, keyagg._cache, session._session
        ):
            fail("partial signing failed")
    except BaseException:
        secnonce._wipe()
        raise
    out = ffi.new(_BYTES_32)  # plain bytes: a partial signature parses in no time
    lib.secp256k1_musig_partial_sig_serialize(CTX, out, psig)
    return bytes(out)


def partial_sig_verify(psig: bytes, pubnonce: bytes, pubkey: bytes, session: Session) -> bool:
    """BIP327 PartialSigVerify. False for a wrong or out-of-range signature; MuSigError for a
    malformed pubnonce or pubkey, or a pubkey that is not one of the session's signers."""
    sig_bytes = require_bytes(psig, 32, "partial signature")
    pn = ffi.new("secp256k1_musig_pubnonce *")
    _parse_pubnonce_into(pn, pubnonce)
    pk_bytes = require_bytes(pubkey, 33, "pubkey")
    keyagg = session._keyagg
    if pk_bytes not in keyagg._index:
        parse_pubkey(pk_bytes)  # a malformed key is reported as such first
    pk = keyagg._pubkey_ptr(pk_bytes, "pubkey")
    sig = ffi.new("secp256k1_musig_partial_sig *")
    if not lib.secp256k1_musig_partial_sig_parse(CTX, sig, sig_bytes):
        return False
    return bool(
        lib.secp256k1_musig_partial_sig_verify(CTX, sig, pn, pk, keyagg._cache, session._session)
    )


def partial_sig_agg(psigs: Sequence[bytes], session: Session) -> bytes:
    """BIP327 PartialSigAgg: the 64-byte BIP340 signature.

    A partial signature that does not parse (not 32 bytes, or not below n) raises
    `InvalidPartialSignature` whose `signer` is its index in `psigs`. Wrong-but-well-formed partial
    signatures are not detected here: check the result with `schnorr_verify`, and blame with
    `partial_sig_verify` only if it fails.
    """
    n = len(psigs)
    if n == 0:
        raise MuSigError("PartialSigAgg needs at least one partial signature")
    parsed = ffi.new("secp256k1_musig_partial_sig[]", n)
    ptrs = ffi.new("secp256k1_musig_partial_sig *[]", n)
    for i, ps in enumerate(psigs):
        ptr = parsed + i
        if (
            type(ps) is bytes
            and len(ps) == 32
            and lib.secp256k1_musig_partial_sig_parse(CTX, ptr, ps)
        ):  # the common case, first
            ptrs[i] = ptr
            continue
        if not isinstance(ps, bytes | bytearray) or len(ps) != 32:
            raise InvalidPartialSignature(str(i), "a partial signature is 32 bytes")
        if not lib.secp256k1_musig_partial_sig_parse(CTX, ptr, bytes(ps)):
            raise InvalidPartialSignature(str(i), "value is not below the group order")
        ptrs[i] = ptr
    out = ffi.new("unsigned char[64]")
    if not lib.secp256k1_musig_partial_sig_agg(CTX, out, session._session, ptrs, n):
        fail("partial signature aggregation failed")  # pragma: no cover
    return bytes(out)
