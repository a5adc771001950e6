"""`superscalar demo`: a factory's whole life on an embedded regtest chain.

Every transaction is judged by Bitcoin Core's consensus engine (py-bitcoinkernel): a step that the
chain refuses is reported with Core's reason, and the demo fails if anything unexpected happens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from .engine import dw, policy
from .engine.ceremony import Coordinator, SignedNodeTx, Signer, run_ceremony
from .engine.errors import ChainError
from .engine.tree import Factory, FactoryParams, NodeKind
from .engine.tx import Tx
from .engine.update import signing_phases
from .simulate import Participants, agreed_terms, make_factory

if TYPE_CHECKING:
    from .chain.kernel import KernelChain  # optional dependency: imported when the demo runs


def draw_tree(f: Factory, states: dw.States, highlight: Iterable[int] = ()) -> list[str]:
    """The tree as indented text, one line per tx, with its state and outputs."""
    topo = f.topology
    marked = set(highlight)
    lines = [
        f"funding output {f.funding_amount} sat: MuSig2(all {f.n_clients} clients + LSP)"
        f" | LSP after block {f.timeout_height}"
    ]

    def label(n: int) -> str:
        node = topo.nodes[n]
        text = f"{node.kind.value} #{n}"
        if node.kind.is_state:
            text += f" [state {states[n]}, nSequence {f.params.state_delay(states[n])}]"
        if node.kind is NodeKind.LEAF:
            chans = ", ".join(f"c{c}:{f.channels[c][1]}" for c in range(node.lo, node.hi))
            text += f" -> channels {chans}; stock {f.params.stock_sat}"
        else:
            text += f" clients {node.lo}..{node.hi - 1}"
        return text + ("   <== exit path" if n in marked else "")

    def walk(n: int, prefix: str, last: bool) -> None:
        lines.append(prefix + ("└─ " if last else "├─ ") + label(n))
        children = topo.nodes[n].children
        for i, child in enumerate(children):
            walk(child, prefix + ("   " if last else "│  "), i == len(children) - 1)

    walk(0, "", True)
    return lines


def run_demo(n_clients: int, params: FactoryParams, channel_sat: int, advances: int) -> None:
    from .chain.kernel import KernelChain

    with KernelChain() as chain:
        _run(chain, n_clients, params, channel_sat, advances)


def _step(title: str) -> None:
    click.echo()
    click.secho(f"== {title}", bold=True)


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise ChainError(f"demo: unexpected outcome: {what}")


@dataclass
class _Demo:
    """What the steps share: the chain, the factory, its signers and what they signed."""

    chain: KernelChain
    params: FactoryParams
    people: Participants
    timeout: int
    outpoint: tuple[str, int]
    funding_tx: bytes
    signers: dict[int, Signer]
    states: dw.States
    history: list[dict[int, SignedNodeTx]] = field(default_factory=list)
    bumped: int | None = None
    funding_height: int = 0

    @property
    def factory(self) -> Factory:
        return self.people.factory


EXITING = 0  # the client whose exit the demo shows


def _run(
    chain: object, n_clients: int, params: FactoryParams, channel_sat: int, advances: int
) -> None:
    from .chain.kernel import KernelChain

    assert isinstance(chain, KernelChain)
    demo = _create_and_sign(chain, n_clients, params, channel_sat, advances)
    _fund(demo)
    advances = _advance(demo, advances)
    steps = _exit_alone(demo)
    _outdated_state_loses(demo)
    _timeout_sweep(demo)
    _summary(demo, steps, advances)


def _create_and_sign(
    chain: KernelChain, n_clients: int, params: FactoryParams, channel_sat: int, advances: int
) -> _Demo:
    _step("1. Create the factory and sign it (two MuSig2 rounds, every client a separate signer)")
    chain.mine_empty(1)
    # Timeout leaves room for the funding (~100 blocks of coinbase maturity), the DW delays and
    # the exit; keep it close so the sweep can be shown without a long chain.
    probe = make_factory(n_clients, params, timeout_height=10_000, channel_sat=channel_sat).factory
    exit_blocks = probe.topology.ewt + 2 * probe.topology.depth + params.max_state_delay * advances
    timeout = 101 + 5 + exit_blocks + 10
    people = make_factory(n_clients, params, timeout_height=timeout, channel_sat=channel_sat)
    f = people.factory
    topo = f.topology
    click.echo(
        f"{n_clients} clients, {len(topo.nodes)} off-chain txs, EWT {topo.ewt} blocks,"
        f" timeout at block {timeout}, funding {f.funding_amount} sat"
    )
    funding_tx = chain.build_funding_tx([(f.funding_output.script_pubkey, f.funding_amount)])
    outpoint = (Tx.deserialize(funding_tx).txid, 0)
    states = dw.initial_states(topo)
    signers = {c: Signer(sk, agreed_terms(f, c)) for c, sk in enumerate(people.client_seckeys)}
    coordinator = Coordinator(f, people.lsp_seckey, outpoint, states)
    sent = _sign_with_progress(coordinator, signers)
    signed = dict(coordinator.signed)
    _expect(len(signed) == len(topo.nodes), "every tree tx signed")
    click.echo(
        f"all {len(signed)} txs signed; {sent} bytes sent to clients; every client stored"
        f" its own exit path ({len(signers[0].signed_path)} txs for client 0)"
    )
    return _Demo(chain, params, people, timeout, outpoint, funding_tx, signers, states, [signed])


def _sign_with_progress(coordinator: Coordinator, signers: dict[int, Signer]) -> int:
    """Run the byte-message ceremony round by round; the bytes sent to clients."""
    with click.progressbar(length=3, label="ceremony rounds") as bar:
        outbox = coordinator.start()
        sent = sum(len(m) for m in outbox.values())
        bar.update(1)
        while outbox:
            replies = {c: r for c, m in outbox.items() if (r := signers[c].receive(m)) is not None}
            outbox = {}
            for c, reply in replies.items():
                outbox.update(coordinator.receive(c, reply))
            sent += sum(len(m) for m in outbox.values())
            bar.update(1)
    return sent


def _fund(demo: _Demo) -> None:
    _step("2. Fund the factory and confirm it")
    result = demo.chain.mine([demo.funding_tx])
    _expect(result.accepted, f"funding confirms ({result.reason})")
    demo.funding_height = result.height
    click.echo(f"funding {demo.outpoint[0]}:0 confirmed at block {demo.funding_height}")


def _advance(demo: _Demo, advances: int) -> int:
    """Advance the exiting client's leaf through the DW odometer; the number of updates made."""
    f, topo = demo.factory, demo.factory.topology
    leaf = topo.leaf_of_client[EXITING]
    if advances > topo.total_states - 1:
        click.echo(f"(only {topo.total_states - 1} updates fit this shape's DW layers)")
        advances = topo.total_states - 1
    _step(f"3. Advance client {EXITING}'s leaf {advances} times (DW odometer)")
    for i in range(advances):
        adv = dw.advance_leaf(topo, demo.states, leaf)
        clients = f.signers(adv.bumped)
        for c in clients:  # every client of the subtree agrees to this update itself
            demo.signers[c].agree_update(demo.signers[c].terms, node=adv.bumped)
        signed: dict[int, SignedNodeTx] = {}
        for nodes in signing_phases(f, adv.bumped):  # bottom-up: below the bumped node, then it
            co = Coordinator(f, demo.people.lsp_seckey, demo.outpoint, adv.states, nodes)
            run_ceremony(co, {c: demo.signers[c] for c in co.clients})
            signed.update(co.signed)
        demo.states, demo.bumped = adv.states, adv.bumped
        demo.history.append({**demo.history[-1], **signed})
        digits = "/".join(
            str(demo.states[n]) for n in topo.path(leaf) if topo.nodes[n].kind.is_state
        )
        click.echo(
            f"update {i + 1}: bumped {topo.nodes[adv.bumped].kind.value} #{adv.bumped},"
            f" re-signed {len(adv.resigned)} txs with {len(clients)} clients; odometer {digits}"
        )
    for line in draw_tree(f, demo.states, topo.path(leaf)):
        click.echo("  " + line)
    return advances


