"""Exits and sweeps driven by the engine's state machines against a real regtest bitcoind.

The test plays the plugin's part: it observes the chain, calls `exit_step`, and carries out the
actions (broadcast, CPFP bump through the anchor with its own wallet, wait), one block at a time.
"""

from __future__ import annotations

from typing import Any

from superscalar_plugin.chain.bitcoind import BitcoindProcess
from superscalar_plugin.engine import dw, policy
from superscalar_plugin.engine.ceremony import (
    Coordinator,
    SignedNodeTx,
    run_ceremony,
    sign_in_process,
)
from superscalar_plugin.engine.exit import (
    Broadcast,
    Bump,
    ChainView,
    Done,
    PathTx,
    WaitUntil,
    exit_step,
)
from superscalar_plugin.engine.tree import Factory, FactoryParams
from superscalar_plugin.simulate import make_factory

import bitcoind_helpers as bh
from bitcoind_fixture import NodeFactory
from helpers import signers_for

PARAMS = FactoryParams(states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10)


class ChainWatcher:
    """What a plugin learns from block_added + getrawblockbyheight: where each txid confirmed."""

    def __init__(self, node: BitcoindProcess, since: int) -> None:
        self.node = node
        self.confirmed: dict[str, int] = {}
        self.scanned = since - 1
        self.first_seen: dict[str, int] = {}
        self.bumped: set[str] = set()

    def view(self, fee_rate_kvb: int) -> ChainView:
        tip = self.node.height()
        for h in range(self.scanned + 1, tip + 1):
            block = self.node.rpc.call("getblock", self.node.rpc.call("getblockhash", h), 1)
            for txid in block["tx"]:
                self.confirmed[txid] = h
        self.scanned = tip
        mempool = frozenset(self.node.rpc.call("getrawmempool"))
        return ChainView(
            tip,
            dict(self.confirmed),
            mempool,
            fee_rate_kvb,
            dict(self.first_seen),
            frozenset(self.bumped),
        )


def _run_exit(
    node: BitcoindProcess,
    funding_txid: str,
    path: list[PathTx],
    signed: dict[str, SignedNodeTx],
    fee_rate_kvb: int,
    since: int,
    max_blocks: int = 80,
) -> dict[str, Any]:
    watcher = ChainWatcher(node, since)
    seen: dict[str, list[Any]] = {"broadcast": [], "bumped": [], "waited": []}
    for _ in range(max_blocks):
        actions = exit_step(funding_txid, path, watcher.view(fee_rate_kvb))
        for action in actions:
            if isinstance(action, Done):
                seen["done"] = action.height
                return seen
            if isinstance(action, Broadcast):
                node.rpc.call("sendrawtransaction", action.raw.hex())
                watcher.first_seen.setdefault(action.txid, node.height())
                seen["broadcast"].append(action.txid)
            elif isinstance(action, Bump):
                parent = signed[action.txid]
                child = bh.cpfp_child(
                    node, parent, action.parent_vsize, action.parent_fee, action.target_rate_kvb
                )
                node.rpc.call("sendrawtransaction", child.hex())
                watcher.bumped.add(action.txid)
                seen["bumped"].append(action.txid)
            elif isinstance(action, WaitUntil):
                assert action.height >= node.height() + 1  # never told to wait for a valid tx
                seen["waited"].append((action.txid, action.height))
        node.mine(1)
    raise AssertionError(f"exit did not finish in {max_blocks} blocks: {seen}")


def _signed_factory(
    node: BitcoindProcess, n: int, seed: str, timeout: int
) -> tuple[Factory, Any, tuple[str, int], int, dict[int, SignedNodeTx]]:
    """A funded, confirmed factory signed in one process: (factory, participants, funding
    outpoint, the height before funding, signed txs by node)."""
    bh.ensure_funds(node)
    people = make_factory(n, PARAMS, timeout_height=timeout, seed=seed)
    f = people.factory
    start = node.height()
    outpoint = bh.send_funding(node, f)
    node.mine(1)
    states = dw.initial_states(f.topology)
    signed = sign_in_process(f, outpoint, states, people.lsp_seckey, people.client_seckeys)
    return f, people, outpoint, start, signed


def _client_path(f: Factory, signed: dict[int, SignedNodeTx], client: int) -> list[PathTx]:
    return [
        PathTx.of(signed[n], f.topology.relative_delay(n, 0))
        for n in f.topology.client_path(client)
    ]


