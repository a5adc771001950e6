"""One Decker-Wattenhofer state update (`factory-update`): its wall time on real lightningd nodes
with 2 and 4 clients below the moved state node (the LSP + 2 or 4 client nodes, loopback; median
of a few updates in a row), and the bytes of factory messages it exchanges (computed in-process
from the same encoders the plugin uses: UPDATE, READY, both ceremonies (below the moved node, then
it), BELOW_STORED, STORED, each in its bLIP-56 envelope; lightningd's own channel-opening messages
and the clients' payments to themselves come on top).

Runs the real-node part when `lightningd` is on PATH with the project's bitcoind (see
`real_create`), else says why.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "contrib" / "regtest"))
sys.path.insert(0, str(ROOT / "bench"))

from real_create import skip_reason  # noqa: E402

from superscalar_plugin.engine.ceremony import ClientTerms  # noqa: E402
from superscalar_plugin.engine.tree import Factory  # noqa: E402
from superscalar_plugin.engine.update import UpdatePlan  # noqa: E402

UPDATES = 3  # states_per_layer 4: three updates of the node before it is used up
ENVELOPE = 2 + 1 + 32 + 2  # bLIP-56 factory message type, piggyback header (approximate)


def update_bytes(n_clients: int) -> int:
    """Factory-message bytes of one update of the lowest state node over every leaf."""
    from superscalar_plugin.engine import dw, protocol
    from superscalar_plugin.engine.ceremony import Coordinator, Signer, run_ceremony
    from superscalar_plugin.engine.tree import FactoryParams
    from superscalar_plugin.engine.update import plan_update, signing_phases, updated_factory
    from superscalar_plugin.simulate import agreed_terms, make_factory

    p = make_factory(n_clients, FactoryParams(), timeout_height=10_000)
    f = p.factory
    states = dw.initial_states(f.topology)
    signers = {c: Signer(p.client_seckeys[c], agreed_terms(f, c)) for c in range(n_clients)}
    run_ceremony(Coordinator(f, p.lsp_seckey, ("11" * 32, 0), states), signers)
    plan = plan_update(f, states, list(f.topology.leaves), {})
    new = updated_factory(f, plan, {c: f.channels[c][0] for c in plan.clients})
    total = 0
    instance, session = b"\x01" * 32, b"\x02" * 32
    for c in plan.clients:
        update = protocol.Update(
            instance, session, plan.node, 1, 100_000, 0, 100_000, (b"\x03" * 32,)
        )
        steps = [protocol.UpdateStep(instance, session, k) for k in protocol.UpdateStepKind]
        total += sum(len(protocol.encode(m)) + ENVELOPE for m in (update, *steps))
        signers[c].agree_update(_terms(new, plan, c), node=plan.node)
    for nodes in signing_phases(new, plan.node):  # bottom-up: below the moved node, then it
        coordinator = Coordinator(new, p.lsp_seckey, ("11" * 32, 0), plan.states, nodes)
        outbox = coordinator.start()
        while outbox:
            nxt: dict[int, bytes] = {}
            for c, data in outbox.items():
                total += len(data) + 33 + ENVELOPE  # + the CEREMONY payload's type and instance
                reply = signers[c].receive(data)
                if reply is not None:
                    total += len(reply) + 33 + ENVELOPE
                    nxt.update(coordinator.receive(c, reply))
            outbox = nxt
    return total


def _terms(new: Factory, plan: UpdatePlan, c: int) -> ClientTerms:
    from superscalar_plugin.simulate import agreed_terms

    leaf = new.topology.leaf_of_client[c]
    return dataclasses.replace(agreed_terms(new, c), leaf_stock=plan.stock_of(new, leaf))


def measure(n_clients: int, base: Path) -> list[float]:
    from start import Node  # contrib/regtest/start.py

    from superscalar_plugin.chain.bitcoind import BitcoindProcess

    bitcoind = BitcoindProcess(datadir=base / "bitcoind").start()
    nodes: list[Node] = []
    try:
        bitcoind.mine(101)
        lsp = Node("lsp", base, bitcoind, [])
        lsp.start()
        nodes.append(lsp)
        lsp_id = lsp.cli("getinfo")["id"]
        for i in range(n_clients):
            node = Node(f"client{i}", base, bitcoind, [f"--superscalar-accept-from={lsp_id}"])
            node.start()
            nodes.append(node)
        bitcoind.wallet.call("sendtoaddress", lsp.cli("newaddr")["bech32"], 1)
        bitcoind.mine(6)
        ids = []
        for node in nodes[1:]:
            ids.append(node.cli("getinfo")["id"])
            lsp.cli("connect", ids[-1], "127.0.0.1", str(node.port))
        lsp.wait_for_funds()
        args = ["-k", "factory-create", f"clients={json.dumps(ids)}", "channel_sat=100000"]
        deadline = time.monotonic() + 60
        while True:
            try:
                created = lsp.cli(*args)
                break
            except subprocess.CalledProcessError as e:
                if "has not announced" not in e.stdout or time.monotonic() > deadline:
                    raise SystemExit(f"factory-create failed: {e.stdout}") from e
                time.sleep(0.2)
        bitcoind.mine(1)
        walls = []
        for _ in range(UPDATES):
            time.sleep(1.0)  # the clients see the new channels settle (channel_ready, updates)
            t = time.perf_counter()
            lsp.cli("factory-update", created["instance"])
            walls.append(time.perf_counter() - t)
        return walls
    finally:
        for node in reversed(nodes):
            node.stop()
        bitcoind.stop()


def run() -> None:
    print("\none DW state update (factory-update): factory-message bytes, computed in-process:")
    for n in (2, 4):
        print(f"  {n} clients below the moved node: {update_bytes(n)} bytes")
    reason = skip_reason()
    if reason is not None:
        print(f"factory-update on real lightningd: skipped: {reason}")
        return
    print(f"one DW state update on real lightningd v26.06.6 (median of {UPDATES} in a row):")
    for n in (2, 4):
        with tempfile.TemporaryDirectory(prefix="superscalar-bench-") as tmp:
            walls = measure(n, Path(tmp))
        print(
            f"  {n} clients below the moved node + LSP: {statistics.median(walls) * 1000:.0f} ms"
            f" (min {min(walls) * 1000:.0f}, max {max(walls) * 1000:.0f})"
        )


if __name__ == "__main__":
    run()