def _stale(demo: _Demo) -> SignedNodeTx | None:
    """The last update's superseded version of the node it bumped: same input, longer delay."""
    return demo.history[-2][demo.bumped] if demo.bumped is not None else None


def _exit_alone(demo: _Demo) -> list[policy.ExitStep]:
    _step(f"4. Client {EXITING} exits alone with what it stored")
    f, chain, signer = demo.factory, demo.chain, demo.signers[EXITING]
    steps = policy.plan_exit(f, signer.signed_path, signer.states, demo.funding_height)
    stale = _stale(demo)
    parent_height = demo.funding_height
    for step in steps:
        valid_from = parent_height + step.relative_delay
        if step.relative_delay and chain.height + 1 < valid_from:
            chain.mine_empty(valid_from - 2 - chain.height)
            _refused_before_its_delay(chain, step, stale)
        result = chain.mine([step.raw])
        _expect(result.accepted, f"exit step #{step.node} ({result.reason} {result.detail})")
        parent_height = result.height
        click.echo(
            f"  {step.kind.value} #{step.node} {step.txid[:16]}.. confirmed at block"
            f" {result.height} ({step.vsize} vB, fee {step.fee} sat)"
        )
    topo = f.topology
    pos = EXITING - topo.nodes[topo.leaf_of_client[EXITING]].lo
    leaf_txid = steps[-1].txid
    _expect(
        chain.utxo(leaf_txid, pos) == (f.channels[EXITING][1], f.channels[EXITING][0]),
        "the channel output exists",
    )
    click.echo(
        f"  channel output {leaf_txid}:{pos} of {f.channels[EXITING][1]} sat is on chain:"
        " lightningd's commitment can now confirm"
    )
    return steps


