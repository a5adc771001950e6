"""The engine's transaction values agree with python-bitcointx (serialization, txid, sighashes)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from superscalar_plugin.chain.btx import (
    SIGVERSION_TAPROOT,
    SIGVERSION_TAPSCRIPT,
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CTxOut,
    SIGHASH_Type,
    SignatureHashSchnorr,
    lx,
)
from superscalar_plugin.engine.errors import WireError
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut, dust_threshold, taproot_sighash


def _random_tx(rng: random.Random) -> Tx:
    ins = tuple(
        TxIn(rng.randbytes(32).hex(), rng.randrange(5), rng.randrange(2**32))
        for _ in range(rng.randrange(1, 4))
    )
    outs = tuple(
        TxOut(rng.randrange(10**9), b"\x51\x20" + rng.randbytes(32))
        for _ in range(rng.randrange(1, 5))
    )
    return Tx(2, ins, outs, rng.randrange(2**32))


def _as_bitcointx(tx: Tx) -> CMutableTransaction:
    return CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(i.txid), i.vout), nSequence=i.sequence) for i in tx.inputs],
        [CMutableTxOut(o.amount, CScript(o.script_pubkey)) for o in tx.outputs],
        nLockTime=tx.locktime,
        nVersion=tx.version,
    )


@pytest.mark.parametrize("seed", range(20))
def test_serialization_txid_and_sighash_match_bitcointx(seed: int) -> None:
    rng = random.Random(seed)
    tx = _random_tx(rng)
    ref = _as_bitcointx(tx)
    assert tx.serialize() == bytes(ref.serialize())
    assert tx.txid == ref.GetTxid()[::-1].hex()
    spent = [TxOut(rng.randrange(10**9), b"\x51\x20" + rng.randbytes(32)) for _ in tx.inputs]
    ref_spent = [CTxOut(o.amount, CScript(o.script_pubkey)) for o in spent]
    index = rng.randrange(len(tx.inputs))
    hash_type = rng.choice([0x00, 0x01, 0x02, 0x81, 0x82])
    leaf = rng.randbytes(32) if seed % 2 else None
    expected = SignatureHashSchnorr(
        ref,
        index,
        ref_spent,
        hashtype=None if hash_type == 0 else SIGHASH_Type(hash_type),
        sigversion=SIGVERSION_TAPSCRIPT if leaf else SIGVERSION_TAPROOT,
        tapleaf_hash=leaf,
    )
    assert taproot_sighash(tx, index, spent, hash_type, leaf) == bytes(expected)


def test_witness_round_trip_and_strict_parsing() -> None:
    tx = _random_tx(random.Random(7))
    signed = tx.with_witnesses([[b"\x01" * 64] for _ in tx.inputs])
    assert Tx.deserialize(signed.serialize()) == signed
    assert signed.txid == tx.txid
    assert signed.vsize < len(signed.serialize())
    with pytest.raises(WireError):
        Tx.deserialize(signed.serialize() + b"\x00")
    with pytest.raises(WireError):
        Tx.deserialize(signed.serialize()[:-5])


def test_block_txids_of_a_block_with_a_coinbase_and_a_segwit_tx() -> None:
    from superscalar_plugin.engine.tx import block_txids, compact_size

    coinbase = CMutableTransaction(
        [CMutableTxIn(COutPoint(), CScript(b"\x03\x01\x02\x03" + b"pad"), 0xFFFFFFFF)],
        [CMutableTxOut(50 * 10**8, CScript(b"\x51\x20" + bytes(32)))],
    )
    unsigned = _random_tx(random.Random(9))
    segwit = replace(unsigned, witnesses=tuple((b"\x07" * 64,) for _ in unsigned.inputs))
    block = bytes(80) + compact_size(2) + bytes(coinbase.serialize()) + segwit.serialize()
    assert block_txids(block) == [coinbase.GetTxid()[::-1].hex(), segwit.txid]
    with pytest.raises(WireError):
        block_txids(block + b"\x00")


@pytest.mark.parametrize(
    ("script", "dust"),
    [
        (b"\x51\x20" + bytes(32), 330),  # P2TR
        (b"\x00\x20" + bytes(32), 330),  # P2WSH
        (b"\x00\x14" + bytes(20), 294),  # P2WPKH
        (bytes.fromhex("76a914") + bytes(20) + bytes.fromhex("88ac"), 546),  # P2PKH
        (bytes.fromhex("a914") + bytes(20) + b"\x87", 540),  # P2SH
        (b"\x6a\x04abcd", 0),  # OP_RETURN: unspendable, no dust limit
        (b"\x51\x02\x4e\x73", 240),  # P2A (a witness program): Core's 240-sat anchor
    ],
)
def test_dust_thresholds_are_bitcoin_cores(script: bytes, dust: int) -> None:
    assert dust_threshold(script) == dust
