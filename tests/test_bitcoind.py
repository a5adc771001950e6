"""The real-bitcoind test harness: RPC client, regtest node lifecycle, and the fixture contract."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from superscalar_plugin.chain.bitcoind import (
    MIN_BITCOIND_MAJOR,
    BitcoindNotFound,
    BitcoindProcess,
    BitcoindRPCError,
    BitcoindStartError,
    find_bitcoind,
    live_pids,
    pid_alive,
)
from superscalar_plugin.engine.errors import ChainError

from bitcoind_fixture import NodeFactory

TESTS_DIR = Path(__file__).resolve().parent


def test_node_is_regtest_and_recent(bitcoind: BitcoindProcess) -> None:
    info = bitcoind.rpc.call("getblockchaininfo")
    assert info["chain"] == "regtest"
    assert bitcoind.rpc.call("getnetworkinfo")["version"] >= MIN_BITCOIND_MAJOR * 10_000
    # Policy as on mainnet: these tests exist to prove relay policy, not just consensus.
    assert bitcoind.rpc.call("getmempoolinfo")["loaded"] is True
    genesis = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    assert bitcoind.rpc.call_named("getblockhash", height=0) == genesis


def test_mine_101_and_send(bitcoind: BitcoindProcess) -> None:
    start = bitcoind.height()
    hashes = bitcoind.mine(101)
    assert len(hashes) == 101
    assert bitcoind.height() == start + 101
    balance = bitcoind.wallet.call("getbalances")["mine"]["trusted"]
    assert isinstance(balance, Decimal)
    assert balance >= Decimal(50)

    dest = bitcoind.new_address()
    txid = bitcoind.wallet.call("sendtoaddress", dest, Decimal("1.25"))
    assert txid in bitcoind.rpc.call("getrawmempool")
    bitcoind.mine(1)
    tx = bitcoind.wallet.call("gettransaction", txid)
    assert tx["confirmations"] == 1
    received = bitcoind.wallet.call("getreceivedbyaddress", dest)
    assert received == Decimal("1.25")


def test_testmempoolaccept_valid_and_invalid(bitcoind: BitcoindProcess) -> None:
    if bitcoind.wallet.call("getbalances")["mine"]["trusted"] < 1:
        bitcoind.mine(101)
    raw = bitcoind.rpc.call("createrawtransaction", [], [{bitcoind.new_address(): Decimal("0.5")}])
    funded = bitcoind.wallet.call("fundrawtransaction", raw)["hex"]
    signed = bitcoind.wallet.call("signrawtransactionwithwallet", funded)
    assert signed["complete"] is True

    [result] = bitcoind.rpc.call("testmempoolaccept", [signed["hex"]])
    assert result["allowed"] is True, result
    assert result["vsize"] > 0
    assert result["fees"]["base"] > 0

    # The unsigned transaction is refused, and the reason comes back as data, not an exception.
    [refused] = bitcoind.rpc.call("testmempoolaccept", [funded])
    assert refused["allowed"] is False
    assert refused["reject-reason"]


def test_rpc_errors_carry_bitcoind_code(bitcoind: BitcoindProcess) -> None:
    with pytest.raises(BitcoindRPCError) as out_of_range:
        bitcoind.rpc.call("getblockhash", 10**6)
    assert isinstance(out_of_range.value, ChainError)
    assert out_of_range.value.code == -8
    assert "out of range" in out_of_range.value.message.lower()

    with pytest.raises(ChainError) as unknown:
        bitcoind.rpc.call("no_such_method")
    assert isinstance(unknown.value, BitcoindRPCError)
    assert unknown.value.code == -32601


def test_second_node_starts_and_leaves_nothing_behind(bitcoind_binary: Path) -> None:
    with BitcoindProcess(bitcoind_binary, wallet=None, txindex=True) as node:
        pid = node.pid
        datadir = node.datadir
        assert pid_alive(pid)
        assert pid in live_pids()
        assert node.rpc.call("getindexinfo")["txindex"] is not None
        assert node.rpc.call("getblockcount") == 0
    assert not pid_alive(pid)
    assert pid not in live_pids()
    assert not datadir.exists()


def test_factory_nodes_are_independent(
    bitcoind: BitcoindProcess, bitcoind_factory: NodeFactory
) -> None:
    other = bitcoind_factory()
    assert other.rpc_port != bitcoind.rpc_port
    assert other.p2p_port != bitcoind.p2p_port
    other.mine(3)
    assert other.height() == 3
    other.stop()
    assert not other.running


def test_startup_failure_reports_and_cleans_up(bitcoind_binary: Path) -> None:
    before = live_pids()
    node = BitcoindProcess(bitcoind_binary, extra_args=["-nosuchoption=1"])
    with pytest.raises(BitcoindStartError, match="nosuchoption"):
        node.start()
    assert not node.running
    assert not pid_alive(node.pid)
    assert live_pids() == before


def test_explicit_bitcoind_env_must_be_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITCOIND", "/nonexistent/bitcoind")
    with pytest.raises(BitcoindNotFound, match="BITCOIND"):
        find_bitcoind()


def test_missing_bitcoind_fails_the_run_instead_of_skipping(tmp_path: Path) -> None:
    """Issue 4: when bitcoind cannot be obtained the run fails and says why, never skips."""
    (tmp_path / "conftest.py").write_text(
        "from bitcoind_fixture import bitcoind, bitcoind_binary  # noqa: F401\n"
    )
    (tmp_path / "test_needs_node.py").write_text(
        textwrap.dedent(
            """
            def test_needs_node(bitcoind):
                raise AssertionError("must not run without bitcoind")
            """
        )
    )
    env = dict(os.environ, BITCOIND=str(tmp_path / "no-bitcoind"))
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert run.returncode != 0, run.stdout
    assert "skipped" not in run.stdout.splitlines()[-1]
    assert "1 error" in run.stdout.splitlines()[-1], run.stdout
    assert "make bitcoind" in run.stdout, run.stdout
