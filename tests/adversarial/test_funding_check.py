"""fundcheck: the outputs of a block's transaction (any form), and what a wrong funding output is."""

from __future__ import annotations

import pytest

from superscalar_plugin.engine import store
from superscalar_plugin.engine.errors import WireError
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut, block_txids
from superscalar_plugin.plugin.creation.fundcheck import funding_problem, tx_outputs

from harness.bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    lx,
)


def _block(txs: list[bytes]) -> bytes:
    return bytes(80) + bytes([len(txs)]) + b"".join(txs)


def _txs() -> list[bytes]:
    coinbase = CMutableTransaction(
        [CMutableTxIn(COutPoint(), CScript(b"\x03\x01\x02\x03"))],
        [CMutableTxOut(50_0000_0000, CScript(b"\x51"))],
    )
    legacy = CMutableTransaction(  # a non-empty scriptSig (p2sh-wrapped input, say)
        [CMutableTxIn(COutPoint(lx("11" * 32), 3), CScript(b"\x16" + bytes(22)))],
        [CMutableTxOut(1234, CScript(b"\x00\x14" + bytes(20))), CMutableTxOut(5, CScript())],
    )
    segwit = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx("22" * 32), 0))],
        [CMutableTxOut(777, CScript(b"\x51\x20" + bytes(32)))],
    )
    segwit.wit.vtxinwit[0].scriptWitness = CScriptWitness([b"\x01" * 64])
    return [bytes(t.serialize()) for t in (coinbase, legacy, segwit)]


def test_tx_outputs_reads_every_transaction_form() -> None:
    raw = _block(_txs())
    assert len(block_txids(raw)) == 3
    assert tx_outputs(raw, 0) == [TxOut(50_0000_0000, b"\x51")]
    assert tx_outputs(raw, 1) == [TxOut(1234, b"\x00\x14" + bytes(20)), TxOut(5, b"")]
    assert tx_outputs(raw, 2) == [TxOut(777, b"\x51\x20" + bytes(32))]
    with pytest.raises(WireError):
        tx_outputs(raw, 3)
    with pytest.raises(WireError):
        tx_outputs(raw[:120], 1)  # cut inside its outputs


def _record(funding: str, vout: int, amount: int, script: bytes) -> store.ClientRecord:
    root = Tx(2, (TxIn(funding, vout, 0xFFFFFFFD),), (TxOut(1000, b"\x51"),), 0)
    entry = store.PathEntry(0, 0, root.serialize().hex(), amount, script.hex())
    return store.ClientRecord(
        "aa" * 32,
        "02" + "11" * 32,
        store.ClientState.FUNDED,
        0,
        1,
        FactoryParams(),
        1000,
        "02" + "22" * 32,
        "02" + "33" * 32,
        100_000,
        100,
        path=(entry,),
        funding_txid=funding,
    )


def test_funding_problem_names_what_differs() -> None:
    script = b"\x51\x20" + bytes(32)
    good = _record("33" * 32, 1, 5000, script)
    outs = [TxOut(1, b"\x51"), TxOut(5000, script)]
    assert funding_problem(good, outs) is None
    assert "holds 4999 sat" in str(funding_problem(good, [outs[0], TxOut(4999, script)]))
    assert "pays script" in str(funding_problem(good, [outs[0], TxOut(5000, b"\x51")]))
    assert "does not exist" in str(funding_problem(good, outs[:1]))
    other = _record("33" * 32, 1, 5000, script).replace(funding_txid="44" * 32)
    assert "not the funding" in str(funding_problem(other, outs))
