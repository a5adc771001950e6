"""A factory's shape and economics (`FactoryParams`), and what a shape may cost.

What a proposal may cost is bounded before anything is built from it (PROPOSE, SIGN_REQUEST,
stored records): `check_shape` estimates the tree from integers alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidAmount, InvalidParameter, InvalidShape
from .taproot import ANCHOR_SAT, DUST_P2TR

MAX_EWT_BLOCKS = 2016  # what most payers accept as a final CLTV; bLIP-56's ceiling in practice
# What a proposal may cost is bounded before anything is built (PROPOSE, SIGN_REQUEST, stored
# records): at most 1024 clients (a few hundred is what the design expects per tree), every
# interior level splits (arity >= 2) and every DW layer can be updated (K >= 2). With these, a
# tree has at most about 2 nodes per leaf and log2(n) levels; `shape_cost` checks the estimate.
MAX_CLIENTS = 1024
MAX_TREE_NODES = 4 * MAX_CLIENTS
MAX_KEYAGG_KEYS = 64 * MAX_CLIENTS  # keys aggregated over every node (the LSP builds them all)


@dataclass(frozen=True)
class FactoryParams:
    """The shape and economics of a factory. Every field is validated by `validate()`."""

    clients_per_leaf: int = 2
    arity: tuple[int, ...] = (2,)  # interior arity per level, from the leaves up; last repeats
    kickoff_only_top: int = 0  # top interior levels without DW states
    states_per_layer: int = 4  # K
    step_blocks: int = 36  # S: state i waits S*(K-1-i) blocks
    fee_rate_kvb: int = 2000  # sat per 1000 vB paid by every off-chain tx, from the LSP's share
    anchor_sat: int = ANCHOR_SAT
    stock_sat: int = 100_000  # LSP liquidity stock per leaf
    stock_delay: int = 144  # blocks after which L alone may take a leaf's stock
    ewt_margin: int = 36  # blocks added to the DW delays for confirmation slack
    max_ewt: int = MAX_EWT_BLOCKS
    # A DW state over the leaves' kickoff when that kickoff is the only interior level (2 to
    # `arity` leaves), so that stock can move between those leaves (`engine/update.py`). False in
    # records and headers written before it existed: their trees are built as they were signed.
    state_over_leaves: bool = True

    def validate(self) -> None:
        if not 1 <= self.clients_per_leaf <= 16:
            raise InvalidShape(f"clients_per_leaf must be 1..16, got {self.clients_per_leaf}")
        # An arity-1 level splits nothing: it adds a tx to every path and a node to every group,
        # and 254 of them made a 411-byte proposal cost seconds and hundreds of MB to build.
        if not self.arity or any(not 2 <= a <= 64 for a in self.arity):
            raise InvalidShape(
                f"arity must be a list of integers 2..64 (no arity-1 levels), got {list(self.arity)}"
            )
        if not 0 <= self.kickoff_only_top < 0x80:
            raise InvalidShape(f"kickoff_only_top must be 0..127, got {self.kickoff_only_top}")
        if not isinstance(self.state_over_leaves, bool):
            raise InvalidShape("state_over_leaves must be true or false")
        if not 2 <= self.states_per_layer <= 64:
            raise InvalidShape(
                f"states_per_layer must be 2..64 (one state cannot be updated), got"
                f" {self.states_per_layer}"
            )
        if not 1 <= self.step_blocks <= 1008:
            raise InvalidShape(f"step_blocks must be 1..1008, got {self.step_blocks}")
        if self.step_blocks * (self.states_per_layer - 1) >= 0xFFFF:
            raise InvalidShape("states_per_layer * step_blocks exceeds nSequence's 16-bit range")
        if not 1000 <= self.fee_rate_kvb <= 10_000_000:
            raise InvalidAmount(
                f"fee rate must be 1..10000 sat/vB, got {self.fee_rate_kvb / 1000:g} sat/vB"
            )
        if self.anchor_sat < ANCHOR_SAT:
            raise InvalidAmount(f"anchor_sat must be at least {ANCHOR_SAT} (P2A dust)")
        if self.stock_sat < DUST_P2TR:
            raise InvalidAmount(f"stock_sat {self.stock_sat} is below dust ({DUST_P2TR})")
        if not 1 <= self.stock_delay < 0xFFFF:
            raise InvalidShape(f"stock_delay must be 1..65534, got {self.stock_delay}")
        if self.ewt_margin < 0:
            raise InvalidShape("ewt_margin cannot be negative")

    def state_delay(self, state_index: int) -> int:
        """Relative delay of DW state `state_index` (0 = first, largest delay)."""
        if not 0 <= state_index < self.states_per_layer:
            raise InvalidParameter(f"state index {state_index} out of range")
        return self.step_blocks * (self.states_per_layer - 1 - state_index)

    @property
    def max_state_delay(self) -> int:
        return self.state_delay(0)


@dataclass(frozen=True)
class ShapeCost:
    """What building a factory of this shape costs, estimated from integers alone."""

    nodes: int  # transactions in the tree
    depth: int  # transactions on a root-to-leaf path
    keyagg_keys: int  # keys aggregated over every node's output (MuSig2 work of the LSP)


def shape_cost(n_clients: int, params: FactoryParams) -> ShapeCost:
    """Count nodes, depth and aggregation work of a shape without building it: one pass over the
    levels, each a few integer operations (the number of levels is bounded by the arity list and
    log2(n) once every level splits)."""
    groups = -(-n_clients // params.clients_per_leaf)
    nodes, depth = groups, 1
    keys = n_clients + groups  # every leaf's stock: its clients and L
    level = 0
    while groups > 1:
        a = params.arity[min(level, len(params.arity) - 1)]
        groups = -(-groups // a)
        nodes += groups
        depth += 1
        keys += n_clients + groups  # each level's branch outputs cover every client once, plus L
        level += 1
        if nodes > MAX_TREE_NODES:  # stop counting: already too costly
            break
    if level == 1 and params.state_over_leaves and not params.kickoff_only_top:  # `Topology`
        nodes, depth, keys = nodes + 1, depth + 1, keys + n_clients + 1
    # A state on top gets a single-output kickoff above it (counted generously).
    return ShapeCost(nodes + 1, depth + 1, keys + n_clients + 1)


def check_shape(n_clients: int, params: FactoryParams) -> ShapeCost:
    """Refuse a shape that is invalid or would cost too much to build, before building anything."""
    params.validate()
    if not 1 <= n_clients <= MAX_CLIENTS:
        raise InvalidShape(f"a factory needs 1..{MAX_CLIENTS} clients, got {n_clients}")
    cost = shape_cost(n_clients, params)
    if cost.nodes > MAX_TREE_NODES:
        raise InvalidShape(f"the tree would have {cost.nodes} txs, more than {MAX_TREE_NODES}")
    if cost.keyagg_keys > MAX_KEYAGG_KEYS:
        raise InvalidShape(
            f"the tree would aggregate {cost.keyagg_keys} keys, more than {MAX_KEYAGG_KEYS}"
        )
    return cost
