"""The PSBT helpers of CPFP children (issue 9, item 7): the size a child will have once signed,
an exact change amount, and the raw child for a package, on PSBTs from the harness wallet
(lightningd's shapes: `fundpsbt`, then `signpsbt`)."""

from __future__ import annotations

import pytest

from superscalar_plugin.engine.errors import WireError
from superscalar_plugin.engine.tx import Tx
from superscalar_plugin.plugin.lightningd import psbt
from superscalar_plugin.plugin.onchain.feebump import bitcoind_from_configs

from harness.network import Network


def test_a_child_is_sized_before_signing_and_extracted_after(network: Network) -> None:
    node = network.add_node("n", utxos=2, utxo_sat=100_000)
    funded = node.rpc_call(
        "fundpsbt",
        {"satoshi": 1000, "feerate": "253perkw", "startweight": 329, "excess_as_change": True},
    )
    change = funded["change_outnum"]
    child = psbt.add_anchor_input(funded["psbt"], ("ab" * 32, 1), 240, change)
    estimate = psbt.signed_vsize(child)
    with pytest.raises(WireError, match="not signed"):
        psbt.extract(child)
    total_in = sum(u.amount for u in psbt.input_utxos(child))
    child = psbt.with_output_amount(child, change, total_in - 2000)
    signed = node.rpc_call("signpsbt", {"psbt": child})["signed_psbt"]
    final = psbt.finalize_anchor(signed, len(psbt.unsigned_tx(signed).inputs) - 1)
    tx = Tx.deserialize(psbt.extract(final))
    assert tx.outputs[change].amount == total_in - 2000  # the fee is exactly 2000 sat
    assert tx.witnesses[-1] == ()  # the anchor: an empty witness
    assert estimate - 2 <= tx.vsize <= estimate  # never under: the fee is never short


def test_the_nodes_bitcoind_is_found_from_listconfigs(tmp_path: object) -> None:
    explicit = bitcoind_from_configs(
        {
            "network": {"value_str": "regtest"},
            "bitcoin-rpcuser": {"value_str": "u"},
            "bitcoin-rpcpassword": {"value_str": "p"},
            "bitcoin-rpcconnect": {"value_str": "10.0.0.1"},
            "bitcoin-rpcport": {"value_int": 1234},
        }
    )
    assert (explicit.base_url, explicit.user, explicit.password) == (
        "http://10.0.0.1:1234",
        "u",
        "p",
    )
    from pathlib import Path

    datadir = Path(str(tmp_path))
    (datadir / "regtest").mkdir()
    (datadir / "regtest" / ".cookie").write_text("__cookie__:secret\n")
    cookie = bitcoind_from_configs(
        {
            "network": {"value_str": "regtest"},
            "bitcoin-datadir": {"value_str": str(datadir)},
        }
    )
    assert (cookie.base_url, cookie.user, cookie.password) == (
        "http://127.0.0.1:18443",
        "__cookie__",
        "secret",
    )
    with pytest.raises(ValueError, match="no bitcoin-rpcuser/password"):
        bitcoind_from_configs(
            {"network": {"value_str": "signet"}, "bitcoin-datadir": {"value_str": str(datadir)}}
        )
