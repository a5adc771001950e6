"""What every real-lightningd test needs: lightningd on PATH (else the module is skipped with the
reason), the project's bitcoind on PATH, pyln-testing told what this lightningd is, the plugin as an
operator installs it, and lightning-cli run exactly as an operator types it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = str(Path(sys.executable).parent / "superscalar")


def require_lightningd() -> None:
    """Skip the calling test module unless a lightningd is on PATH; prepare the environment
    pyln-testing reads when it is."""
    if shutil.which("lightningd") is None:
        pytest.skip(
            "lightningd is not on PATH: build Core Lightning v26.06.6 and put it on PATH to run "
            "the real-node tests",
            allow_module_level=True,
        )
    bitcoind_dir = ROOT / ".venv" / "bitcoind-path"
    if shutil.which("bitcoind") is None and bitcoind_dir.exists():
        os.environ["PATH"] = bitcoind_dir.read_text().strip() + os.pathsep + os.environ["PATH"]
    # pyln-testing passes --grpc-port unless RUST=0; a lightningd built without Rust (no
    # cln-grpc plugin) refuses that option.
    os.environ.setdefault("RUST", "0")


def cli(node: Any, *args: str) -> Any:
    """`lightning-cli <args>` against a pyln-testing node, arguments as typed in a shell (so
    `connect <id> 127.0.0.1 <port>` sends the raw token 127.0.0.1, as an operator's would)."""
    out = subprocess.run(
        [
            "lightning-cli",
            "--network=regtest",
            f"--lightning-dir={node.daemon.lightning_dir}",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out) if out.strip() else None


def connect_by_ip(node: Any, peer: Any) -> None:
    """How every LSP connects to its clients: `lightning-cli connect <id> 127.0.0.1 <port>`."""
    cli(node, "connect", peer.info["id"], "127.0.0.1", str(peer.port))


def write_plugin(directory: Path, name: str, source: str) -> str:
    """A small pyln plugin for a test node: `source` as an executable file run by this
    interpreter (which has pyln-client); returns its path for the node's `plugin` option."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return str(path)


# --- factories on real nodes: what most real-node tests start with --------------------------

CHANNEL_SAT = 500_000


def lsp_and_clients(
    node_factory: Any, n: int, lsp_options: dict[str, Any] | None = None
) -> tuple[Any, list[Any]]:
    """An LSP and `n` clients running the plugin, connected as an operator connects them."""
    # watchtime-blocks: the to_self_delay the LSP asks of clients, short so exits finish quickly.
    lsp = node_factory.get_node(
        options={"plugin": PLUGIN, "watchtime-blocks": 6, **(lsp_options or {})},
        may_reconnect=True,
    )
    clients = node_factory.get_nodes(
        n,
        opts={
            "plugin": PLUGIN,
            "superscalar-accept-from": lsp.info["id"],
            "may_reconnect": True,
        },
    )
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def create_factory(lsp: Any, clients: list[Any], **extra: Any) -> dict[str, Any]:
    from pyln.testing.utils import wait_for

    ids = [c.info["id"] for c in clients]
    params = {"clients": ids, "channel_sat": CHANNEL_SAT, "states_per_layer": 2, "step_blocks": 6}
    result: dict[str, Any] = {}

    def attempt() -> bool:  # the bLIP-56 handshake arrives right after connecting
        nonlocal result
        try:
            result = lsp.rpc.call("factory-create", {**params, **extra})
            return True
        except Exception as e:
            if "has not announced SuperScalar support" in str(e):
                return False
            raise

    wait_for(attempt)
    return result


def normal(node: Any, peer: Any) -> bool:
    chans = node.rpc.listpeerchannels(peer.info["id"])["channels"]
    return any(c["state"] == "CHANNELD_NORMAL" for c in chans)


def pay_both_ways(lsp: Any, clients: list[Any], amount_msat: int) -> None:
    for c in clients:
        inv = c.rpc.invoice(amount_msat, f"to-{os.urandom(4).hex()}", "factory")["bolt11"]
        assert lsp.rpc.pay(inv)["status"] == "complete"
    for c in clients:
        inv = lsp.rpc.invoice(amount_msat // 2, f"from-{os.urandom(4).hex()}", "factory")["bolt11"]
        assert c.rpc.pay(inv)["status"] == "complete"


SMALL = {"states_per_layer": 2, "step_blocks": 3}


def open_factory(lsp: Any, clients: list[Any]) -> dict[str, Any]:
    from pyln.testing.utils import wait_for

    out = create_factory(lsp, clients, **SMALL)
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    return out


def wallet_sat(node: Any) -> int:
    return sum(
        int(o["amount_msat"]) // 1000
        for o in node.rpc.listfunds()["outputs"]
        if o["status"] == "confirmed"
    )


def no_htlcs(node: Any) -> bool:
    return all(not c.get("htlcs") for c in node.rpc.listpeerchannels()["channels"])
