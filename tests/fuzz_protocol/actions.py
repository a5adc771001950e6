"""The catalogue of hostile actions: small typed values, each with `describe()` for the trace and
`apply(world)` for the driver. Drawn from a seed by `draw`; what they do to the world is in
`world.World` (messages, chain, nodes), so this module only says what each action is.

Who acts: the LSP ("lsp") or the hostile co-client ("co", when the seed has one). Message filters
name payloads by `world.label` ("Move", "SaleStep.SALE_SIG", "Text.ABORT", ...)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .world import World

LSP_SENDS = (
    "Propose",
    "Ceremony",
    "Funded",
    "Move",
    "Offer",
    "SaleProposal",
    "Quote",
    "SaleStep.AGG_NONCES",
    "SaleStep.BURN_SIG",
    "SaleStep.SALE_SIG",
)
CO_SENDS = (
    "Accept",
    "Ceremony",
    "Stored",
    "SaleStep.NONCES",
    "SaleStep.BURN_PSIG",
    "SaleStep.SALE_PSIG",
    "SaleStep.DONE",
    "Key",
)
FEE_PPMS = (10_000, 1_000_000, 1_000_000_000)


class Action(Protocol):
    def describe(self) -> str: ...

    def apply(self, world: World) -> None: ...


@dataclass(frozen=True)
class Withhold:
    """`who` drops every message of this kind it would send during the next honest step."""

    who: str
    kind: str

    def describe(self) -> str:
        return f"{self.who} withholds {self.kind} in the next step"

    def apply(self, world: World) -> None:
        world.arm_filter(self.who, self.kind, hold=False)


@dataclass(frozen=True)
class Reorder:
    """`who` holds back every message of this kind during the next honest step and sends them
    after it (in reverse order): late, out of order."""

    who: str
    kind: str

    def describe(self) -> str:
        return f"{self.who} delays {self.kind} to after the next step (reversed)"

    def apply(self, world: World) -> None:
        world.arm_filter(self.who, self.kind, hold=True)


@dataclass(frozen=True)
class Replay:
    """`who` sends again one message it sent before (the `pick` fraction of its history)."""

    who: str
    pick: float

    def describe(self) -> str:
        return f"{self.who} replays its message #{self.pick:.2f} of history"

    def apply(self, world: World) -> None:
        world.replay(self.who, self.pick)


@dataclass(frozen=True)
class SetFee:
    """The LSP sets fee-per-satoshi on every channel it has with each client (setchannel)."""

    ppm: int

    def describe(self) -> str:
        return f"lsp setchannel feeppm={self.ppm} on every channel"

    def apply(self, world: World) -> None:
        world.set_lsp_fee(self.ppm)


@dataclass(frozen=True)
class Stall:
    """`who` goes silent (disconnects from the honest clients) for the next honest step."""

    who: str

    def describe(self) -> str:
        return f"{self.who} stalls (disconnected) through the next step"

    def apply(self, world: World) -> None:
        world.stall(self.who)


@dataclass(frozen=True)
class Restart:
    who: str

    def describe(self) -> str:
        return f"{self.who} restarts"

    def apply(self, world: World) -> None:
        world.restart(self.who)


@dataclass(frozen=True)
class DoubleSpend:
    """The LSP double-spends (in the mempool) what it has broadcast when a block is next mined:
    a factory's, a successor's or a channel's funding is never confirmed."""

    def describe(self) -> str:
        return "lsp double-spends its next broadcast before it confirms"

    def apply(self, world: World) -> None:
        world.double_spend_next = True


@dataclass(frozen=True)
class Reorg:
    depth: int

    def describe(self) -> str:
        return f"reorg of {self.depth} block(s) (same txs re-mined)"

    def apply(self, world: World) -> None:
        world.reorg(self.depth)


@dataclass(frozen=True)
class PublishLeaf:
    """The LSP publishes a client's path of the live factory now (factory-exit on the LSP)."""

    client: int

    def describe(self) -> str:
        return f"lsp publishes client {self.client}'s path early"

    def apply(self, world: World) -> None:
        world.publish_leaf(self.client)


@dataclass(frozen=True)
class BadKey:
    """`who` sends junk keys / moves: a KEY with a random secret, a MOVE to a random target."""

    who: str

    def describe(self) -> str:
        return f"{self.who} sends a bad KEY and a MOVE to a random target"

    def apply(self, world: World) -> None:
        world.bad_keys(self.who)


@dataclass(frozen=True)
class Mine:
    blocks: int

    def describe(self) -> str:
        return f"mine {self.blocks} block(s)"

    def apply(self, world: World) -> None:
        world.mine(self.blocks)


def _who(rng: random.Random, with_co: bool) -> str:
    return "co" if with_co and rng.random() < 0.35 else "lsp"


def draw(rng: random.Random, with_co: bool, n_clients: int) -> Action:
    """One hostile action, uniformly over the catalogue's kinds."""
    who = _who(rng, with_co)
    kinds = CO_SENDS if who == "co" else LSP_SENDS
    choices: list[Action] = [
        Withhold(who, rng.choice(kinds)),
        Reorder(who, rng.choice(kinds)),
        Replay(who, rng.random()),
        SetFee(rng.choice(FEE_PPMS)),
        Stall(who),
        Restart(who),
        DoubleSpend(),
        Reorg(rng.randint(1, 2)),
        PublishLeaf(rng.randrange(n_clients)),
        BadKey(who),
        Mine(rng.randint(1, 3)),
    ]
    return rng.choice(choices)
