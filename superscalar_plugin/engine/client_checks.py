"""What a client checks before it signs: the terms it agreed to at PROPOSE (`ClientTerms`), its
own limits (`ClientPolicy`), the SIGN_REQUEST header field by field (`check_header`), and every
output of every transaction on its root-to-leaf path, rebuilt by itself (`check_path`).

Pure functions over the engine's values; the `Signer` (ceremony.py) calls them before it signs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import protocol, wire
from .errors import InvalidParameter, UnsafeToSign
from .solvency import BoundChannel, Step, check_bound_output
from .taproot import DUST_P2TR, DUST_P2WSH, P2A_SCRIPT
from .tree import (
    MAX_CLIENTS,
    FactoryKeys,
    FactoryParams,
    NodeKind,
    UnsignedNodeTx,
    build_node_tx,
    fee_for,
    keypath_tx_vsize,
)


@dataclass(frozen=True)
class ClientTerms:
    """What this client agreed to when it accepted the LSP's proposal (PROPOSE), field by field.

    The one source of truth for the factory's shape on the client's side: every SIGN_REQUEST header
    is checked against it (`check_header`), and what the client later acts on (exits, status, EWT)
    comes from the header it signed, which therefore equals these terms."""

    lsp_pubkey: bytes
    timeout_height: int
    # None: any P2WSH script. A Core Lightning fundee cannot learn its channel's funding script
    # (no funding pubkeys are exposed to plugins); it checks the amount and the output position.
    # `ClientPolicy.require_channel_script` refuses to sign without it.
    channel_script: bytes | None
    channel_sat: int
    n_clients: int
    client_index: int
    params: FactoryParams
    early_warning_time: int
    # Our leaf's stock in the state being signed: None at creation (`params.stock_sat`), the
    # amount an UPDATE names in a DW update (the LSP's money, moved between leaves).
    leaf_stock: int | None = None

    @staticmethod
    def from_propose(p: protocol.Propose, channel_script: bytes | None = None) -> ClientTerms:
        return ClientTerms(
            p.lsp_pubkey,
            p.timeout_height,
            channel_script,
            p.channel_sat,
            n_clients=p.n_clients,
            client_index=p.client_index,
            params=p.params,
            early_warning_time=p.early_warning_time,
        )


@dataclass(frozen=True)
class ClientPolicy:
    """The client's own limits; anything outside them is refused."""

    max_ewt: int = 2016
    max_fee_rate_kvb: int = 50_000
    # The floor on a sale's fee rate (`superscalar-min-feerate`; the tree's is checked when the
    # factory is proposed): a cheaper sale may not confirm behind its stock when fees rise.
    # 1000 sat/kvB is Core's minimum relay fee, below which no sale is built at all.
    min_fee_rate_kvb: int = 1000
    max_clients: int = MAX_CLIENTS
    # Sign only if our channel's exact script is known (`ClientTerms.channel_script`).
    require_channel_script: bool = False
    # Derive our siblings' branch outputs exactly, not only check that they are standard P2TR.
    exact_siblings: bool = False


def _expect_agreed(field_name: str, got: object, agreed: object) -> None:
    if got != agreed:
        shown = [v.hex() if isinstance(v, bytes) else v for v in (got, agreed)]
        raise UnsafeToSign(f"{field_name}: the request says {shown[0]}, we agreed to {shown[1]}")


def check_agreed(header: wire.FactoryHeader, terms: ClientTerms) -> None:
    """The header must be what we agreed to at PROPOSE, field by field; the error names the
    first field that differs."""
    _expect_agreed("lsp_pubkey", header.lsp_pubkey, terms.lsp_pubkey)
    _expect_agreed("timeout_height", header.timeout_height, terms.timeout_height)
    _expect_agreed("n_clients", len(header.client_pubkeys), terms.n_clients)
    _expect_agreed("client_index", header.client_index, terms.client_index)
    for f in dataclasses.fields(FactoryParams):
        _expect_agreed(
            f"params.{f.name}", getattr(header.params, f.name), getattr(terms.params, f.name)
        )


