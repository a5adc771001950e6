"""The driver: for a seed, a schedule of honest flows with hostile actions interleaved, played on one
harness network, the invariant checked for every honest client after every step. A violation is
reported with the seed and the trace, so `run_seed(seed)` replays it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import actions, flows
from .chainview import ChainView
from .invariant import Violation, check
from .world import World
from harness.network import SUPERSCALAR_PLUGIN, Network

CEREMONY_TIMEOUT = 2
SETTLE_SECONDS = 1.5  # how long a violation must persist to count (moves settle meanwhile)


@dataclass(frozen=True)
class Honest:
    """An honest flow as a schedule step."""

    name: str
    run: Callable[[World], str]

    def describe(self) -> str:
        return self.name


Step = Honest | actions.Action


@dataclass(frozen=True)
class Schedule:
    seed: int
    n_clients: int
    with_co: bool
    steps: tuple[Step, ...]


@dataclass
class Result:
    seed: int
    trace: list[str] = field(default_factory=list)
    violations: list[tuple[int, Violation]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kinds(self) -> set[str]:
        return {v.kind for _, v in self.violations}

    def report(self) -> str:
        lines = [f"seed {self.seed}: {len(self.violations)} violation(s), {self.seconds:.1f}s"]
        lines += [f"  {i:2d}. {t}" for i, t in enumerate(self.trace)]
        lines += [f"  !! after step {i}: {v.describe()}" for i, v in self.violations]
        lines += [f"  harness: {f}" for f in self.findings]
        return "\n".join(lines)


def _honest_program(rng: random.Random, honest: int) -> list[Step]:
    steps: list[Step] = [Honest("create", flows.create), Honest("confirm", flows.confirm)]
    steps += [_wrap(flows.Pay(i)) for i in range(honest)]
    middle = [flows.Sell, flows.Buy, flows.Pay]
    for _ in range(rng.randint(1, 3)):
        steps.append(_wrap(rng.choice(middle)(rng.randrange(honest))))
    if rng.random() < 0.6:
        steps.append(Honest("factory-migrate", flows.migrate))
        steps += [_wrap(rng.choice(middle)(rng.randrange(honest)))]
    if rng.random() < 0.6:
        steps.append(Honest("factory-close", flows.close))
    return steps


def _wrap(flow: flows.Pay | flows.Sell | flows.Buy) -> Honest:
    return Honest(flow.describe(), flow)


def schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    with_co = rng.random() < 0.4
    n_clients = 3 if with_co else rng.choice((2, 2, 3))
    honest = n_clients - (1 if with_co else 0)
    steps: list[Step] = []
    for step in _honest_program(rng, honest):
        while rng.random() < 0.45:
            steps.append(actions.draw(rng, with_co, n_clients))
        steps.append(step)
    return Schedule(seed, n_clients, with_co, tuple(steps))


def _network(base: Path, sched: Schedule) -> World:
    net = Network(base, plugin=SUPERSCALAR_PLUGIN, timeout=30)
    opts = {"superscalar-ceremony-timeout": CEREMONY_TIMEOUT}
    lsp = net.add_node("lsp", options=opts)
    names = [f"c{i}" for i in range(sched.n_clients)]
    clients = net.add_nodes(names, options={**opts, "superscalar-accept-from": lsp.node_id})
    for c in clients:
        net.connect(lsp, c)
    co = clients[-1] if sched.with_co else None
    if co is not None:
        for c in clients[:-1]:
            net.connect(co, c)
    return World(net, lsp, clients, co)


def _check(world: World) -> list[Violation]:
    view = ChainView(world.net.chain)
    found = [v for c in world.honest for v in check(c, world.ledgers[c.name], view)]
    if found:  # a move or payment may still be settling: look again once
        time.sleep(SETTLE_SECONDS)
        found = [v for c in world.honest for v in check(c, world.ledgers[c.name], view)]
    return found


def _play(world: World, step: Step) -> str:
    if isinstance(step, Honest):
        outcome = step.run(world)
        world.end_step()
        return f"{step.describe()} -> {outcome}"
    step.apply(world)
    return f"HOSTILE {step.describe()}"


def run_seed(seed: int, base: Path) -> Result:
    return run_schedule(schedule(seed), base)


def run_schedule(sched: Schedule, base: Path) -> Result:
    seed = sched.seed
    result = Result(seed)
    start = time.monotonic()
    world = _network(base, sched)
    co = f", c{sched.n_clients - 1} hostile" if sched.with_co else ""
    result.trace.append(f"{sched.n_clients} clients{co}")
    seen: set[tuple[str, str]] = set()
    try:
        for i, step in enumerate(sched.steps, start=1):
            result.trace.append(_play(world, step))
            result.trace += [f"     ({n})" for n in world.notes]
            world.notes.clear()
            for v in _check(world):
                if (v.client, v.kind) not in seen:
                    seen.add((v.client, v.kind))
                    result.violations.append((i, v))
    finally:
        world.net.stop()
        result.findings = [f"{type(e).__name__}: {e}"[:300] for e in world.net.take_errors()]
        result.seconds = time.monotonic() - start
    return result
