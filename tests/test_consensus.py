"""Factory transactions against Bitcoin Core's consensus rules (embedded kernel chain).

Each test asserts acceptance or rejection by the chain tip, with Core's reject reason.
"""

from __future__ import annotations

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, policy
from superscalar_plugin.engine.ceremony import SignedNodeTx, sign_in_process
from superscalar_plugin.engine.tree import FactoryParams, NodeKind
from superscalar_plugin.simulate import Participants, make_factory

# Small delays keep the chains short (kernel cost grows with chain length).
PARAMS = FactoryParams(states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10)
BIP68 = "bad-txns-nonfinal"  # Core's block-level reason for an unmet nSequence or nLockTime


def _fund(chain: KernelChain, p: Participants) -> tuple[tuple[str, int], int]:
    outpoint = chain.fund(p.factory.funding_output.script_pubkey, p.factory.funding_amount)
    return outpoint, chain.height


def _publish_at_earliest(
    chain: KernelChain, signed: SignedNodeTx, delay: int, parent_height: int
) -> int:
    """Mine `signed` as early as BIP68 allows, checking it is refused one block before."""
    if delay > 0 and chain.height + 1 < parent_height + delay:
        chain.mine_empty(parent_height + delay - 2 - chain.height)
        assert chain.height + 1 == parent_height + delay - 1
        early = chain.mine([signed.raw()])
        assert not early.accepted, f"node {signed.node} confirmed before its nSequence allows"
        assert early.reason == BIP68
        chain.mine_empty(1)
    result = chain.mine([signed.raw()])
    assert result.accepted, (signed.node, result.reason, result.detail)
    assert result.height >= max(parent_height + delay, parent_height + 1)
    return result.height


def test_16_clients_fund_and_every_exit_path_confirms_in_order(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    p = make_factory(16, PARAMS, timeout_height=2000)
    f = p.factory
    outpoint, funding_height = _fund(chain, p)
    assert chain.utxo(*outpoint) == (f.funding_amount, f.funding_output.script_pubkey)
    states = dw.initial_states(f.topology)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    confirmed: dict[int, int] = {}
    for client in range(16):
        steps = policy.plan_exit(
            f, [signed[n] for n in f.topology.client_path(client)], states, funding_height
        )
        parent_height = funding_height
        for step in steps:
            if step.node not in confirmed:
                confirmed[step.node] = _publish_at_earliest(
                    chain, signed[step.node], step.relative_delay, parent_height
                )
            parent_height = confirmed[step.node]
        # The client's channel output now exists with its exact script and amount.
        leaf = signed[f.topology.leaf_of_client[client]]
        pos = client - f.topology.nodes[leaf.node].lo
        assert chain.utxo(leaf.txid, pos) == (f.channels[client][1], f.channels[client][0])
    assert len(confirmed) == len(f.topology.nodes)


def test_newest_state_wins_after_an_odometer_advance(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    p = make_factory(4, PARAMS, timeout_height=2000)
    f, topo = p.factory, p.factory.topology
    outpoint, funding_height = _fund(chain, p)
    old_states = dw.initial_states(topo)
    old = sign_in_process(f, outpoint, old_states, p.lsp_seckey, p.client_seckeys)
    leaf = topo.leaf_of_client[0]
    adv = dw.advance_leaf(topo, old_states, leaf)
    assert adv.bumped == leaf and adv.resigned == (leaf,)
    new = sign_in_process(f, outpoint, adv.states, p.lsp_seckey, p.client_seckeys, adv.resigned)
    assert new[leaf].txid != old[leaf].txid
    # Publish the shared path above the leaf.
    height = funding_height
    for node in topo.path(leaf)[:-1]:
        delay = PARAMS.state_delay(old_states[node]) if topo.nodes[node].kind.is_state else 0
        height = _publish_at_earliest(chain, old[node], delay, height)
    new_delay = PARAMS.state_delay(adv.states[leaf])
    old_delay = PARAMS.state_delay(old_states[leaf])
    assert new_delay < old_delay
    chain.mine_empty(height + new_delay - 1 - chain.height)
    # At the height the new state becomes valid, the superseded one is still locked ...
    stale = chain.mine([old[leaf].raw()])
    assert not stale.accepted and stale.reason == BIP68
    newest = chain.mine([new[leaf].raw()])
    assert newest.accepted and newest.height == height + new_delay
    # ... and once the new one confirmed, the old one can never confirm.
    chain.mine_empty(old_delay)
    late = chain.mine([old[leaf].raw()])
    assert not late.accepted
    assert late.reason == "bad-txns-inputs-missingorspent"


def test_timeout_sweep_fails_at_T_and_succeeds_after(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    timeout = chain.height + 130  # funding needs ~101 blocks of coinbase maturity first
    p = make_factory(4, PARAMS, timeout_height=timeout)
    f = p.factory
    outpoint, _ = _fund(chain, p)
    sweep = policy.timeout_sweep(
        f,
        outpoint,
        f.funding_output,
        f.funding_amount,
        p.lsp_seckey,
        chain.wallet_script_pubkey,
        fee_rate_kvb=2000,
    )
    assert chain.height < timeout - 1
    chain.mine_empty(timeout - 1 - chain.height)
    at_t = chain.mine([sweep])  # would be block T: nLockTime T is final only from block T+1
    assert not at_t.accepted and at_t.reason == "bad-txns-nonfinal"
    chain.mine_empty(1)  # block T
    after = chain.mine([sweep])
    assert after.accepted and after.height == timeout + 1
    assert chain.utxo(*outpoint) is None


def test_timeout_sweep_of_a_published_state_output(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    timeout = chain.height + 150
    p = make_factory(8, PARAMS, timeout_height=timeout)
    f, topo = p.factory, p.factory.topology
    outpoint, height = _fund(chain, p)
    states = dw.initial_states(topo)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    state_node = next(n.index for n in topo.nodes if n.kind is NodeKind.STATE)
    for node in topo.path(state_node):
        delay = PARAMS.state_delay(states[node]) if topo.nodes[node].kind.is_state else 0
        height = _publish_at_earliest(chain, signed[node], delay, height)
    out = f.outputs[state_node][0]
    assert out.taproot is not None and f.timeout_leaf in out.taproot.leaves
    sweep = policy.timeout_sweep(
        f,
        (signed[state_node].txid, 0),
        out.taproot,
        out.amount,
        p.lsp_seckey,
        chain.wallet_script_pubkey,
        2000,
    )
    chain.mine_empty(timeout - chain.height)  # tip at T: the next block is T+1
    chain.mine_empty(0)
    assert chain.height == timeout
    assert chain.mine([sweep]).accepted


def test_a_tampered_signature_anywhere_is_rejected(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    p = make_factory(
        4, FactoryParams(states_per_layer=2, step_blocks=1, ewt_margin=0), timeout_height=2000
    )
    f = p.factory
    outpoint, _ = _fund(chain, p)
    states = (1,) * len(f.topology.nodes)  # every layer in its last state: no relative delays
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    for node in range(len(f.topology.nodes)):  # parents first
        good = signed[node]
        for bit in (0, 255, 511):
            sig = bytearray(good.signature)
            sig[bit // 8] ^= 1 << (bit % 8)
            bad = SignedNodeTx(good.unsigned, bytes(sig))
            result = chain.mine([bad.raw()])
            assert not result.accepted, f"node {node}: tampered signature accepted"
            assert result.reason is not None and "script-verify" in result.reason, result.reason
        assert chain.mine([good.raw()]).accepted
