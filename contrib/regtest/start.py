#!/usr/bin/env python3
"""A local regtest stack: bitcoind, one LSP and N client lightningd nodes running the plugin.

    .venv/bin/python contrib/regtest/start.py --clients 3

Needs `lightningd` and `lightning-cli` on PATH (Core Lightning v26.06.6) and a bitcoind v28+
(`make bitcoind` builds one). Every node listens on loopback only, in a fresh directory. The LSP's
wallet is funded, everyone is connected, and the commands to try are printed. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from superscalar_plugin.chain.bitcoind import BitcoindProcess, free_port  # noqa: E402

PLUGIN = Path(sys.executable).parent / "superscalar"


class Node:
    def __init__(
        self, name: str, base: Path, bitcoind: BitcoindProcess, options: list[str]
    ) -> None:
        self.name = name
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.options = [
            "--network=regtest",
            f"--lightning-dir={self.dir}",
            f"--addr=127.0.0.1:{self.port}",
            f"--bitcoin-rpcuser={bitcoind.rpc_user}",
            f"--bitcoin-rpcpassword={bitcoind.rpc_password}",
            f"--bitcoin-rpcport={bitcoind.rpc_port}",
            "--bitcoin-rpcconnect=127.0.0.1",
            f"--bitcoin-datadir={bitcoind.datadir}",
            f"--bitcoin-cli={bitcoind.bitcoin_cli}",
            f"--plugin={PLUGIN}",
            f"--log-file={self.dir / 'log'}",
            "--log-level=debug",
            *options,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start lightningd without waiting for it (`wait_started` waits): many nodes at once."""
        # Its own session: a Ctrl-C in the terminal reaches this script only, which then stops
        # each node with `stop` (a SIGINT straight to lightningd kills it mid-flight, and its
        # plugins then complain about the lost RPC socket).
        self.proc = subprocess.Popen(
            ["lightningd", *self.options],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr").open("wb"),
            start_new_session=True,
        )

    def wait_started(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (self.dir / "regtest" / "lightning-rpc").exists():
                try:
                    self.cli("getinfo")
                    return
                except subprocess.CalledProcessError:
                    pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: lightningd exited; see {self.dir / 'log'}")
            time.sleep(0.3)
        raise SystemExit(f"{self.name}: lightningd did not start; see {self.dir / 'log'}")

    def wait_for_funds(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(o["status"] == "confirmed" for o in self.cli("listfunds")["outputs"]):
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: the wallet never saw its coins")
            time.sleep(0.5)

    def cli_prefix(self) -> str:
        return f"lightning-cli --network=regtest --lightning-dir={self.dir}"

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            ["lightning-cli", "--network=regtest", f"--lightning-dir={self.dir}", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.cli("stop")
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the nodes live (default: a temp dir)"
    )
    args = ap.parse_args()
    for tool in ("lightningd", "lightning-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH: install Core Lightning v26.06.6 first")
    base = args.dir or Path(tempfile.mkdtemp(prefix="superscalar-regtest-"))
    base.mkdir(parents=True, exist_ok=True)
    bitcoind = BitcoindProcess(datadir=base / "bitcoind", keep_datadir=True).start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        lsp = Node("lsp", base, bitcoind, [])
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        for i in range(args.clients):
            node = Node(f"client{i}", base, bitcoind, [f"--superscalar-accept-from={lsp_id}"])
            node.start()
            nodes.append(node)
        address = lsp.cli("newaddr")["bech32"]
        bitcoind.wallet.call("sendtoaddress", address, 1)
        bitcoind.mine(6)
        lsp.wait_for_funds()  # lightningd polls bitcoind: a factory-create now would find nothing
        ids = []
        for node in nodes[1:]:
            info = node.cli("getinfo")
            ids.append(info["id"])
            lsp.cli("connect", info["id"], "127.0.0.1", str(node.port))
        print(f"\nsuperscalar regtest stack in {base}: bitcoind + LSP + {args.clients} clients\n")
        print("Create a factory (every client gets a 500000 sat channel):")
        print(f"  {lsp.cli_prefix()} factory-create '{json.dumps(ids)}' 500000")
        print("Look at it from the LSP and from a client:")
        print(f"  {lsp.cli_prefix()} factory-status")
        print(f"  {nodes[1].cli_prefix()} factory-status")
        print("Pay a client, then pay the LSP back:")
        print(
            f"  {nodes[1].cli_prefix()} invoice 10000000 t1 test   # then: {lsp.cli_prefix()} pay <bolt11>"
        )
        print("Mine a block:")
        print(f"  {' '.join(bitcoind.cli_args())} generatetoaddress 1 {bitcoind.new_address()}")
        print("\nCtrl-C stops everything.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


if __name__ == "__main__":
    main()