def _refused_before_its_delay(
    chain: KernelChain, step: policy.ExitStep, stale: SignedNodeTx | None
) -> None:
    """One block early, the state tx is refused; so is the superseded one it replaces."""
    early = chain.mine([step.raw])
    _expect(not early.accepted, "a state tx confirming before its delay")
    click.echo(
        f"  {step.kind.value} #{step.node} at block {early.height + 1}: rejected"
        f" ({early.reason}), needs {step.relative_delay} blocks after its parent"
    )
    chain.mine_empty(1)
    if stale is not None and step.node == stale.node:
        old = chain.mine([stale.raw()])
        _expect(not old.accepted, "the superseded state still locked")
        click.echo(
            f"  superseded {step.kind.value} #{step.node} at block {old.height + 1}:"
            f" rejected ({old.reason}): its delay is longer, the newest state"
            " goes first"
        )


def _outdated_state_loses(demo: _Demo) -> None:
    stale = _stale(demo)
    if stale is None:
        return
    _step("5. The outdated state never confirms: the newer one already spent its input")
    demo.chain.mine_empty(demo.params.max_state_delay)
    old = demo.chain.mine([stale.raw()])
    _expect(not old.accepted, "outdated state rejected")
    click.echo(
        f"  superseded {demo.factory.topology.nodes[stale.node].kind.value} #{stale.node}, now"
        f" past its delay: rejected ({old.reason})"
    )


def _timeout_sweep(demo: _Demo) -> None:
    _step("6. The LSP's timeout sweep")
    f, chain, timeout = demo.factory, demo.chain, demo.timeout
    path = f.topology.path(f.topology.leaf_of_client[EXITING])
    published = {n: demo.history[-1][n].txid for n in path}
    candidates = policy.timeout_sweep_candidates(f, demo.outpoint, published)
    if not candidates:  # e.g. one leaf: every output on chain belongs to the exit
        click.echo("  nothing is left on a timeout path: the exit took every published output")
        return
    sweeps = [
        policy.timeout_sweep(
            f,
            c.outpoint,
            c.output,
            c.amount,
            demo.people.lsp_seckey,
            chain.wallet_script_pubkey,
            demo.params.fee_rate_kvb,
        )
        for c in candidates
    ]
    if chain.height < timeout - 1:
        chain.mine_empty(timeout - 1 - chain.height)
    early = chain.mine(sweeps)
    _expect(not early.accepted, "sweep before the timeout")
    click.echo(
        f"  sweep of {len(sweeps)} output(s) the others' branches left on chain, at block"
        f" {early.height + 1}: rejected ({early.reason})"
    )
    chain.mine_empty(1)
    late = chain.mine(sweeps)
    _expect(late.accepted, f"sweep after the timeout ({late.reason})")
    total = sum(c.amount for c in candidates)
    click.echo(
        f"  at block {late.height} (after T={timeout}): accepted, {total} sat back to the LSP"
    )


def _summary(demo: _Demo, steps: list[policy.ExitStep], advances: int) -> None:
    _step("Summary")
    topo = demo.factory.topology
    click.echo(
        f"  clients: {demo.factory.n_clients}; off-chain txs: {len(topo.nodes)};"
        f" EWT: {topo.ewt} blocks"
    )
    click.echo(
        f"  client {EXITING}'s exit: {len(steps)} txs, {sum(s.vsize for s in steps)} vB,"
        f" from block {demo.funding_height} to {steps[-1].earliest_height} at the earliest"
    )
    click.echo(
        f"  DW updates: {advances}; chain height: {demo.chain.height}; every step checked by"
        " Bitcoin Core's consensus engine"
    )