def check_header(
    header: wire.FactoryHeader, my_pubkey: bytes, terms: ClientTerms, policy: ClientPolicy
) -> FactoryKeys:
    """Refuse a factory whose terms differ from what we accepted or exceed our policy."""
    check_agreed(header, terms)
    if header.client_pubkeys[header.client_index] != my_pubkey:
        raise UnsafeToSign(f"slot {header.client_index} does not hold our key")
    if len(header.client_pubkeys) > policy.max_clients:
        raise UnsafeToSign(f"{len(header.client_pubkeys)} clients exceed our limit")
    if header.params.fee_rate_kvb > policy.max_fee_rate_kvb:
        raise UnsafeToSign(f"fee rate {header.params.fee_rate_kvb} sat/kvB exceeds our limit")
    keys = header.factory_keys()
    try:
        keys.validate()
    except InvalidParameter as e:
        raise UnsafeToSign(f"invalid factory: {e}") from e
    if keys.topology.ewt > policy.max_ewt:
        raise UnsafeToSign(
            f"early warning time {keys.topology.ewt} exceeds our limit {policy.max_ewt}"
        )
    _expect_agreed("early_warning_time", keys.topology.ewt, terms.early_warning_time)
    return keys


def _is_standard_p2wsh(amount: int, script: bytes) -> bool:
    return len(script) == 34 and script[:2] == b"\x00\x20" and amount >= DUST_P2WSH


def _is_standard_p2tr(amount: int, script: bytes) -> bool:
    return len(script) == 34 and script[:2] == b"\x51\x20" and amount >= DUST_P2TR


def check_path(
    keys: FactoryKeys,
    header: wire.FactoryHeader,
    templates: Sequence[wire.NodeTemplate],
    terms: ClientTerms,
    exact_siblings: bool = False,
) -> list[UnsignedNodeTx]:
    """Rebuild our root-to-leaf path from the templates, refusing anything unsafe for us.

    Checks every output of every tx: the path is exactly ours and complete; every tx spends the
    previous one's output towards us (the root spends the agreed funding output); our branch
    output is the MuSig2 aggregate of its clients and L, with the agreed timeout where it belongs,
    and our siblings' are standard P2TR (derived exactly too with `exact_siblings`: that protects
    only sibling clients, who sign this tx anyway, and costs half again the key aggregation);
    every nSequence is the DW delay of its state; fees are exactly the agreed rate; every output
    is above dust; the last output is the agreed P2A anchor; the leaf pays our channel (its exact
    script when known) and amount, our leaf-mates' channels are standard P2WSH, and the stock
    output is the leaf's aggregate with L's stock leaf (after T and the stock delay). Version and
    nLockTime are not taken from the LSP: we build each tx ourselves (`build_node_tx`).
    """
    topo = keys.topology
    me = header.client_index
    path = topo.client_path(me)
    if [t.node for t in templates] != path:
        raise UnsafeToSign(
            f"templates cover nodes {[t.node for t in templates]}, our path is {path}"
        )
    prevout = (header.funding_txid, header.funding_vout)
    spent_amount, spent_script = header.funding_amount, keys.funding_output.script_pubkey
    out: list[UnsignedNodeTx] = []
    for i, t in enumerate(templates):
        _check_frame(keys, t)
        if topo.nodes[t.node].kind is NodeKind.LEAF:
            towards_me = _check_leaf_outputs(keys, t, me, terms)
        else:
            towards_me = _check_branch_outputs(keys, t, path[i + 1], exact_siblings)
        _check_amounts(keys.params, t, spent_amount)
        utx = UnsignedNodeTx(
            t.node, build_node_tx(prevout, t.nsequence, t.outputs), spent_amount, spent_script
        )
        out.append(utx)
        prevout = (utx.txid, towards_me)
        spent_amount, spent_script = t.outputs[towards_me]
    return out


def _check_frame(keys: FactoryKeys, t: wire.NodeTemplate) -> None:
    """nSequence of the node's DW state, the number of outputs, the P2A anchor last."""
    node = keys.topology.nodes[t.node]
    where = f"node {t.node}"
    try:
        expected_seq = keys.nsequence(t.node, t.state)
    except InvalidParameter as e:
        raise UnsafeToSign(f"{where}: {e}") from e
    if t.nsequence != expected_seq:
        raise UnsafeToSign(f"{where}: nSequence {t.nsequence:#x}, expected {expected_seq:#x}")
    n_expected = (node.hi - node.lo) + 2 if node.kind is NodeKind.LEAF else len(node.children) + 1
    if len(t.outputs) != n_expected:
        raise UnsafeToSign(f"{where}: {len(t.outputs)} outputs, expected {n_expected}")
    if t.outputs[-1] != (keys.params.anchor_sat, P2A_SCRIPT):
        raise UnsafeToSign(
            f"{where}: last output is not the {keys.params.anchor_sat}-sat P2A anchor"
        )


