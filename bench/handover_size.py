"""On-chain size of handing over an old factory (issue 11), beside every client's unilateral exit.

Every figure is the vsize of real signed transactions: the LSP's key-path spend of the funding
output with every client's handed-over key (one 1-input 1-output tx to a P2TR address), the
whole signed tree (what the chain carries when every client exits unilaterally; each channel's
own close comes on top), one client's exit path, and a half handover (clients 0..N/2-1 handed
over: the plan's tree txs plus its key-path sweeps).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superscalar_plugin.engine import dw
from superscalar_plugin.engine.ceremony import sign_in_process
from superscalar_plugin.engine.handover import partial_unroll, spend_handed
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.engine.tx import Tx
from superscalar_plugin.simulate import make_factory

SHAPES = {
    "binary": FactoryParams(clients_per_leaf=2, arity=(2,), kickoff_only_top=0),
    "2,4,8+2top": FactoryParams(clients_per_leaf=2, arity=(2, 4, 8), kickoff_only_top=2),
}
SIZES = (4, 8, 64)
DEST = b"\x51\x20" + bytes(range(32))  # a P2TR address of the LSP's wallet
OUTPOINT = ("ab" * 32, 0)
RATE_KVB = 2000


def vsize(raw: bytes) -> int:
    return Tx.deserialize(raw).vsize


def one(n: int, params: FactoryParams) -> dict[str, float]:
    people = make_factory(n, params, timeout_height=900_000)
    f = people.factory
    topo = f.topology
    keys = dict(enumerate(people.client_seckeys))
    states = dw.initial_states(topo)
    signed = sign_in_process(f, OUTPOINT, states, people.lsp_seckey, people.client_seckeys)
    tree_vb = sum(vsize(s.raw()) for s in signed.values())
    path_vb = max(sum(vsize(signed[x].raw()) for x in topo.client_path(c)) for c in range(n))
    plan = partial_unroll(f, set(range(n)), states)
    [funding] = plan.spend
    handover_vb = vsize(spend_handed(f, funding, OUTPOINT, keys, people.lsp_seckey, DEST, RATE_KVB))
    half = set(range(n // 2))
    plan = partial_unroll(f, half, states)
    txids = {s.node: signed[s.node].txid for s in plan.publish}
    half_vb = sum(vsize(signed[s.node].raw()) for s in plan.publish) + sum(
        vsize(
            spend_handed(f, o, o.outpoint(OUTPOINT, txids), keys, people.lsp_seckey, DEST, RATE_KVB)
        )
        for o in plan.spend
    )
    return {
        "handover_vb": handover_vb,
        "tree_vb": tree_vb,
        "path_vb": path_vb,
        "half_vb": half_vb,
        "half_txs": len(plan.publish) + len(plan.spend),
    }


def run() -> None:
    print(
        "\nhandover (issue 11): on-chain vB of the LSP's key-path spend with every handed-over key,"
        "\nbeside every client's unilateral exit of the same factory (the whole signed tree; the"
        "\nchannels' own closes come on top), one client's exit path, and a half handover"
        "\n(clients 0..N/2-1: the plan's tree txs + its key-path sweeps)"
    )
    print(
        "clients shape       handover_vB /client  all_exits_vB /client  ratio"
        "  one_exit_vB  half_handover_vB (txs)"
    )
    for shape, params in SHAPES.items():
        for n in SIZES:
            r = one(n, params)
            print(
                f"{n:>7} {shape:<11} {r['handover_vb']:>11} {r['handover_vb'] / n:>7.1f}"
                f" {r['tree_vb']:>13} {r['tree_vb'] / n:>7.1f}"
                f" {r['tree_vb'] / r['handover_vb']:>5.0f}x {r['path_vb']:>12}"
                f" {r['half_vb']:>17} ({r['half_txs']})"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    run()
