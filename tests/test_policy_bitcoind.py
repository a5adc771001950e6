"""Factory transactions against Bitcoin Core's relay policy, on a real regtest bitcoind.

tests/test_consensus.py proves the transactions valid in blocks; here every one must also get
into a mainnet-policy mempool (`-acceptnonstdtxn=0`), with exactly the vsize and fee the engine
plans, be fee-bumpable through its P2A anchor as a package, and be refused early with Core's own
reasons (`non-BIP68-final`, `non-final`). These tests never skip: without a bitcoind they fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from superscalar_plugin.chain.bitcoind import BitcoindProcess
from superscalar_plugin.engine import dw, policy
from superscalar_plugin.engine.ceremony import SignedNodeTx, sign_in_process
from superscalar_plugin.engine.tree import Factory, FactoryParams, NodeKind, fee_for
from superscalar_plugin.simulate import Participants, make_factory

import bitcoind_helpers as bh
from bitcoind_fixture import NodeFactory

# Small DW delays (3, 6 blocks) keep the chains short: regtest blocks are cheap, but not free.
PARAMS = FactoryParams(states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10)
N_CLIENTS = 8
FAR_TIMEOUT = 2000  # blocks above the tip: the timeout leaf plays no part unless a test wants it


def _setup(
    node: BitcoindProcess, seed: str, timeout: int | None = None, n: int = N_CLIENTS
) -> tuple[Participants, tuple[str, int], int, dict[int, SignedNodeTx], dw.States]:
    bh.ensure_funds(node)
    height = node.height()
    p = make_factory(n, PARAMS, timeout_height=timeout or height + FAR_TIMEOUT, seed=seed)
    outpoint, funding_height = bh.fund(node, p.factory)
    states = dw.initial_states(p.factory.topology)
    signed = sign_in_process(p.factory, outpoint, states, p.lsp_seckey, p.client_seckeys)
    return p, outpoint, funding_height, signed, states


def _publish_path(
    node: BitcoindProcess,
    f: Factory,
    signed: dict[int, SignedNodeTx],
    states: Sequence[int],
    path: Sequence[int],
    funding_height: int,
) -> int:
    """Publish `path` (root first), each tx as soon as its delay allows; its last block's height."""
    height = funding_height
    for n in path:
        bh.mine_to(node, max(node.height(), height + bh.delay(f, states, n) - 1))
        node.rpc.call("sendrawtransaction", signed[n].raw().hex())
        node.mine(1)
        height = node.height()
        assert bh.confirmed_height(node, signed[n].txid, bh.anchor_vout(signed[n])) == height
    return height


# --- 1. every tx relayable, with the planned vsize and fee -------------------------------------


def test_every_tree_tx_is_accepted_with_the_planned_vsize_and_fee(
    bitcoind: BitcoindProcess,
) -> None:
    node = bitcoind
    p, _, funding_height, signed, states = _setup(node, "policy-tree")
    f, topo = p.factory, p.factory.topology
    assert len(topo.leaves) >= 4 and topo.depth >= 4
    confirmed: dict[int | None, int] = {None: funding_height}
    observed: dict[int, tuple[int, int]] = {}
    for depth in range(1, topo.depth + 1):
        level = [n.index for n in topo.nodes if len(topo.path(n.index)) == depth]
        # The level is valid for the next block once every parent has waited out its delay.
        ready = max(confirmed[topo.nodes[n].parent] + bh.delay(f, states, n) - 1 for n in level)
        bh.mine_to(node, max(node.height(), ready))
        results = bh.test_accept(node, [signed[n].raw() for n in level])
        for n, result in zip(level, results, strict=True):
            assert result["allowed"] is True, (n, topo.nodes[n].kind, result)
            assert result["txid"] == signed[n].txid
            vsize, fee = int(result["vsize"]), bh.sat(result["fees"]["base"])
            observed[n] = (vsize, fee)
            assert (
                vsize
                == f.vsize(n)
                == signed[n].unsigned.tx.with_witnesses([[signed[n].signature]]).vsize
            ), (n, vsize)
            assert fee == f.fee(n) == fee_for(vsize, PARAMS.fee_rate_kvb), (n, fee)
        for n in level:
            node.rpc.call("sendrawtransaction", signed[n].raw().hex())
        node.mine(1)
        for n in level:
            confirmed[n] = node.height()
            # Every output exists on chain with the amount and script the engine planned.
            for vout, spec in enumerate(f.outputs[n]):
                assert bh.utxo(node, signed[n].txid, vout) == (spec.amount, spec.script_pubkey)
    assert len(observed) == len(topo.nodes)

    # What `superscalar plan` reports for a client is what the node observed, step by step.
    steps = policy.plan_exit(f, [signed[n] for n in topo.client_path(0)], states, funding_height)
    print(f"\n8-client path of client 0 ({PARAMS.fee_rate_kvb / 1000:g} sat/vB):")
    for step in steps:
        assert (step.vsize, step.fee) == observed[step.node]
        print(f"  node {step.node:2d} {step.kind:8s} vsize {step.vsize:3d} vB  fee {step.fee} sat")


