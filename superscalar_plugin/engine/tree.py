"""The factory tree: topology, amounts, output scripts and the transactions of a DW state.

Three layers, each a small immutable value, so that a client can rebuild and check just its own
root-to-leaf path while the LSP builds everything:

- `Topology`: pure integers. Which clients sit under which node, node kinds, who spends what.
  Depends only on the client count and the shape, so every participant derives the same one.
- `Factory`: keys, amounts, fees and scripts of every output (the MuSig2 aggregates are computed
  lazily and cached per client range).
- `Factory.transactions(state)`: the unsigned transactions of one DW state, chained from the
  funding outpoint.

Node kinds (DESIGN.md section 1): leaves are DW *state* txs paying the channels plus the LSP's
liquidity stock; levels above alternate *kickoff* / *state*; the top `kickoff_only_top` levels are
plain timeout-sig-tree nodes ("split": no relative lock, outputs with the timeout leaf). If the
topmost DW level is a state with nothing above it, a single-output kickoff is put on top so that no
state tx spends the on-chain funding output directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache

from . import musig2
from .errors import InvalidAmount, InvalidParameter, InvalidShape

# The shape is part of the tree's API: re-exported.
from .shape import (
    MAX_CLIENTS as MAX_CLIENTS,
    MAX_EWT_BLOCKS as MAX_EWT_BLOCKS,
    MAX_KEYAGG_KEYS as MAX_KEYAGG_KEYS,
    MAX_TREE_NODES as MAX_TREE_NODES,
    FactoryParams as FactoryParams,
    ShapeCost as ShapeCost,
    check_shape as check_shape,
    shape_cost as shape_cost,
)
from .taproot import (
    DUST_P2WSH,
    P2A_SCRIPT,
    TapLeaf,
    TaprootOutput,
    stock_leaf_script,
    taproot_sighash,
    timeout_leaf_script,
)
from .tx import Tx, TxIn, TxOut

TX_VERSION = 2
# No relative lock (bit 31 set), still signals replaceability.
SEQUENCE_NO_RELATIVE_LOCK = 0xFFFFFFFD


class NodeKind(StrEnum):
    LEAF = "leaf"  # a DW state tx paying channels + liquidity stock
    STATE = "state"  # an interior DW state tx: relative lock in nSequence
    KICKOFF = "kickoff"  # no relative lock; outputs are plain n-of-n (no timeout leaf)
    SPLIT = "split"  # kickoff-only top level: no relative lock, outputs carry the timeout leaf

    @property
    def is_state(self) -> bool:
        return self in (NodeKind.LEAF, NodeKind.STATE)


class OutputKind(StrEnum):
    BRANCH = "branch"  # n-of-n of the clients below + L, spent by a child node
    CHANNEL = "channel"  # the channel's own funding script (opaque: CLN's P2WSH 2-of-2)
    STOCK = "stock"  # LSP liquidity stock: leaf clients & L, or L after a delay
    ANCHOR = "anchor"  # 240-sat P2A


@dataclass(frozen=True)
class Node:
    index: int
    kind: NodeKind
    parent: int | None  # None: spends the funding output
    parent_vout: int
    children: tuple[int, ...]  # nodes spending this node's branch outputs, in vout order
    lo: int  # clients [lo, hi) sit below this node
    hi: int


@dataclass(frozen=True)
class Topology:
    """Pure integer shape of the tree; node 0 is the root, leaves come last."""

    n_clients: int
    params: FactoryParams
    nodes: tuple[Node, ...]
    leaf_of_client: tuple[int, ...]

    @staticmethod
    def build(n_clients: int, params: FactoryParams) -> Topology:
        """The shape of `n_clients` under `params` (an immutable value, so built once per shape
        and shared: a client rebuilds it for each message and each guard refresh, O(n) each)."""
        try:
            return _built(n_clients, params)
        except TypeError:  # an unhashable field: built uncached, where `validate` names it
            return Topology._build(n_clients, params)

    @staticmethod
    def _build(n_clients: int, params: FactoryParams) -> Topology:
        check_shape(n_clients, params)
        # Bottom-up grouping: each group is (kind, [child groups], lo, hi).
        groups: list[_Group] = [
            _Group(NodeKind.LEAF, [], lo, min(lo + params.clients_per_leaf, n_clients))
            for lo in range(0, n_clients, params.clients_per_leaf)
        ]
        levels: list[list[_Group]] = []
        level = 0
        while len(groups) > 1:
            a = params.arity[min(level, len(params.arity) - 1)]
            kind = NodeKind.KICKOFF if level % 2 == 0 else NodeKind.STATE
            groups = [
                _Group(
                    kind, groups[i : i + a], groups[i].lo, groups[min(i + a, len(groups)) - 1].hi
                )
                for i in range(0, len(groups), a)
            ]
            levels.append(groups)
            level += 1
        if params.state_over_leaves and not params.kickoff_only_top and len(levels) == 1:
            # One kickoff over all the leaves and no DW state above them: stock could never move
            # between leaves (`dw.advance_covering`). A state over that kickoff makes the leaves
            # updatable together, at one state layer more on every path.
            groups = [_Group(NodeKind.STATE, groups, groups[0].lo, groups[0].hi)]
            levels.append(groups)
        # The top `kickoff_only_top` interior levels become plain timeout-sig-tree nodes.
        for lv in levels[len(levels) - min(params.kickoff_only_top, len(levels)) :]:
            for g in lv:
                g.kind = NodeKind.SPLIT
        root = groups[0]
        if root.kind.is_state:
            root = _Group(NodeKind.KICKOFF, [root], root.lo, root.hi)
        nodes: list[Node] = []
        leaf_of_client = [0] * n_clients
        _number(root, None, 0, nodes, leaf_of_client)
        return Topology(n_clients, params, tuple(nodes), tuple(leaf_of_client))

    def path(self, node: int) -> list[int]:
        """Node indices from the root down to `node`."""
        out = [node]
        while (parent := self.nodes[out[-1]].parent) is not None:
            out.append(parent)
        return out[::-1]

    def client_path(self, client: int) -> list[int]:
        return self.path(self.leaf_of_client[client])

    def subtree(self, node: int) -> list[int]:
        """`node` and every node below it, parents before children."""
        out = [node]
        i = 0
        while i < len(out):
            out.extend(self.nodes[out[i]].children)
            i += 1
        return out

    @property
    def leaves(self) -> list[int]:
        return [n.index for n in self.nodes if n.kind is NodeKind.LEAF]

    @property
    def state_nodes(self) -> list[int]:
        return [n.index for n in self.nodes if n.kind.is_state]

    @cached_property
    def depth(self) -> int:
        """Transactions on a root-to-leaf path (every leaf sits at the same depth)."""
        return len(self.path(len(self.nodes) - 1))

    def relative_delay(self, node: int, state_index: int) -> int:
        """Blocks `node`'s tx waits after its parent confirms (BIP68): its DW state's delay for a
        state tx, none for a kickoff or split."""
        return self.params.state_delay(state_index) if self.nodes[node].kind.is_state else 0

    def state_layers_on_path(self, node: int) -> int:
        return sum(1 for i in self.path(node) if self.nodes[i].kind.is_state)

    @cached_property
    def max_state_layers(self) -> int:
        # Levels are uniform (one kind per level, every leaf at the same depth): one path tells.
        return self.state_layers_on_path(len(self.nodes) - 1)

    @property
    def ewt(self) -> int:
        """Early warning time: the DW delays on the longest root-to-leaf path plus the margin."""
        return self.max_state_layers * self.params.max_state_delay + self.params.ewt_margin

    @property
    def total_states(self) -> int:
        """How many times the deepest leaf can be updated, counting the initial state."""
        return int(self.params.states_per_layer**self.max_state_layers)


@lru_cache(maxsize=64)
def _built(n_clients: int, params: FactoryParams) -> Topology:
    return Topology._build(n_clients, params)


@dataclass
class _Group:
    kind: NodeKind
    children: list[_Group]
    lo: int
    hi: int


def _number(
    g: _Group, parent: int | None, vout: int, nodes: list[Node], leaf_of: list[int]
) -> None:
    """Depth-first numbering: parents get lower indices than their children."""
    index = len(nodes)
    nodes.append(Node(index, g.kind, parent, vout, (), g.lo, g.hi))
    child_ids = []
    for v, child in enumerate(g.children):
        child_ids.append(len(nodes))
        _number(child, index, v, nodes, leaf_of)
    nodes[index] = Node(index, g.kind, parent, vout, tuple(child_ids), g.lo, g.hi)
    if g.kind is NodeKind.LEAF:
        for c in range(g.lo, g.hi):
            leaf_of[c] = index


# --- sizes ------------------------------------------------------------------------------------


def _output_size(script: bytes) -> int:
    return 8 + 1 + len(script)


def keypath_tx_vsize(output_scripts: Sequence[bytes]) -> int:
    """vsize of a one-input tx spent by a taproot key path (64-byte signature, SIGHASH_DEFAULT)."""
    n_out = len(output_scripts)
    base = 4 + 1 + (36 + 1 + 4) + (1 if n_out < 0xFD else 3) + 4
    base += sum(_output_size(s) for s in output_scripts)
    witness = 2 + 1 + 1 + 64  # marker+flag, item count, push length, signature
    return (base * 4 + witness + 3) // 4


def fee_for(vsize: int, fee_rate_kvb: int) -> int:
    return -(-vsize * fee_rate_kvb // 1000)


# --- the factory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSlot:
    """One client: its MuSig2 key for this factory and its channel's funding output (opaque)."""

    pubkey: bytes  # 33-byte compressed
    channel_script: bytes  # scriptPubKey lightningd returned from fundchannel_start
    channel_sat: int

    def validate(self, index: int) -> None:
        if len(self.pubkey) != 33 or self.pubkey[0] not in (2, 3):
            raise InvalidParameter(f"client {index}: pubkey must be 33-byte compressed")
        if not 1 <= len(self.channel_script) <= 80:
            raise InvalidParameter(f"client {index}: channel script must be 1..80 bytes")
        if self.channel_sat < DUST_P2WSH:
            raise InvalidAmount(
                f"client {index}: channel amount {self.channel_sat} sat is below dust ({DUST_P2WSH})"
            )
        if self.channel_sat > 21_000_000 * 100_000_000:
            raise InvalidAmount(f"client {index}: channel amount {self.channel_sat} is absurd")


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind
    amount: int
    script_pubkey: bytes
    child: int | None = None  # node spending it (BRANCH)
    taproot: TaprootOutput | None = None
    key_range: tuple[int, int] | None = None  # clients whose keys (with L's) form the internal key


