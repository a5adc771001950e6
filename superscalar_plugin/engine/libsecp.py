"""The one libsecp256k1 context of the engine and the small typed helpers around it.

The context is created once at import, randomized, and its illegal-argument and error callbacks
are replaced so that a misuse of the library turns into a `MuSigError` instead of `abort()`.
`musig2` (BIP327) and `bip340` (single keys) call the library through it; nothing else does.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NoReturn

from coincurve._libsecp256k1 import ffi, lib

from superscalar_plugin.engine.errors import MuSigError

SECNONCE_SIZE = 132
ZERO_SECNONCE = bytes(SECNONCE_SIZE)
ZERO_KEYPAIR = bytes(96)
COMPRESSED = lib.SECP256K1_EC_COMPRESSED
# secp256k1_schnorrsig_extraparams magic (SECP256K1_SCHNORRSIG_EXTRAPARAMS_MAGIC in the C header).
EXTRAPARAMS_MAGIC = b"\xda\x6f\xb3\x8c"

# --------------------------------------------------------------------------------------------------
# The context: created once, randomized, with callbacks that record instead of aborting.
# --------------------------------------------------------------------------------------------------

complaints: list[str] = []


def _on_complaint(message: Any, _data: Any) -> None:
    # Runs inside C: must never raise. libsecp256k1 returns 0 right after calling it.
    try:
        complaints.append(ffi.string(message).decode("ascii", "replace"))
    except Exception:  # pragma: no cover - defensive, we are inside a C callback
        complaints.append("unknown libsecp256k1 error")


_COMPLAINT_CALLBACK = ffi.callback("void(char *, void *)", _on_complaint)


def _make_context() -> Any:
    ctx = ffi.gc(
        lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_NONE), lib.secp256k1_context_destroy
    )
    lib.secp256k1_context_set_illegal_callback(ctx, _COMPLAINT_CALLBACK, ffi.NULL)
    lib.secp256k1_context_set_error_callback(ctx, _COMPLAINT_CALLBACK, ffi.NULL)
    if not lib.secp256k1_context_randomize(ctx, os.urandom(32)):  # pragma: no cover
        raise MuSigError("secp256k1_context_randomize failed")
    return ctx


CTX = _make_context()


def fail(message: str) -> NoReturn:
    """Raise MuSigError, appending what libsecp256k1 said through its callbacks, if anything."""
    if complaints:
        detail = "; ".join(complaints)
        complaints.clear()
        message = f"{message} (libsecp256k1: {detail})"
    raise MuSigError(message)


# --------------------------------------------------------------------------------------------------
# Small typed helpers
# --------------------------------------------------------------------------------------------------


def require_bytes(value: object, length: int, what: str) -> bytes:
    if type(value) is bytes and len(value) == length:  # the common case, first
        return value
    if not isinstance(value, bytes | bytearray):
        raise MuSigError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != length:
        raise MuSigError(f"{what} must be {length} bytes, got {len(value)}")
    return bytes(value)


def name_at(what: str, index: int | None) -> str:
    return what if index is None else f"{what} at index {index}"


def parse_pubkey_into(out: Any, pubkey: object, index: int | None = None) -> bytes:
    """Parse a 33-byte compressed key into the secp256k1_pubkey struct `out`.

    `index` (a position in a list of keys) only goes into the error message.
    """
    if type(pubkey) is not bytes:
        pubkey = require_bytes(pubkey, 33, name_at("pubkey", index))
    if len(pubkey) != 33:
        raise MuSigError(f"{name_at('pubkey', index)} must be 33 bytes, got {len(pubkey)}")
    if pubkey[0] not in (2, 3) or not lib.secp256k1_ec_pubkey_parse(CTX, out, pubkey, 33):
        fail(f"{name_at('pubkey', index)} is not a valid compressed public key")
    return pubkey


def parse_pubkey(pubkey: object) -> Any:
    out = ffi.new("secp256k1_pubkey *")
    parse_pubkey_into(out, pubkey)
    return out


def serialize_pubkey(pk: Any) -> bytes:
    out = ffi.new("unsigned char[33]")
    outlen = ffi.new("size_t *", 33)
    lib.secp256k1_ec_pubkey_serialize(CTX, out, outlen, pk, COMPRESSED)
    return bytes(out)


def invalid_seckey() -> NoReturn:
    """libsecp256k1 refused a secret key (zero, or not below the group order)."""
    complaints.clear()
    raise MuSigError("secret key is zero or not below the group order")


def new_keypair(seckey: object) -> Any:
    data = require_bytes(seckey, 32, "secret key")
    keypair = ffi.new("secp256k1_keypair *")
    if not lib.secp256k1_keypair_create(CTX, keypair, data):
        invalid_seckey()
    return keypair


def wipe_keypair(keypair: Any) -> None:
    ffi.memmove(keypair, ZERO_KEYPAIR, 96)


# --------------------------------------------------------------------------------------------------
# Per-signer cache
# --------------------------------------------------------------------------------------------------

SIGNING_KEYS_KEPT = 1024  # signers whose keypairs are kept (a factory has one key per participant)
_signing_keys: dict[bytes, tuple[Any, bytes]] = {}
_signing_keys_lock = threading.Lock()


def signing_keypair(seckey: object) -> tuple[Any, bytes]:
    """A signer's keypair and 33-byte public key, made once per secret key.

    A signer signs every transaction on its path with one key, so making its keypair (a point
    multiplication) once instead of per signature is most of what the wrapper adds to the library.
    The keypairs of the last `SIGNING_KEYS_KEPT` keys are kept; each is wiped when it is dropped
    and no signature is using it any more (`ffi.gc`)."""
    if type(seckey) is bytes:
        kept = _signing_keys.get(seckey)
        if kept is not None:
            return kept
    data = require_bytes(seckey, 32, "secret key")
    keypair = ffi.gc(new_keypair(data), wipe_keypair)
    pk = ffi.new("secp256k1_pubkey *")
    lib.secp256k1_keypair_pub(CTX, pk, keypair)
    kept = (keypair, serialize_pubkey(pk))
    with _signing_keys_lock:
        if len(_signing_keys) >= SIGNING_KEYS_KEPT:
            del _signing_keys[next(iter(_signing_keys))]  # the oldest
        _signing_keys[data] = kept
    return kept


def forget_signing_keys() -> None:
    """Drop every kept keypair (each is wiped once no signature uses it)."""
    with _signing_keys_lock:
        _signing_keys.clear()
