"""BIP340 Schnorr and BIP341 key tweaking for single keys, over libsecp256k1 (`libsecp`)."""

from __future__ import annotations

import os

from coincurve._libsecp256k1 import ffi, lib

from superscalar_plugin.engine.errors import MuSigError
from superscalar_plugin.engine.libsecp import (
    CTX,
    EXTRAPARAMS_MAGIC,
    complaints,
    fail,
    invalid_seckey,
    new_keypair,
    parse_pubkey,
    require_bytes,
    serialize_pubkey,
    wipe_keypair,
)


def pubkey_from_secret(seckey: bytes) -> bytes:
    """The 33-byte compressed public key of a 32-byte secret key."""
    data = require_bytes(seckey, 32, "secret key")
    pk = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(CTX, pk, data):
        invalid_seckey()
    return serialize_pubkey(pk)


def xonly(pubkey: bytes) -> bytes:
    """33-byte compressed key -> its 32-byte x-only form (BIP340). The point is validated."""
    parse_pubkey(pubkey)
    return bytes(pubkey[1:])


def schnorr_sign(msg: bytes, seckey: bytes, aux_rand: bytes | None = None) -> bytes:
    """BIP340 Sign over a message of any length; `aux_rand` defaults to os.urandom(32)."""
    if not isinstance(msg, bytes | bytearray):
        raise MuSigError("message must be bytes")
    aux = os.urandom(32) if aux_rand is None else require_bytes(aux_rand, 32, "aux_rand")
    keypair = new_keypair(seckey)
    try:
        params = ffi.new("secp256k1_schnorrsig_extraparams *")
        ffi.memmove(params.magic, EXTRAPARAMS_MAGIC, 4)
        params.noncefp = ffi.NULL
        aux_buf = ffi.new("unsigned char[32]", aux)
        params.ndata = aux_buf
        out = ffi.new("unsigned char[64]")
        data = bytes(msg)
        if not lib.secp256k1_schnorrsig_sign_custom(CTX, out, data, len(data), keypair, params):
            fail("BIP340 signing failed")  # pragma: no cover
        return bytes(out)
    finally:
        wipe_keypair(keypair)


def schnorr_verify(sig: bytes, msg: bytes, xonly_pubkey: bytes) -> bool:
    """BIP340 Verify. False for a key that is not an x coordinate on the curve; MuSigError only
    for inputs of the wrong type or length."""
    sig_bytes = require_bytes(sig, 64, "signature")
    pk_bytes = require_bytes(xonly_pubkey, 32, "x-only public key")
    if not isinstance(msg, bytes | bytearray):
        raise MuSigError("message must be bytes")
    pk = ffi.new("secp256k1_xonly_pubkey *")
    if not lib.secp256k1_xonly_pubkey_parse(CTX, pk, pk_bytes):
        return False
    data = bytes(msg)
    return bool(lib.secp256k1_schnorrsig_verify(CTX, sig_bytes, data, len(data), pk))


def taproot_tweak_seckey(seckey: bytes, tweak: bytes) -> bytes:
    """BIP341 taproot_tweak_seckey, with the tweak already computed.

    `tweak` is the 32-byte scalar t = hash_TapTweak(xonly(P) || merkle_root) (what
    `taproot.taproot_tweak` returns), not the merkle root. Returns the secret key of the output key
    Q = P + tG with P lifted to even y, i.e. (d if has_even_y(dG) else n - d) + t.
    """
    data = require_bytes(tweak, 32, "tweak")
    keypair = new_keypair(seckey)
    try:
        if not lib.secp256k1_keypair_xonly_tweak_add(CTX, keypair, data):
            complaints.clear()
            raise MuSigError("tweak is not below the group order or makes the key zero")
        out = ffi.new("unsigned char[32]")
        lib.secp256k1_keypair_sec(CTX, out, keypair)
        result = bytes(out)
        ffi.memmove(out, bytes(32), 32)
        return result
    finally:
        wipe_keypair(keypair)


def taproot_tweak_pubkey(internal_key: bytes, tweak: bytes) -> tuple[bytes, int]:
    """BIP341 taproot_tweak_pubkey with the tweak already computed: (x-only Q, parity of Q) for
    Q = P + tG, P the even-y point of the 32-byte x-only `internal_key`.

    tG comes from the generator's precomputed table (`ec_pubkey_create`) and one point addition
    gives Q: a third faster than `xonly_pubkey_tweak_add`'s general multiplication, and a tree
    derives one output key per branch. A zero tweak (a hash, never in practice) is refused."""
    point = ffi.new("secp256k1_pubkey *")
    key = b"\x02" + require_bytes(internal_key, 32, "internal key")
    if not lib.secp256k1_ec_pubkey_parse(CTX, point, key, 33):
        fail("internal key is not an x coordinate on the curve")
    tweak_point = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(CTX, tweak_point, require_bytes(tweak, 32, "tweak")):
        complaints.clear()
        raise MuSigError("tweak is zero or not below the group order")
    full = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_combine(CTX, full, [point, tweak_point], 2):
        complaints.clear()
        raise MuSigError("the tweaked key is the point at infinity")
    xonly_key = ffi.new("secp256k1_xonly_pubkey *")
    parity = ffi.new("int *")
    lib.secp256k1_xonly_pubkey_from_pubkey(CTX, xonly_key, parity, full)
    out = ffi.new("unsigned char[32]")
    lib.secp256k1_xonly_pubkey_serialize(CTX, out, xonly_key)
    return bytes(out), int(parity[0])