@dataclass(frozen=True)
class UnsignedNodeTx:
    node: int
    tx: Tx
    spent_amount: int
    spent_script: bytes

    @property
    def txid(self) -> str:
        return self.tx.txid

    @cached_property
    def sighash(self) -> bytes:
        return taproot_sighash(self.tx, 0, [(self.spent_amount, self.spent_script)])


@dataclass(frozen=True, eq=False)
class FactoryKeys:
    """The part of a factory every participant knows: shape, keys, timeout.

    Enough to derive every branch output's script; a client uses only this (it does not learn the
    other clients' channels).
    """

    params: FactoryParams
    lsp_pubkey: bytes
    client_pubkeys: tuple[bytes, ...]
    timeout_height: int
    _keyaggs: dict[tuple[int, int], musig2.KeyAggContext] = field(
        default_factory=dict, repr=False, compare=False
    )
    _parsed: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)
    _signing: dict[int, musig2.KeyAggContext] = field(
        default_factory=dict, repr=False, compare=False
    )

    def validate(self) -> None:
        for i, pk in enumerate((*self.client_pubkeys, self.lsp_pubkey)):
            if len(pk) != 33 or pk[0] not in (2, 3):
                who = "lsp" if i == len(self.client_pubkeys) else f"client {i}"
                raise InvalidParameter(f"{who}: pubkey must be 33-byte compressed")
        seen: dict[bytes, str] = {self.lsp_pubkey: "the LSP"}
        for i, pk in enumerate(self.client_pubkeys):
            if pk in seen:  # name the client: it is the one to blame and to drop
                raise InvalidParameter(
                    f"client {i}: its key is also {seen[pk]}'s (every participant needs a"
                    " distinct key)"
                )
            seen[pk] = f"client {i}"
        if not 0 < self.timeout_height < 500_000_000:
            raise InvalidParameter(f"timeout_height {self.timeout_height} is not a block height")
        if self.topology.ewt > self.params.max_ewt:
            raise InvalidShape(
                f"early warning time {self.topology.ewt} blocks exceeds the limit of"
                f" {self.params.max_ewt}: use fewer states per layer, a smaller step, or"
                " kickoff-only top levels"
            )

    @cached_property
    def topology(self) -> Topology:
        return Topology.build(len(self.client_pubkeys), self.params)

    @property
    def n_clients(self) -> int:
        return len(self.client_pubkeys)

    @cached_property
    def lsp_xonly(self) -> bytes:
        return musig2.xonly(self.lsp_pubkey)

    def keyagg(self, lo: int, hi: int) -> musig2.KeyAggContext:
        """MuSig2 aggregate (untweaked) of clients [lo, hi) and the LSP, keys sorted (BIP327)."""
        ctx = self._keyaggs.get((lo, hi))
        if ctx is None:
            keys = [*self.client_pubkeys[lo:hi], self.lsp_pubkey]
            ctx = musig2.KeyAggContext.key_agg(musig2.key_sort(keys), self._parsed)
            self._keyaggs[(lo, hi)] = ctx
        return ctx

    @cached_property
    def timeout_leaf(self) -> TapLeaf:
        return TapLeaf(timeout_leaf_script(self.timeout_height, self.lsp_xonly))

    def branch_output(self, lo: int, hi: int, with_timeout: bool) -> TaprootOutput:
        internal = self.keyagg(lo, hi).xonly_pubkey
        return TaprootOutput(internal, self.timeout_leaf if with_timeout else None)

    def branch_output_for(self, child: int) -> TaprootOutput:
        """The output that `child` spends (its parent's branch output, or the funding output)."""
        topo = self.topology
        cn = topo.nodes[child]
        with_timeout = cn.parent is None or topo.nodes[cn.parent].kind is not NodeKind.KICKOFF
        return self.branch_output(cn.lo, cn.hi, with_timeout)

    @cached_property
    def stock_leaf(self) -> TapLeaf:
        """L alone after T and `stock_delay` blocks after the stock output confirmed (`sale`'s
        docstring says why both)."""
        return TapLeaf(
            stock_leaf_script(self.timeout_height, self.params.stock_delay, self.lsp_xonly)
        )

    def stock_output(self, lo: int, hi: int) -> TaprootOutput:
        return TaprootOutput(self.keyagg(lo, hi).xonly_pubkey, self.stock_leaf)

    @cached_property
    def funding_output(self) -> TaprootOutput:
        return self.branch_output(0, self.n_clients, with_timeout=True)

    def signing_keyagg(self, node: int) -> musig2.KeyAggContext:
        """The key aggregate that signs `node`'s tx: its spent output's keys, taproot-tweaked."""
        ctx = self._signing.get(node)
        if ctx is None:
            n = self.topology.nodes[node]
            tweak = self.branch_output_for(node).tweak
            ctx = self._signing[node] = self.keyagg(n.lo, n.hi).apply_tweak(tweak, is_xonly=True)
        return ctx

    def signers(self, node: int) -> range:
        """Client indices that sign `node` (the LSP always signs too)."""
        n = self.topology.nodes[node]
        return range(n.lo, n.hi)

    def nsequence(self, node: int, state_index: int) -> int:
        if self.topology.nodes[node].kind.is_state:
            return self.params.state_delay(state_index)  # BIP68 block-based relative lock
        return SEQUENCE_NO_RELATIVE_LOCK


