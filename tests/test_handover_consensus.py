"""Handing over an old factory, against Bitcoin Core's consensus rules (embedded kernel chain).

With every key the LSP's key-path spend of the funding output confirms before the timeout; with
some keys, publishing exactly the plan's nodes and then the plan's key-path sweeps confirms, and
the outputs of the clients who did not hand over stay out of the LSP's reach: the engine refuses
to sign them, and a signature made without their keys is rejected by consensus.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, musig2
from superscalar_plugin.engine.ceremony import SignedNodeTx, sign_in_process, sign_together
from superscalar_plugin.engine.errors import HandoverError, MissingHandedKeys
from superscalar_plugin.engine.handover import (
    UnrollPlan,
    keypath_spend,
    keypath_sweep,
    keypath_tx,
    partial_unroll,
    spend_handed,
)
from superscalar_plugin.engine.taproot import TaprootOutput, taproot_sighash
from superscalar_plugin.engine.tree import FactoryKeys, FactoryParams, OutputKind
from superscalar_plugin.engine.tx import Tx
from superscalar_plugin.simulate import Participants, make_factory

# Small delays keep the chains short (kernel cost grows with chain length).
# Node numbers below are for two leaves under one kickoff (no state over them).
PARAMS = FactoryParams(
    states_per_layer=3, step_blocks=3, ewt_margin=2, stock_delay=10, state_over_leaves=False
)
TIMEOUT = 2000
BAD_SIG = "script-verify-flag-failed (Invalid Schnorr signature)"
RATE = 2000


def _fund(chain: KernelChain, p: Participants) -> tuple[tuple[str, int], int]:
    f = p.factory
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    return outpoint, chain.height


def _forged(
    keys: FactoryKeys,
    output: TaprootOutput,
    outpoint: tuple[str, int],
    amount: int,
    signers: Mapping[int | None, bytes],
    dest: bytes,
    *,
    tweak: bool = True,
) -> bytes:
    """What an LSP without every key could try: a MuSig2 signature by the keys it has (client ->
    secret, None for the LSP), tweaked like the output (or not), on the same spend."""
    pubkeys = {who: keys.lsp_pubkey if who is None else keys.client_pubkeys[who] for who in signers}
    keyagg = musig2.KeyAggContext.key_agg(musig2.key_sort(list(pubkeys.values())))
    if tweak:
        keyagg = keyagg.apply_tweak(output.tweak, is_xonly=True)
    tx = keypath_tx(outpoint, amount, dest, RATE)
    digest = taproot_sighash(tx, 0, [(amount, output.script_pubkey)])
    triples = [(who, pubkeys[who], sk) for who, sk in signers.items()]
    sig = sign_together(keyagg, digest, triples, "forgery")
    return tx.with_witnesses([[sig]]).serialize()


def _txid(raw: bytes) -> str:
    return Tx.deserialize(raw).txid


def test_keypath_spend_of_the_funding_output_confirms_before_the_timeout(
    kernel_chain: KernelChain,
) -> None:
    chain = kernel_chain
    p = make_factory(8, PARAMS, timeout_height=TIMEOUT)
    f = p.factory
    outpoint, _ = _fund(chain, p)
    dest = chain.wallet_script_pubkey
    everyone = dict(enumerate(p.client_seckeys))
    height = chain.height
    # Without client 7's key: the aggregate of the other seven and L is another key. Tweaked
    # like the output or not, consensus rejects the signature.
    seven: dict[int | None, bytes] = {c: sk for c, sk in everyone.items() if c != 7}
    seven[None] = p.lsp_seckey
    amount = f.funding_amount
    for tweak in (True, False):
        forged = _forged(f, f.funding_output, outpoint, amount, seven, dest, tweak=tweak)
        result = chain.mine([forged])
        assert not result.accepted and result.reason is not None
        assert result.reason.endswith(BAD_SIG), result.reason
    # Every client's key, but the untweaked aggregate: still not the output key.
    all_and_lsp: dict[int | None, bytes] = {**everyone, None: p.lsp_seckey}
    untweaked = _forged(f, f.funding_output, outpoint, amount, all_and_lsp, dest, tweak=False)
    result = chain.mine([untweaked])
    assert not result.accepted and result.reason is not None and result.reason.endswith(BAD_SIG)
    with pytest.raises(MissingHandedKeys, match=r"client 7$"):
        keypath_spend(
            f, outpoint, amount, {c: everyone[c] for c in range(7)}, p.lsp_seckey, dest, RATE
        )
    assert chain.height == height  # nothing of the above made it into a block

    raw = keypath_spend(f, outpoint, amount, everyone, p.lsp_seckey, dest, RATE)
    result = chain.mine([raw])
    assert result.accepted, (result.reason, result.detail)
    assert result.height < TIMEOUT - f.topology.ewt  # long before T, no tree tx, no waiting
    assert chain.utxo(*outpoint) is None
    tx = Tx.deserialize(raw)
    assert chain.utxo(tx.txid, 0) == (tx.outputs[0].amount, dest)
    assert amount - tx.outputs[0].amount == -(-tx.vsize * RATE // 1000)


def _publish_plan(
    chain: KernelChain,
    plan: UnrollPlan,
    signed: Mapping[int, SignedNodeTx],
    funding_height: int,
    parent_of: Mapping[int, int | None],
) -> dict[int, int]:
    """Mine the plan's nodes, parents first, each as soon as BIP68 lets it (and refused one
    block before, for a node with a relative delay). Returns node -> height."""
    heights: dict[int, int] = {}
    for step in plan.publish:
        parent = parent_of[step.node]
        parent_height = funding_height if parent is None else heights[parent]
        ready = parent_height + step.relative_delay
        if step.relative_delay and chain.height + 1 < ready:
            chain.mine_empty(ready - 2 - chain.height)
            early = chain.mine([signed[step.node].raw()])
            assert not early.accepted and early.reason == "bad-txns-nonfinal"
            chain.mine_empty(1)
        result = chain.mine([signed[step.node].raw()])
        assert result.accepted, (step.node, result.reason, result.detail)
        heights[step.node] = result.height
    return heights


def test_partial_handover_publishes_the_plan_and_sweeps_it(kernel_chain: KernelChain) -> None:
    chain = kernel_chain
    p = make_factory(8, PARAMS, timeout_height=TIMEOUT)
    f, topo = p.factory, p.factory.topology
    outpoint, funding_height = _fund(chain, p)
    # Some updates first, so that the latest states are not the initial ones: leaf 7 moved until
    # the state node above it (node 1) moved too.
    states = dw.initial_states(topo)
    while states[1] == 0:
        states = dw.advance_leaf(topo, states, 7).states
    states = dw.advance_leaf(topo, states, 7).states  # and once more: leaf 7 in state 1
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    handed = {0, 1, 2, 3, 4, 5}
    secrets = {c: p.client_seckeys[c] for c in handed}
    plan = partial_unroll(f, handed, states)
    assert [s.node for s in plan.publish] == [0, 1, 5]
    assert [(o.node, o.vout) for o in plan.spend] == [(1, 0), (5, 0)]
    assert plan.due == (7,)
    assert [s.state for s in plan.publish] == [0, 1, 0]

    parents = {n.index: n.parent for n in topo.nodes}
    heights = _publish_plan(chain, plan, signed, funding_height, parents)
    assert chain.height < TIMEOUT
    txids = {n: signed[n].txid for n in heights}
    dest = chain.wallet_script_pubkey
    sweeps = [
        spend_handed(f, o, o.outpoint(outpoint, txids), secrets, p.lsp_seckey, dest, RATE)
        for o in plan.spend
    ]
    # The outputs of clients 6 and 7 are not the LSP's: the engine will not sign them ...
    with pytest.raises(MissingHandedKeys, match="clients 6-7") as info:
        keypath_sweep(
            f, 5, 1, (txids[5], 1), f.outputs[5][1].amount, secrets, p.lsp_seckey, dest, RATE
        )
    assert info.value.clients == (6, 7)
    # ... and a signature by the keys the LSP holds, tweaked like that output, is rejected.
    held: dict[int | None, bytes] = {**secrets, None: p.lsp_seckey}
    out = f.outputs[5][1]
    assert out.taproot is not None
    forged = _forged(f, out.taproot, (txids[5], 1), out.amount, held, dest)
    result = chain.mine([forged])
    assert not result.accepted and result.reason is not None and result.reason.endswith(BAD_SIG)

    result = chain.mine(sweeps)
    assert result.accepted, (result.reason, result.detail)
    for o, raw in zip(plan.spend, sweeps, strict=True):
        assert chain.utxo(*o.outpoint(outpoint, txids)) is None
        assert chain.utxo(_txid(raw), 0) == (Tx.deserialize(raw).outputs[0].amount, dest)
    # Node 0 (a kickoff) and node 1 were never spent around: only the plan's txs are on chain.
    for n in (2, 3, 4, 6):
        assert chain.utxo(signed[n].txid, 0) is None

    # The due leaf's latest state still confirms: clients 6 and 7 get their channels.
    delay = topo.relative_delay(7, states[7])
    chain.mine_empty(max(0, heights[5] + delay - 1 - chain.height))
    result = chain.mine([signed[7].raw()])
    assert result.accepted, (result.reason, result.detail)
    for pos, client in enumerate((6, 7)):
        assert chain.utxo(signed[7].txid, pos) == (f.channels[client][1], f.channels[client][0])
        with pytest.raises(HandoverError, match=f"client {client}'s channel"):
            keypath_sweep(
                f, 7, pos, (signed[7].txid, pos), f.channels[client][1],
                {**secrets, 6: p.client_seckeys[6], 7: p.client_seckeys[7]},
                p.lsp_seckey, dest, RATE,
            )  # fmt: skip
    with pytest.raises(MissingHandedKeys, match="clients 6-7"):
        keypath_sweep(
            f, 7, 2, (signed[7].txid, 2), PARAMS.stock_sat, secrets, p.lsp_seckey, dest, RATE
        )


def test_stock_of_a_published_leaf_goes_by_key_path(kernel_chain: KernelChain) -> None:
    """A leaf on chain (someone exited) whose clients then handed over: its stock is taken by key
    path at once, long before the stock's own delay leaf would let L take it alone."""
    chain = kernel_chain
    p = make_factory(4, PARAMS, timeout_height=TIMEOUT)
    f, topo = p.factory, p.factory.topology
    outpoint, funding_height = _fund(chain, p)
    states = dw.initial_states(topo)
    signed = sign_in_process(f, outpoint, states, p.lsp_seckey, p.client_seckeys)
    # Client 0 exits unilaterally: the kickoff, then its leaf after the leaf's delay.
    assert chain.mine([signed[0].raw()]).accepted
    kickoff_height = chain.height
    assert kickoff_height == funding_height + 1
    leaf_delay = topo.relative_delay(1, states[1])
    chain.mine_empty(kickoff_height + leaf_delay - 1 - chain.height)
    result = chain.mine([signed[1].raw()])
    assert result.accepted, (result.reason, result.detail)
    leaf_height = result.height

    plan = partial_unroll(f, {0, 1}, states, published={0, 1})
    assert plan.publish == () and plan.due == (2,)
    [stock] = plan.spend
    assert (stock.node, stock.vout, stock.kind) == (1, 2, OutputKind.STOCK)
    secrets = {0: p.client_seckeys[0], 1: p.client_seckeys[1]}
    dest = chain.wallet_script_pubkey
    raw = spend_handed(
        f, stock, stock.outpoint(outpoint, {1: signed[1].txid}), secrets, p.lsp_seckey, dest, RATE
    )
    result = chain.mine([raw])
    assert result.accepted, (result.reason, result.detail)
    assert result.height < leaf_height + PARAMS.stock_delay
    assert chain.utxo(signed[1].txid, 2) is None
