"""The embedded regtest chain: Core's consensus engine accepts and rejects what Core would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from superscalar_plugin.chain.btx import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    CTransaction,
    lx,
)
from superscalar_plugin.engine.errors import InvalidParameter

pytest.importorskip("pbk", reason="py-bitcoinkernel is not installed (pip install -e '.[dev]')")

from superscalar_plugin.chain.kernel import (
    COINBASE_MATURITY,
    FUND_FEE_SAT,
    KernelChain,
)

OP_TRUE = b"\x51"
OP_CHECKSEQUENCEVERIFY = b"\xb2"
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME_ENABLED = 0xFFFFFFFE
BURN = b"\x6a"  # OP_RETURN: outputs go nowhere, fine for spends that only test validity


def p2wsh(witness_script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


def push_small_int(n: int) -> bytes:
    assert 1 <= n <= 16
    return bytes([0x50 + n])


def spend_p2wsh(
    outpoint: tuple[str, int],
    amount: int,
    witness_script: bytes,
    *,
    to: bytes = BURN,
    fee: int = 500,
    sequence: int = SEQUENCE_FINAL,
    locktime: int = 0,
) -> bytes:
    """A version-2 tx spending a P2WSH output whose script needs no witness data but itself."""
    txid, vout = outpoint
    tx = CMutableTransaction(
        vin=[CMutableTxIn(COutPoint(lx(txid), vout), nSequence=sequence)],
        vout=[CMutableTxOut(amount - fee, CScript(to))],
        nLockTime=locktime,
        nVersion=2,
    )
    tx.wit.vtxinwit[0].scriptWitness = CScriptWitness([witness_script])
    return bytes(tx.serialize())


def txid_of(raw: bytes) -> str:
    return bytes(CTransaction.deserialize(raw).GetTxid())[::-1].hex()


def test_mine_empty_advances_height(kernel_chain: KernelChain) -> None:
    assert kernel_chain.height == 0
    kernel_chain.mine_empty(5)
    assert kernel_chain.height == 5
    result = kernel_chain.mine()
    assert result.accepted and result.reason is None
    assert result.height == 6
    assert result.block_hash == kernel_chain.tip_hash
    # nTime above the median time past, and the MTP moves forward
    mtp = kernel_chain.median_time_past
    kernel_chain.mine_empty(1)
    assert kernel_chain.median_time_past > mtp
    assert kernel_chain.tip_time > kernel_chain.median_time_past


def test_funding_tx_confirms_and_is_in_utxo_set(kernel_chain: KernelChain) -> None:
    spk = p2wsh(OP_TRUE)
    txid, vout = kernel_chain.fund(spk, 123_456)
    assert kernel_chain.height >= COINBASE_MATURITY + 1  # it mined the maturity blocks itself
    assert kernel_chain.utxo(txid, vout) == (123_456, spk)
    # the change went back to the wallet; a second funding needs no further maturity blocks
    height = kernel_chain.height
    txid2, vout2 = kernel_chain.fund(spk, 7_000)
    assert kernel_chain.height == height + 1
    assert kernel_chain.utxo(txid2, vout2) == (7_000, spk)
    # spending it removes it from the UTXO set
    assert kernel_chain.mine([spend_p2wsh((txid, vout), 123_456, OP_TRUE)]).accepted
    assert kernel_chain.utxo(txid, vout) is None
    assert kernel_chain.utxo(txid2, vout2) == (7_000, spk)


def test_build_funding_tx_is_not_mined_and_reserves_its_coins(kernel_chain: KernelChain) -> None:
    spk = p2wsh(OP_TRUE)
    raw1 = kernel_chain.build_funding_tx([(spk, 10_000), (spk, 20_000)])
    raw2 = kernel_chain.build_funding_tx([(spk, 30_000)])
    height = kernel_chain.height
    assert kernel_chain.utxo(txid_of(raw1), 0) is None
    result = kernel_chain.mine([raw1, raw2])  # no conflict: the second used other coins
    assert result.accepted, result
    assert kernel_chain.height == height + 1
    assert kernel_chain.utxo(txid_of(raw1), 0) == (10_000, spk)
    assert kernel_chain.utxo(txid_of(raw1), 1) == (20_000, spk)
    assert kernel_chain.utxo(txid_of(raw2), 0) == (30_000, spk)
    # change is the last output and pays the wallet what is left after the flat fee
    tx = CTransaction.deserialize(raw2)
    change = kernel_chain.utxo(txid_of(raw2), len(tx.vout) - 1)
    assert change is not None and change[1] == kernel_chain.wallet_script_pubkey
    assert change[0] == 50 * 100_000_000 - 30_000 - FUND_FEE_SAT


def test_double_spend_is_rejected_and_tip_unchanged(kernel_chain: KernelChain) -> None:
    outpoint = kernel_chain.fund(p2wsh(OP_TRUE), 50_000)
    first = spend_p2wsh(outpoint, 50_000, OP_TRUE, fee=500)
    second = spend_p2wsh(outpoint, 50_000, OP_TRUE, fee=600)
    assert kernel_chain.mine([first]).accepted
    height, tip = kernel_chain.height, kernel_chain.tip_hash

    result = kernel_chain.mine([second])
    assert not result.accepted
    assert result.reason == "bad-txns-inputs-missingorspent"
    assert result.height == height
    assert result.block_hash != tip
    assert (kernel_chain.height, kernel_chain.tip_hash) == (height, tip)
    # the chain still extends normally afterwards
    assert kernel_chain.mine().accepted


def test_double_spend_within_one_block_is_rejected(kernel_chain: KernelChain) -> None:
    outpoint = kernel_chain.fund(p2wsh(OP_TRUE), 50_000)
    height, tip = kernel_chain.height, kernel_chain.tip_hash
    result = kernel_chain.mine(
        [
            spend_p2wsh(outpoint, 50_000, OP_TRUE, fee=500),
            spend_p2wsh(outpoint, 50_000, OP_TRUE, fee=600),
        ]
    )
    assert not result.accepted
    assert result.reason == "bad-txns-inputs-missingorspent"
    assert (kernel_chain.height, kernel_chain.tip_hash) == (height, tip)
    assert kernel_chain.utxo(*outpoint) == (50_000, p2wsh(OP_TRUE))


def test_nlocktime_final_only_from_next_block(kernel_chain: KernelChain) -> None:
    outpoint = kernel_chain.fund(p2wsh(OP_TRUE), 50_000)
    lock_height = kernel_chain.height + 3
    tx = spend_p2wsh(
        outpoint, 50_000, OP_TRUE, sequence=SEQUENCE_LOCKTIME_ENABLED, locktime=lock_height
    )
    kernel_chain.mine_empty(lock_height - 1 - kernel_chain.height)

    # the next block is at height lock_height: not final there
    result = kernel_chain.mine([tx])
    assert not result.accepted
    assert result.reason == "bad-txns-nonfinal"
    assert kernel_chain.height == lock_height - 1

    kernel_chain.mine_empty(1)  # tip = lock_height, next block = lock_height + 1
    result = kernel_chain.mine([tx])
    assert result.accepted, result
    assert result.height == lock_height + 1
    assert kernel_chain.utxo(*outpoint) is None


def test_nlocktime_ignored_when_all_inputs_final(kernel_chain: KernelChain) -> None:
    outpoint = kernel_chain.fund(p2wsh(OP_TRUE), 50_000)
    tx = spend_p2wsh(outpoint, 50_000, OP_TRUE, sequence=SEQUENCE_FINAL, locktime=10_000)
    assert kernel_chain.mine([tx]).accepted


@pytest.mark.parametrize("delay", [1, 5])
def test_csv_relative_lock(kernel_chain: KernelChain, delay: int) -> None:
    script = push_small_int(delay) + OP_CHECKSEQUENCEVERIFY  # <delay> OP_CSV
    outpoint = kernel_chain.fund(p2wsh(script), 50_000)
    confirmed_at = kernel_chain.height
    tx = spend_p2wsh(outpoint, 50_000, script, sequence=delay)

    # BIP68: spendable in the block at confirmed_at + delay, not before
    for _ in range(delay - 1):
        result = kernel_chain.mine([tx])
        assert not result.accepted
        assert result.reason == "bad-txns-nonfinal"
        assert result.detail is not None and "BIP68" in result.detail
        kernel_chain.mine_empty(1)
    result = kernel_chain.mine([tx])
    assert result.accepted, result
    assert result.height == confirmed_at + delay


def test_csv_script_fails_when_sequence_below_delay(kernel_chain: KernelChain) -> None:
    script = push_small_int(5) + OP_CHECKSEQUENCEVERIFY
    outpoint = kernel_chain.fund(p2wsh(script), 50_000)
    kernel_chain.mine_empty(10)
    # nSequence 4 satisfies BIP68 (10 blocks passed) but not the script's OP_CSV 5
    result = kernel_chain.mine([spend_p2wsh(outpoint, 50_000, script, sequence=4)])
    assert not result.accepted
    assert result.reason is not None
    assert result.reason.endswith("script-verify-flag-failed (Locktime requirement not satisfied)")


def test_bad_signature_is_rejected(kernel_chain: KernelChain) -> None:
    raw = kernel_chain.build_funding_tx([(p2wsh(OP_TRUE), 10_000)])
    tx = CMutableTransaction.from_tx(CTransaction.deserialize(raw))
    signature = bytearray(tx.wit.vtxinwit[0].scriptWitness.stack[0])
    signature[10] ^= 0x01
    tx.wit.vtxinwit[0].scriptWitness = CScriptWitness([bytes(signature)])
    height = kernel_chain.height

    result = kernel_chain.mine([bytes(tx.serialize())])
    assert not result.accepted
    assert result.reason is not None
    assert result.reason.endswith("script-verify-flag-failed (Invalid Schnorr signature)")
    assert kernel_chain.height == height
    # the untouched original is valid
    assert kernel_chain.mine([raw]).accepted


def test_premature_coinbase_spend_is_rejected(kernel_chain: KernelChain) -> None:
    spk = p2wsh(OP_TRUE)
    assert kernel_chain.mine(coinbase_script=spk).accepted
    block_height = kernel_chain.height
    [(txid, vout, amount)] = kernel_chain.find_utxos(spk)
    outpoint = (txid, vout)
    assert amount == 50 * 100_000_000
    assert kernel_chain.utxo(*outpoint) == (amount, spk)
    tx = spend_p2wsh(outpoint, amount, OP_TRUE)
    kernel_chain.mine_empty(COINBASE_MATURITY - 2)  # next block = block_height + 99

    result = kernel_chain.mine([tx])
    assert not result.accepted
    assert result.reason == "bad-txns-premature-spend-of-coinbase"
    kernel_chain.mine_empty(1)
    result = kernel_chain.mine([tx])
    assert result.accepted, result
    assert result.height == block_height + COINBASE_MATURITY


def test_malformed_tx_bytes_raise(kernel_chain: KernelChain) -> None:
    with pytest.raises(InvalidParameter):
        kernel_chain.mine([b"\x02\x00\x00"])
    assert kernel_chain.height == 0


def test_reopen_datadir_rebuilds_utxo_set(tmp_path: Path) -> None:
    datadir = tmp_path / "chain"
    spk = p2wsh(OP_TRUE)
    with KernelChain(datadir) as chain:
        kept = chain.fund(spk, 40_000)
        spent = chain.fund(spk, 30_000)
        assert chain.mine([spend_p2wsh(spent, 30_000, OP_TRUE)]).accepted
        height, tip, mtp = chain.height, chain.tip_hash, chain.median_time_past
    assert datadir.exists()  # not ours to delete
    with KernelChain(datadir) as chain:
        assert (chain.height, chain.tip_hash, chain.median_time_past) == (height, tip, mtp)
        assert chain.utxo(*kept) == (40_000, spk)
        assert chain.utxo(*spent) is None
        # the wallet's coins survived: funding works without new maturity blocks
        assert chain.utxo(*chain.fund(spk, 1_000)) == (1_000, spk)
        assert chain.height == height + 1


def test_close_deletes_temp_datadir_and_is_idempotent() -> None:
    chain = KernelChain()
    datadir = chain.datadir
    chain.mine_empty(2)
    assert datadir.exists()
    chain.close()
    chain.close()
    assert not datadir.exists()
    assert chain.closed
    with pytest.raises(Exception, match="closed"):
        _ = chain.height