def build_node_tx(
    prevout: tuple[str, int], nsequence: int, outputs: Sequence[tuple[int, bytes]]
) -> Tx:
    """A tree transaction: one input, the given outputs, nLockTime 0 (the timeout is in scripts)."""
    return Tx(
        TX_VERSION,
        (TxIn(prevout[0], prevout[1], nsequence),),
        tuple(TxOut(amount, script) for amount, script in outputs),
        0,
    )


@dataclass(frozen=True, eq=False)
class Factory(FactoryKeys):
    """The LSP's full view: keys plus every client's channel output, hence every amount."""

    channels: tuple[tuple[bytes, int], ...] = ()  # per client: (channel script, channel sat)
    # Per leaf (in `topology.leaves` order), its stock in this layout; empty: `params.stock_sat`
    # everywhere (a new factory). A DW update moves stock between leaves (`engine/update.py`).
    stocks: tuple[int, ...] = ()

    @staticmethod
    def create(
        params: FactoryParams,
        lsp_pubkey: bytes,
        clients: Sequence[ClientSlot],
        timeout_height: int,
    ) -> Factory:
        for i, c in enumerate(clients):
            c.validate(i)
        f = Factory(
            params,
            lsp_pubkey,
            tuple(c.pubkey for c in clients),
            timeout_height,
            channels=tuple((c.channel_script, c.channel_sat) for c in clients),
        )
        f.validate()
        return f

    def stock_sat_of(self, leaf: int) -> int:
        """`leaf`'s stock in this layout."""
        if not self.stocks:
            return self.params.stock_sat
        return self.stocks[self.topology.leaves.index(leaf)]

    # amounts and outputs, bottom-up

    @cached_property
    def outputs(self) -> tuple[tuple[OutputSpec, ...], ...]:
        """Per node, its outputs in vout order (the P2A anchor last)."""
        topo = self.topology
        out: list[tuple[OutputSpec, ...]] = [()] * len(topo.nodes)
        need: list[int] = [0] * len(topo.nodes)
        for node in reversed(topo.nodes):  # children have higher indices than parents
            specs: list[OutputSpec] = []
            if node.kind is NodeKind.LEAF:
                for c in range(node.lo, node.hi):
                    script, amount = self.channels[c]
                    specs.append(OutputSpec(OutputKind.CHANNEL, amount, script))
                stock = self.stock_output(node.lo, node.hi)
                specs.append(
                    OutputSpec(
                        OutputKind.STOCK,
                        self.stock_sat_of(node.index),
                        stock.script_pubkey,
                        taproot=stock,
                        key_range=(node.lo, node.hi),
                    )
                )
            else:
                with_timeout = node.kind is not NodeKind.KICKOFF
                for child in node.children:
                    cn = topo.nodes[child]
                    tap = self.branch_output(cn.lo, cn.hi, with_timeout)
                    specs.append(
                        OutputSpec(
                            OutputKind.BRANCH,
                            need[child],
                            tap.script_pubkey,
                            child=child,
                            taproot=tap,
                            key_range=(cn.lo, cn.hi),
                        )
                    )
            specs.append(OutputSpec(OutputKind.ANCHOR, self.params.anchor_sat, P2A_SCRIPT))
            vsize = keypath_tx_vsize([s.script_pubkey for s in specs])
            need[node.index] = sum(s.amount for s in specs) + fee_for(
                vsize, self.params.fee_rate_kvb
            )
            out[node.index] = tuple(specs)
        return tuple(out)

    def input_amount(self, node: int) -> int:
        parent = self.topology.nodes[node].parent
        if parent is None:
            return self.funding_amount
        return self.outputs[parent][self.topology.nodes[node].parent_vout].amount

    @cached_property
    def funding_amount(self) -> int:
        root = self.outputs[0]
        vsize = keypath_tx_vsize([s.script_pubkey for s in root])
        return sum(s.amount for s in root) + fee_for(vsize, self.params.fee_rate_kvb)

    def spent_output(self, node: int) -> OutputSpec:
        n = self.topology.nodes[node]
        if n.parent is None:
            f = self.funding_output
            return OutputSpec(
                OutputKind.BRANCH,
                self.funding_amount,
                f.script_pubkey,
                child=0,
                taproot=f,
                key_range=(0, self.n_clients),
            )
        return self.outputs[n.parent][n.parent_vout]

    def fee(self, node: int) -> int:
        return self.input_amount(node) - sum(s.amount for s in self.outputs[node])

    def vsize(self, node: int) -> int:
        return keypath_tx_vsize([s.script_pubkey for s in self.outputs[node]])

    # transactions

    def node_tx(self, node: int, prevout: tuple[str, int], state_index: int) -> UnsignedNodeTx:
        spent = self.spent_output(node)
        outputs = [(s.amount, s.script_pubkey) for s in self.outputs[node]]
        tx = build_node_tx(prevout, self.nsequence(node, state_index), outputs)
        return UnsignedNodeTx(node, tx, spent.amount, spent.script_pubkey)

    def transactions(
        self,
        funding_outpoint: tuple[str, int],
        states: Sequence[int],
        nodes: Sequence[int] | None = None,
    ) -> dict[int, UnsignedNodeTx]:
        """Unsigned txs of `nodes` (default: all), chained from the funding outpoint.

        `states[i]` is node i's DW state index (ignored for non-state nodes). Parents of requested
        nodes are built too, as their txids are needed.
        """
        topo = self.topology
        wanted = set(range(len(topo.nodes))) if nodes is None else set(nodes)
        needed: set[int] = set()
        for n in wanted:
            needed.update(topo.path(n))
        built: dict[int, UnsignedNodeTx] = {}
        for n in sorted(needed):  # parents first
            node = topo.nodes[n]
            prevout = (
                funding_outpoint
                if node.parent is None
                else (built[node.parent].txid, node.parent_vout)
            )
            built[n] = self.node_tx(n, prevout, states[n])
        return {n: t for n, t in built.items() if n in wanted}