# --- 2. CPFP through the P2A anchor, as a package ----------------------------------------------


def test_a_too_cheap_tree_tx_confirms_through_a_cpfp_package_on_its_anchor(
    bitcoind_factory: NodeFactory,
) -> None:
    # A node whose blocks take nothing under 5 sat/vB: the tree's 2 sat/vB alone never confirms.
    node = bitcoind_factory(extra_args=[f"-blockmintxfee={bh.CPFP_BLOCKMINTXFEE}"])
    _, _, _, signed, _ = _setup(node, "policy-cpfp")
    root = signed[0]
    [accepted] = bh.test_accept(node, [root.raw()])
    assert accepted["allowed"] is True, accepted
    vsize, fee = int(accepted["vsize"]), bh.sat(accepted["fees"]["base"])
    assert fee * 1000 < vsize * Decimal(bh.CPFP_BLOCKMINTXFEE) * bh.SAT  # below the block minimum

    node.rpc.call("sendrawtransaction", root.raw().hex())
    node.mine(1)
    assert root.txid in node.rpc.call("getrawmempool")  # relayed, but left out of the block
    assert bh.confirmed_height(node, root.txid, bh.anchor_vout(root)) is None

    child = bh.cpfp_child(node, root, vsize, fee)
    package = node.rpc.call("submitpackage", [root.raw().hex(), child.hex()])
    assert package["package_msg"] == "success", package
    decoded = node.rpc.call("decoderawtransaction", child.hex())
    child_txid, child_wtxid = decoded["txid"], decoded["hash"]
    result = package["tx-results"][child_wtxid]
    assert result["txid"] == child_txid and "error" not in result, package
    # Parent and child together pay the package rate, above the block minimum.
    package_fee = fee + bh.sat(result["fees"]["base"])
    package_vsize = vsize + int(result["vsize"])
    assert package_fee == fee_for(package_vsize, bh.CPFP_PACKAGE_RATE_KVB)
    assert package_fee * 1000 >= package_vsize * Decimal(bh.CPFP_BLOCKMINTXFEE) * bh.SAT

    node.mine(1)
    height = node.height()
    assert node.rpc.call("getrawmempool") == []
    assert bh.confirmed_height(node, root.txid, 0) == height  # the parent confirmed ...
    assert bh.confirmed_height(node, child_txid, 0) == height  # ... with its child
    assert bh.utxo(node, root.txid, bh.anchor_vout(root)) is None  # the anchor is spent


# --- 3. a client's unilateral exit, each tx as soon as valid ------------------------------------


def test_one_clients_exit_broadcast_as_soon_as_valid_confirms_at_the_planned_heights(
    bitcoind: BitcoindProcess,
) -> None:
    node = bitcoind
    bh.ensure_funds(node)
    p = make_factory(
        N_CLIENTS, PARAMS, timeout_height=node.height() + FAR_TIMEOUT, seed="policy-exit"
    )
    f, topo = p.factory, p.factory.topology
    client = 5
    # The funding and the root kickoff (no relative lock) can share a block: send both now.
    outpoint = bh.send_funding(node, f)
    funding_height = node.height() + 1
    states = dw.initial_states(topo)
    path = topo.client_path(client)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys, path)
    steps = policy.plan_exit(f, [signed[n] for n in path], states, funding_height)
    assert [s.node for s in steps] == path
    assert any(s.relative_delay > 0 for s in steps)

    for step in steps:
        raw = step.raw
        if step.relative_delay > 0:
            # Its parent confirms in the next block; one block before its earliest, it is refused.
            bh.mine_to(node, step.earliest_height - 2)
            bh.refused(node, raw, "non-BIP68-final")
            node.mine(1)
        assert node.height() == step.earliest_height - 1
        assert node.rpc.call("sendrawtransaction", raw.hex()) == step.txid
    node.mine(1)

    assert bh.confirmed_height(node, *outpoint) is None  # spent by the root
    for step in steps:
        anchor = bh.anchor_vout(signed[step.node])
        assert bh.confirmed_height(node, step.txid, anchor) == step.earliest_height, step.node
    assert node.height() - funding_height == sum(s.relative_delay for s in steps)
    # The client's channel output: exact amount, exact script (CLN's P2WSH 2-of-2).
    leaf = topo.leaf_of_client[client]
    channel_script, channel_sat = f.channels[client]
    assert bh.utxo(node, signed[leaf].txid, client - topo.nodes[leaf].lo) == (
        channel_sat,
        channel_script,
    )