def test_a_client_exits_alone_from_its_stored_path_bumping_stuck_txs(
    bitcoind_factory: NodeFactory,
) -> None:
    # Blocks take nothing under 5 sat/vB: the tree's own 2 sat/vB never confirms without a bump.
    node = bitcoind_factory(extra_args=[f"-blockmintxfee={bh.CPFP_BLOCKMINTXFEE}"])
    bh.ensure_funds(node)
    people = make_factory(8, PARAMS, timeout_height=node.height() + 2000, seed="exit-alone")
    f = people.factory
    start = node.height()
    outpoint = bh.send_funding(node, f)
    node.mine(1)
    # The ceremony over bytes; afterwards the LSP is gone: only client 3's own store is used.
    signers = signers_for(people)
    co = Coordinator(f, people.lsp_seckey, outpoint, dw.initial_states(f.topology))
    run_ceremony(co, signers)
    mine = signers[3]
    path = [
        PathTx.of(s, f.topology.relative_delay(s.node, mine.states[s.node]))
        for s in mine.signed_path
    ]
    by_txid = {s.txid: s for s in mine.signed_path}
    seen = _run_exit(
        node, outpoint[0], path, by_txid, fee_rate_kvb=bh.CPFP_PACKAGE_RATE_KVB, since=start
    )
    assert seen["broadcast"] == [p.txid for p in path]  # each once, in order
    assert set(seen["bumped"]) == {p.txid for p in path}  # all stuck at 2 sat/vB, all bumped
    assert any(tx == path[1].txid for tx, _ in seen["waited"])  # the state waited its delay
    leaf = mine.signed_path[-1]
    pos = 3 - f.topology.nodes[leaf.node].lo
    assert bh.utxo(node, leaf.txid, pos) == (f.channels[3][1], f.channels[3][0])


def test_exit_rebroadcasts_what_fell_out_of_the_mempool(bitcoind: BitcoindProcess) -> None:
    f, _, outpoint, start, signed = _signed_factory(
        bitcoind, 4, "exit-rebroadcast", bitcoind.height() + 2000
    )
    path = _client_path(f, signed, 0)
    watcher = ChainWatcher(bitcoind, start)
    [first] = exit_step(outpoint[0], path, watcher.view(2000))
    assert isinstance(first, Broadcast) and first.txid == path[0].txid
    bitcoind.rpc.call("sendrawtransaction", first.raw.hex())
    view = watcher.view(2000)
    assert first.txid in view.in_mempool
    assert exit_step(outpoint[0], path, view) == []  # in the mempool, not stuck: nothing to do
    # Evicted (a node restarted without its mempool): the machine sends it again.
    evicted = ChainView(view.height, view.confirmed, frozenset(), 2000, {})
    again = exit_step(outpoint[0], path, evicted)
    assert again == [Broadcast(first.txid, first.raw)]
    seen = _run_exit(
        bitcoind, outpoint[0], path, {s.txid: s for s in signed.values()}, 2000, since=start
    )
    assert seen["done"] <= bitcoind.height()
    assert seen["bumped"] == []  # 2 sat/vB confirms on a default node: no bump needed


def test_lsp_sweeps_everything_with_a_timeout_leaf_after_T_idempotently(
    bitcoind: BitcoindProcess,
) -> None:
    timeout = bitcoind.height() + 40
    f, people, outpoint, start, signed = _signed_factory(bitcoind, 8, "sweep-all", timeout)
    # Client 0 exits: root kickoff, root state, one kickoff, one leaf go on chain.
    nodes = f.topology.client_path(0)
    path = _client_path(f, signed, 0)
    _run_exit(bitcoind, outpoint[0], path, {s.txid: s for s in signed.values()}, 2000, since=start)
    published = {n: signed[n].txid for n in nodes}
    candidates = policy.timeout_sweep_candidates(f, outpoint, published)
    # The root state's other branch (clients 4..7) is the only unspent timeout-leaf output.
    assert [c.outpoint for c in candidates] == [(signed[1].txid, 1)]
    dest = bh.wallet_script(bitcoind)
    sweeps = [
        policy.timeout_sweep(f, c.outpoint, c.output, c.amount, people.lsp_seckey, dest, 2000)
        for c in candidates
    ]
    bh.mine_to(bitcoind, timeout - 1)
    for raw in sweeps:
        bh.refused(bitcoind, raw, "non-final")
    bitcoind.mine(1)  # tip T: the sweeps go into block T+1
    for raw in sweeps:
        bitcoind.rpc.call("sendrawtransaction", raw.hex())
        bitcoind.rpc.call("sendrawtransaction", raw.hex())  # idempotent: same tx again is fine
    bitcoind.mine(1)
    assert all(bh.utxo(bitcoind, *c.outpoint) is None for c in candidates)
    # Before anything is published, the candidate is the funding output itself.
    assert [c.outpoint for c in policy.timeout_sweep_candidates(f, outpoint, {})] == [outpoint]
