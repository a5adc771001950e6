"""BIP340 Schnorr vectors and BIP341 key-path secret-key tweaking, through engine.musig2."""

from __future__ import annotations

import os

import pytest

from superscalar_plugin.engine import musig2 as m
from superscalar_plugin.engine.errors import MuSigError

from vector_loader import load_csv, load_json

ROWS = load_csv("bip340/test-vectors.csv")


@pytest.mark.parametrize("row", ROWS, ids=[f"bip340-{r['index']}" for r in ROWS])
def test_bip340_vector(row: dict[str, str]) -> None:
    pubkey = bytes.fromhex(row["public key"])
    msg = bytes.fromhex(row["message"])
    sig = bytes.fromhex(row["signature"])
    expected = row["verification result"] == "TRUE"
    if row["secret key"]:
        seckey = bytes.fromhex(row["secret key"])
        assert m.xonly(m.pubkey_from_secret(seckey)) == pubkey
        assert m.schnorr_sign(msg, seckey, bytes.fromhex(row["aux_rand"])) == sig
    assert m.schnorr_verify(sig, msg, pubkey) is expected, row["comment"]


def test_bip340_vectors_cover_signing_and_failures() -> None:
    assert len(ROWS) >= 15
    assert sum(1 for r in ROWS if r["secret key"]) >= 4
    assert sum(1 for r in ROWS if r["verification result"] == "FALSE") >= 8
    assert {len(bytes.fromhex(r["message"])) for r in ROWS} > {32}  # variable-length messages


def test_schnorr_sign_random_aux_and_tamper() -> None:
    sk = os.urandom(32)
    pk = m.xonly(m.pubkey_from_secret(sk))
    msg = os.urandom(32)
    sig1, sig2 = m.schnorr_sign(msg, sk), m.schnorr_sign(msg, sk)
    assert sig1 != sig2  # fresh aux randomness
    assert m.schnorr_verify(sig1, msg, pk) and m.schnorr_verify(sig2, msg, pk)
    assert not m.schnorr_verify(sig1, msg[:-1] + bytes([msg[-1] ^ 1]), pk)
    assert not m.schnorr_verify(sig1[:-1] + bytes([sig1[-1] ^ 1]), msg, pk)
    with pytest.raises(MuSigError):
        m.schnorr_verify(sig1, msg, m.pubkey_from_secret(sk))  # 33-byte key: wrong length


def _bip341_key_path_inputs() -> list[dict[str, str]]:
    out = []
    for spend in load_json("bip341/wallet-test-vectors.json")["keyPathSpending"]:
        for item in spend["inputSpending"]:
            out.append(
                {
                    "internalPrivkey": item["given"]["internalPrivkey"],
                    "tweak": item["intermediary"]["tweak"],
                    "tweakedPrivkey": item["intermediary"]["tweakedPrivkey"],
                    "internalPubkey": item["intermediary"]["internalPubkey"],
                }
            )
    return out


KEY_PATH = _bip341_key_path_inputs()


@pytest.mark.parametrize(
    "case", KEY_PATH, ids=[f"bip341-keypath-{i}" for i in range(len(KEY_PATH))]
)
def test_taproot_tweak_seckey_bip341(case: dict[str, str]) -> None:
    seckey = bytes.fromhex(case["internalPrivkey"])
    assert m.xonly(m.pubkey_from_secret(seckey)).hex() == case["internalPubkey"]
    tweaked = m.taproot_tweak_seckey(seckey, bytes.fromhex(case["tweak"]))
    assert tweaked.hex() == case["tweakedPrivkey"]


def test_taproot_tweak_seckey_signs_for_output_key() -> None:
    sk = os.urandom(32)
    tweak = os.urandom(32)
    internal = m.KeyAggContext.key_agg([m.pubkey_from_secret(sk)])
    # A single-key "aggregate" is not the key itself, so build the output key from the raw key:
    output = m.xonly(m.pubkey_from_secret(m.taproot_tweak_seckey(sk, tweak)))
    msg = os.urandom(32)
    sig = m.schnorr_sign(msg, m.taproot_tweak_seckey(sk, tweak))
    assert m.schnorr_verify(sig, msg, output)
    assert output != internal.xonly_pubkey