def _check_leaf_outputs(
    keys: FactoryKeys, t: wire.NodeTemplate, me: int, terms: ClientTerms
) -> int:
    """Our channel exact (amount, and script when known), leaf-mates' standard, the stock exact;
    returns the index of our output."""
    node = keys.topology.nodes[t.node]
    where = f"node {t.node}"
    mine = me - node.lo
    for v in range(node.hi - node.lo):
        amount, script = t.outputs[v]
        if v == mine:
            script_ok = (
                script == terms.channel_script
                if terms.channel_script is not None
                else _is_standard_p2wsh(amount, script)
            )
            if amount != terms.channel_sat or not script_ok:
                raise UnsafeToSign(
                    f"{where}: our channel output pays {amount} sat to {script.hex()},"
                    f" not the agreed {terms.channel_sat} sat to our channel's script"
                )
        elif not _is_standard_p2wsh(amount, script):
            # Not ours to check exactly, but a non-standard output would make our exit
            # unrelayable.
            raise UnsafeToSign(
                f"{where}: output {v} (client {node.lo + v}'s channel) is not a standard"
                f" P2WSH of at least {DUST_P2WSH} sat"
            )
    stock = keys.stock_output(node.lo, node.hi).script_pubkey
    stock_sat = keys.params.stock_sat if terms.leaf_stock is None else terms.leaf_stock
    if t.outputs[-2] != (stock_sat, stock):
        raise UnsafeToSign(f"{where}: liquidity stock output is not the agreed one")
    return mine


def _check_branch_outputs(
    keys: FactoryKeys, t: wire.NodeTemplate, child: int, exact_siblings: bool
) -> int:
    """Our branch's aggregate exact, siblings' standard P2TR (or exact); returns our index."""
    topo = keys.topology
    where = f"node {t.node}"
    for v, sibling in enumerate(topo.nodes[t.node].children):
        amount, script = t.outputs[v]
        if sibling == child or exact_siblings:  # derived exactly
            if script != keys.branch_output_for(sibling).script_pubkey:
                whose = "our branch" if sibling == child else f"node {sibling}"
                raise UnsafeToSign(f"{where}: output {v} is not {whose}'s aggregate key output")
        elif not _is_standard_p2tr(amount, script):
            # A sibling's clients sign this tx too and check their own output exactly; what we
            # need is that it is standard, or our exit could not be relayed.
            raise UnsafeToSign(
                f"{where}: output {v} (node {sibling}'s branch) is not a standard P2TR"
                f" of at least {DUST_P2TR} sat"
            )
    return topo.nodes[child].parent_vout


def _check_amounts(params: FactoryParams, t: wire.NodeTemplate, spent_amount: int) -> None:
    """No dust output; the fee exactly the agreed rate on the tx's real size."""
    where = f"node {t.node}"
    for v, (amount, _) in enumerate(t.outputs[:-1]):
        if amount < DUST_P2TR:
            raise UnsafeToSign(f"{where}: output {v} of {amount} sat is dust")
    vsize = keypath_tx_vsize([s for _, s in t.outputs])
    fee = spent_amount - sum(a for a, _ in t.outputs)
    if fee != fee_for(vsize, params.fee_rate_kvb):
        raise UnsafeToSign(f"{where}: fee {fee} sat does not match the agreed fee rate")


class SignedPath(Protocol):
    """A signed tx of our path as the ceremony keeps it (`ceremony.SignedNodeTx`)."""

    @property
    def node(self) -> int: ...

    @property
    def txid(self) -> str: ...


# The client's own node's record of the channel funded at (leaf txid, output): None if it holds
# none there. Reading it is the plugin's (`plugin/lightningd/nodedb.py`); a read that fails raises.
ChannelBinder = Callable[[str, int], BoundChannel | None]


