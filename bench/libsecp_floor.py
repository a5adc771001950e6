"""The libsecp256k1 floor of in-process signing: the same musig calls, made directly.

For one factory, every call that `sign_in_process` needs from the library, through coincurve's
cffi `lib` with no wrapper: each key parsed and each signer's keypair made once; per spent output
the key aggregation and its taproot tweak; per transaction every signer's nonce, the aggregate
nonce, the session, every partial signature, their aggregation and the BIP340 check. What is not
the library's (transactions, sighashes, tweak hashes, key sorting) is prepared before the clock
starts. `make bench` divides the wrapper's time by this one.
"""

from __future__ import annotations

import os
import time
from typing import Any

from coincurve._libsecp256k1 import ffi, lib

from superscalar_plugin.engine.tree import Factory

CTX = lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_NONE)
lib.secp256k1_context_randomize(CTX, os.urandom(32))


Plan = list[tuple[bytes, tuple[int, int], bytes, list[int]]]


def _plan(f: Factory, outpoint: tuple[str, int], states: Any) -> Plan:
    """Per tx: (sighash, the client range of its spent output, tweak, its signers' indices)."""
    txs = f.transactions(outpoint, states)
    lsp = f.n_clients
    plan = []
    for node, utx in txs.items():
        n = f.topology.nodes[node]
        tweak = f.branch_output_for(node).tweak
        plan.append((utx.sighash, (n.lo, n.hi), tweak, [*f.signers(node), lsp]))
    return plan


def floor_seconds(
    f: Factory, outpoint: tuple[str, int], states: Any, lsp_seckey: bytes, seckeys: list[bytes]
) -> float:
    plan = _plan(f, outpoint, states)
    all_sk = [*seckeys, lsp_seckey]
    all_pk = [*f.client_pubkeys, f.lsp_pubkey]
    sorted_keys = {
        group: sorted([*f.client_pubkeys[group[0] : group[1]], f.lsp_pubkey])
        for _, group, _, _ in plan
    }
    t = time.process_time()
    parsed = {}
    for pk in all_pk:
        p = ffi.new("secp256k1_pubkey *")
        assert lib.secp256k1_ec_pubkey_parse(CTX, p, pk, 33)
        parsed[pk] = p
    keypairs = []
    for sk in all_sk:
        kp = ffi.new("secp256k1_keypair *")
        assert lib.secp256k1_keypair_create(CTX, kp, sk)
        keypairs.append(kp)
    caches = {}
    for group, keys in sorted_keys.items():
        cache = ffi.new("secp256k1_musig_keyagg_cache *")
        ptrs = [parsed[k] for k in keys]
        assert lib.secp256k1_musig_pubkey_agg(CTX, ffi.NULL, cache, ptrs, len(ptrs))
        caches[group] = cache
    signer_keys = [
        (sk, parsed[pk], kp) for sk, pk, kp in zip(all_sk, all_pk, keypairs, strict=True)
    ]
    for sighash, group, tweak, signers in plan:
        _sign_one(sighash, caches[group], tweak, [signer_keys[s] for s in signers])
    return time.process_time() - t


def _sign_one(
    msg: bytes, untweaked: Any, tweak: bytes, signers: list[tuple[bytes, Any, Any]]
) -> None:
    """Every library call that signs one tx with its signers (seckey, parsed pubkey, keypair)."""
    cache = ffi.new("secp256k1_musig_keyagg_cache *")
    ffi.memmove(cache, untweaked, ffi.sizeof("secp256k1_musig_keyagg_cache"))
    assert lib.secp256k1_musig_pubkey_xonly_tweak_add(CTX, ffi.NULL, cache, tweak)
    secnonces, pubnonces = [], []
    for seckey, pubkey, _ in signers:
        sec = ffi.new("secp256k1_musig_secnonce *")
        pub = ffi.new("secp256k1_musig_pubnonce *")
        rand = ffi.new("unsigned char[32]", os.urandom(32))
        assert lib.secp256k1_musig_nonce_gen(
            CTX, sec, pub, rand, seckey, pubkey, msg, cache, ffi.NULL
        )
        secnonces.append(sec)
        pubnonces.append(pub)
    agg = ffi.new("secp256k1_musig_aggnonce *")
    assert lib.secp256k1_musig_nonce_agg(CTX, agg, pubnonces, len(pubnonces))
    session = ffi.new("secp256k1_musig_session *")
    assert lib.secp256k1_musig_nonce_process(CTX, session, agg, msg, cache)
    psigs = []
    for (_, _, keypair), sec in zip(signers, secnonces, strict=True):
        psig = ffi.new("secp256k1_musig_partial_sig *")
        assert lib.secp256k1_musig_partial_sign(CTX, psig, sec, keypair, cache, session)
        psigs.append(psig)
    sig = ffi.new("unsigned char[64]")
    assert lib.secp256k1_musig_partial_sig_agg(CTX, sig, session, psigs, len(psigs))
    full = ffi.new("secp256k1_pubkey *")
    assert lib.secp256k1_musig_pubkey_get(CTX, full, cache)
    xonly = ffi.new("secp256k1_xonly_pubkey *")
    assert lib.secp256k1_xonly_pubkey_from_pubkey(CTX, xonly, ffi.NULL, full)
    assert lib.secp256k1_schnorrsig_verify(CTX, sig, msg, 32, xonly)
