"""What the MuSig2 wrappers keep per signer and per factory changes no result."""

from __future__ import annotations

import copy
import os
import pickle

from superscalar_plugin.engine import bip340, keyagg, libsecp, musig2 as m


def _signers(n: int) -> tuple[list[bytes], list[bytes], m.KeyAggContext]:
    sks = [os.urandom(32) for _ in range(n)]
    pks = [m.pubkey_from_secret(sk) for sk in sks]
    return sks, pks, m.KeyAggContext.key_agg(m.key_sort(pks))


def test_own_nonces_and_peer_bytes_aggregate_and_sign_alike() -> None:
    sks, pks, ctx = _signers(3)
    msg = os.urandom(32)
    nonces = [
        m.nonce_gen(pk, seckey=sk, keyagg=ctx, msg=msg) for sk, pk in zip(sks, pks, strict=True)
    ]
    own = [pub for _, pub in nonces]
    as_from_peers = [bytes(pub) for pub in own]  # what the wire delivers
    assert m.nonce_agg(own) == m.nonce_agg(as_from_peers)
    session = m.Session.create(m.nonce_agg(own), msg, ctx)
    peer_session = m.Session.create(bytes(m.nonce_agg(as_from_peers)), msg, ctx)
    psigs = [m.partial_sign(sec, sk, session) for (sec, _), sk in zip(nonces, sks, strict=True)]
    for psig, pub, pk in zip(psigs, own, pks, strict=True):
        assert m.partial_sig_verify(psig, bytes(pub), pk, peer_session)
    assert m.schnorr_verify(m.partial_sig_agg(psigs, peer_session), msg, ctx.xonly_pubkey)


def test_a_public_nonce_copies_and_pickles_as_plain_bytes() -> None:
    _, pub = m.nonce_gen(m.pubkey_from_secret(os.urandom(32)))
    for copied in (copy.copy(pub), copy.deepcopy(pub), pickle.loads(pickle.dumps(pub))):
        assert type(copied) is bytes and copied == pub


def test_a_signers_keypair_is_made_once_and_forgotten_on_request() -> None:
    sk = os.urandom(32)
    first = libsecp.signing_keypair(sk)
    assert libsecp.signing_keypair(sk) is first
    assert first[1] == m.pubkey_from_secret(sk)
    libsecp.forget_signing_keys()
    again = libsecp.signing_keypair(sk)
    assert again is not first and again[1] == first[1]


def test_a_tweaked_aggregate_is_bip341s_output_key_and_is_reused_for_signing() -> None:
    _, _, ctx = _signers(4)
    tweak = os.urandom(32)
    known = keyagg.tweaked_aggregate(ctx.xonly_pubkey, tweak)
    assert known == bip340.taproot_tweak_pubkey(ctx.xonly_pubkey, tweak)
    assert ctx.apply_tweak(tweak, is_xonly=True) is ctx.apply_tweak(tweak, is_xonly=True)
    assert keyagg.tweaked_aggregate(os.urandom(32), tweak) is None  # not an aggregate we made