def bind_leaf(
    keys: FactoryKeys,
    header: wire.FactoryHeader,
    templates: Sequence[wire.NodeTemplate],
    path: Sequence[UnsignedNodeTx],
    terms: ClientTerms,
    binder: ChannelBinder,
) -> tuple[ClientTerms, BoundChannel]:
    """Before any nonce for the tree: our own node must hold the channel funded at our output of
    our leaf (`path[-1]`, rebuilt by `check_path`), for its amount, whose 2-of-2 of the keys our
    node recorded is that output's script (`solvency.check_channel_bound`). The terms come back
    with that exact script (`channel_script`), and the binding with them."""
    leaf = path[-1]
    vout = header.client_index - keys.topology.nodes[leaf.node].lo
    bound = binder(leaf.txid, vout)
    script = check_bound_output(Step.TREE_SIGNATURE, bound, leaf.txid, vout, templates[-1].outputs)
    assert bound is not None  # check_bound_output refused otherwise
    if terms.channel_script is not None and terms.channel_script != script:
        raise UnsafeToSign("our channel output is not the script we agreed to")
    return dataclasses.replace(terms, channel_script=script), bound


def check_update_path(
    keys: FactoryKeys,
    signed: Sequence[SignedPath],
    signed_states: Mapping[int, int],
    path: Sequence[UnsignedNodeTx],
    states: Mapping[int, int],
    expected: int | None = None,
) -> set[int]:
    """The nodes of our path a DW update re-signs, or `UnsafeToSign`. The first changed tx must be
    a state node (a leaf or an interior state) in a newer state, i.e. with a shorter relative
    lock, so that it confirms before the superseded one whenever both wait on the same parent; a
    changed kickoff or split would race its old version. Nothing above it changes (same txids),
    and below it the odometer resets: every state node there is back at state 0. `expected`: the
    state node the update said it moves."""
    old = {s.node: s.txid for s in signed}
    order = [u.node for u in path]
    changed = [u.node for u in path if old.get(u.node) != u.txid]
    if not changed:
        raise UnsafeToSign("nothing changed: refusing to sign the same path again")
    first = changed[0]
    kind = keys.topology.nodes[first].kind
    if not kind.is_state:
        raise UnsafeToSign(
            f"node {first} is a {kind.value}, not a state node: an update must start at a"
            " newer DW state"
        )
    if expected is not None and first != expected:
        raise UnsafeToSign(f"the update moves node {first}, we agreed to node {expected}")
    if states[first] <= signed_states[first]:
        raise UnsafeToSign(
            f"node {first}: state {states[first]} is not newer than {signed_states[first]}"
        )
    below = order[order.index(first) + 1 :]
    unreset = [n for n in below if keys.topology.nodes[n].kind.is_state and states[n] != 0]
    if unreset:
        raise UnsafeToSign(f"nodes {unreset} below the moved node are not back at state 0")
    return set(changed)


def update_phase(
    path: Sequence[UnsignedNodeTx],
    changed: set[int],
    states: Mapping[int, int],
    held_below: Mapping[int, str],
    spent: Mapping[int, int],
    agreed_state: int | None = None,
) -> tuple[int, set[int]]:
    """The moved node of an update and what its request may sign now: first every changed tx
    below the moved node; the moved node alone only once we hold those fully signed, for exactly
    these txs (`held_below`: node -> txid). Never a state of it at or below one we already gave
    its signature in an update that never completed (`spent`): the LSP may hold that one; and
    never below a node whose newer state we so signed."""
    order = [u.node for u in path]
    moved = min(changed, key=order.index)
    if agreed_state is not None and states[moved] != agreed_state:
        raise UnsafeToSign(
            f"node {moved}: the request is for state {states[moved]}, we agreed to {agreed_state}"
        )
    if states[moved] <= spent.get(moved, -1):
        raise UnsafeToSign(
            f"node {moved}: we already signed state {spent[moved]} in an update that never"
            " completed; a later one must move past it"
        )
    for above in order[: order.index(moved)]:
        # A newer state of a node above that the LSP may hold would, published, void all we
        # sign below it (its subtree spends that node's old output): only an update of that
        # node, or of one above it, moves past it (red-team finding, round 12).
        if spent.get(above, -1) > states[above]:
            raise UnsafeToSign(
                f"node {above}: we signed its state {spent[above]} in an update that never"
                f" completed; an update of node {moved} below it could be voided"
            )
    below = changed - {moved}
    if below and not held_below:
        return moved, below
    if dict(held_below) != {u.node: u.txid for u in path if u.node in below}:
        raise UnsafeToSign("the moved node's request is for another state than we signed below")
    return moved, {moved}