# --- 4. a state before its delay ---------------------------------------------------------------


def test_a_state_before_its_delay_is_refused_non_bip68_final(bitcoind: BitcoindProcess) -> None:
    node = bitcoind
    p, outpoint, funding_height, old, old_states = _setup(node, "policy-bip68")
    f, topo = p.factory, p.factory.topology
    leaf = topo.leaf_of_client[0]
    # An odometer advance: the newer leaf state waits less than the one it replaces.
    adv = dw.advance_leaf(topo, old_states, leaf)
    assert adv.bumped == leaf
    new = sign_in_process(f, outpoint, adv.states, p.lsp_seckey, p.client_seckeys, adv.resigned)
    new_delay, old_delay = (
        PARAMS.state_delay(adv.states[leaf]),
        PARAMS.state_delay(old_states[leaf]),
    )
    assert 0 < new_delay < old_delay

    parent_height = _publish_path(node, f, old, old_states, topo.path(leaf)[:-1], funding_height)
    # While the parent has fewer confirmations than the delay, both states are refused.
    while node.height() < parent_height + new_delay - 1:
        bh.refused(node, new[leaf].raw(), "non-BIP68-final")
        bh.refused(node, old[leaf].raw(), "non-BIP68-final")
        node.mine(1)
    # From the block its delay allows, the newest state is accepted; the older still waits.
    bh.refused(node, old[leaf].raw(), "non-BIP68-final")
    assert node.rpc.call("sendrawtransaction", new[leaf].raw().hex()) == new[leaf].txid
    node.mine(1)
    assert bh.confirmed_height(node, new[leaf].txid, 0) == parent_height + new_delay
    # Once the newest confirmed, the superseded state conflicts with it forever.
    bh.mine_to(node, parent_height + old_delay)
    [late] = bh.test_accept(node, [old[leaf].raw()])
    assert late["allowed"] is False
    assert late["reject-reason"] == "missing-inputs", late


# --- 5. the LSP's timeout sweeps ---------------------------------------------------------------


def test_timeout_sweeps_are_refused_before_T_and_confirm_after(bitcoind: BitcoindProcess) -> None:
    node = bitcoind
    bh.ensure_funds(node)
    timeout = node.height() + 40
    # Factory A stays unpublished: the LSP sweeps its funding output. Factory B publishes down to
    # an interior DW state: the LSP sweeps that state's branch outputs (timeout leaf).
    a, a_outpoint, _, _, _ = _setup(node, "policy-sweep-a", timeout=timeout)
    b, _, b_height, b_signed, b_states = _setup(node, "policy-sweep-b", timeout=timeout)
    fb, topo = b.factory, b.factory.topology
    state_node = next(n.index for n in topo.nodes if n.kind is NodeKind.STATE)
    _publish_path(node, fb, b_signed, b_states, topo.path(state_node), b_height)
    assert node.height() < timeout - 1

    dest = bh.wallet_script(node)
    rate = PARAMS.fee_rate_kvb
    sweeps = [
        policy.timeout_sweep(
            a.factory,
            a_outpoint,
            a.factory.funding_output,
            a.factory.funding_amount,
            a.lsp_seckey,
            dest,
            rate,
        )
    ]
    for vout, out in enumerate(fb.outputs[state_node]):
        if out.taproot is None:
            continue  # the anchor
        assert fb.timeout_leaf in out.taproot.leaves
        sweeps.append(
            policy.timeout_sweep(
                fb,
                (b_signed[state_node].txid, vout),
                out.taproot,
                out.amount,
                b.lsp_seckey,
                dest,
                rate,
            )
        )
    assert len(sweeps) >= 3

    # nLockTime = T: not final for block T, so refused while the tip is below T.
    bh.mine_to(node, timeout - 1)
    for sweep in sweeps:
        bh.refused(node, sweep, "non-final")
    node.mine(1)  # block T: the next block (T+1) may hold them
    results = bh.test_accept(node, sweeps)
    for result in results:
        assert result["allowed"] is True, result
        # The sweep's own size estimate is what the node measures.
        assert bh.sat(result["fees"]["base"]) == fee_for(int(result["vsize"]), rate), result
    txids = [node.rpc.call("sendrawtransaction", s.hex()) for s in sweeps]
    node.mine(1)
    assert node.height() == timeout + 1
    for txid in txids:
        assert bh.confirmed_height(node, txid, 0) == timeout + 1
    assert bh.utxo(node, *a_outpoint) is None
