"""Handing over an old factory: the LSP's key-path spends with the keys its clients handed over.

Once a client has moved its whole balance out of a factory it hands the LSP its secret key for
that factory (spec-notes 4.4; a client uses a fresh key per factory). With every client's key the
LSP spends the funding output by its MuSig2 key path, in one 1-input 1-output transaction, before
the timeout T: no tree transaction is ever published (4.6). With the keys of only some clients it
publishes only the tree nodes it must to reach the outputs whose clients all handed over, and
spends those outputs by key path.

- `check_handed_key`, `check_handed_keys`: is a handed-over secret the client's factory key?
- `keypath_spend`: the funding output, with every client's key.
- `partial_unroll`: with some keys, which nodes to publish and which outputs to take.
- `keypath_sweep`: one tree output (a branch or a leaf's stock) whose clients all handed over.

Each spend is signed by MuSig2 run in this process with every key (`ceremony.sign_together`):
fresh random nonces, used once and never stored. The result is a BIP340 signature for the
output key, the aggregate tweaked with the output's taproot tweak (TapTweak of the internal key
and the script tree's root: the timeout leaf, the stock's delay leaf, or none for a kickoff
output), exactly what consensus checks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from . import musig2
from .ceremony import sign_together
from .errors import (
    HandoverError,
    InvalidAmount,
    InvalidParameter,
    MissingHandedKeys,
    MuSigError,
)
from .taproot import TaprootOutput, taproot_sighash
from .tree import (
    SEQUENCE_NO_RELATIVE_LOCK,
    TX_VERSION,
    Factory,
    FactoryKeys,
    NodeKind,
    OutputKind,
    fee_for,
    keypath_tx_vsize,
)
from .tx import MAX_SCRIPT_SIZE, Tx, TxIn, TxOut, dust_threshold

# --- the handed-over keys ---------------------------------------------------------------------


def _handed_pubkey(secret: object, who: str) -> bytes:
    if not isinstance(secret, bytes | bytearray):
        raise HandoverError(f"{who}: a handed-over key is bytes, not {type(secret).__name__}")
    if len(secret) != 32:
        raise HandoverError(
            f"{who}: a handed-over key is a 32-byte secret, got {len(secret)} bytes"
        )
    try:
        return musig2.pubkey_from_secret(bytes(secret))
    except MuSigError as e:
        raise HandoverError(
            f"{who}: the handed-over key is not a secret key (zero, or not below the group order)"
        ) from e


def check_handed_key(secret: bytes, expected_pubkey: bytes, who: str = "the client") -> None:
    """Raise `HandoverError` unless `secret` is a 32-byte secret key whose public key is exactly
    `expected_pubkey`, the client's factory key on record (33 bytes: parity included, as MuSig2
    aggregates the full key)."""
    pubkey = _handed_pubkey(secret, who)
    if pubkey != expected_pubkey:
        raise HandoverError(
            f"{who}: the handed-over key gives public key {pubkey.hex()}, not the factory key"
            f" {expected_pubkey.hex()} on record"
        )


def check_handed_keys(keys: FactoryKeys, secrets: Mapping[int, bytes]) -> None:
    """Check every handed-over key (client index -> secret) against that client's factory key.

    Raises `InvalidParameter` for an index that is no client of this factory, and
    `HandoverError` naming the client otherwise; a key that belongs to another participant of
    the factory is named as such (someone handed over the wrong key, or tried to)."""
    owners = {pk: f"client {i}" for i, pk in enumerate(keys.client_pubkeys)}
    owners[keys.lsp_pubkey] = "the LSP"
    for client, secret in secrets.items():
        if type(client) is not int or not 0 <= client < keys.n_clients:
            raise InvalidParameter(f"{client!r} is not a client of this factory")
        pubkey = _handed_pubkey(secret, f"client {client}")
        expected = keys.client_pubkeys[client]
        if pubkey != expected:
            owner = owners.get(pubkey)
            detail = f"it is {owner}'s key" if owner else f"it gives {pubkey.hex()}"
            raise HandoverError(
                f"client {client}: the handed-over key is not its factory key {expected.hex()}:"
                f" {detail}"
            )


def _runs(clients: Sequence[int]) -> str:
    """'0-3, 5, 9-10': client indices, consecutive ones as ranges."""
    parts: list[str] = []
    i = 0
    while i < len(clients):
        j = i
        while j + 1 < len(clients) and clients[j + 1] == clients[j] + 1:
            j += 1
        parts.append(str(clients[i]) if i == j else f"{clients[i]}-{clients[j]}")
        i = j + 1
    return ", ".join(parts)


def _require_keys(
    keys: FactoryKeys, clients: range, secrets: Mapping[int, bytes], what: str
) -> None:
    missing = tuple(c for c in clients if c not in secrets)
    if missing:
        raise MissingHandedKeys(
            missing,
            f"{what} needs the factory keys of clients {_runs(list(clients))} and the LSP; not"
            f" handed over: client{'s' if len(missing) > 1 else ''} {_runs(missing)}",
        )
    check_handed_keys(keys, {c: secrets[c] for c in clients})


# --- one key-path spend -----------------------------------------------------------------------


def keypath_tx(outpoint: tuple[str, int], amount: int, destination: bytes, fee_rate_kvb: int) -> Tx:
    """The unsigned spend of one key-path output to `destination`: no relative lock, nLockTime 0
    (valid at once, before the factory's timeout), replaceable; the fee pays `fee_rate_kvb` for
    its signed size. Raises `InvalidAmount` if what is left would be dust for `destination`."""
    if not 1 <= len(destination) <= MAX_SCRIPT_SIZE:
        raise InvalidParameter(f"destination script must be 1..{MAX_SCRIPT_SIZE} bytes")
    if fee_rate_kvb < 1:
        raise InvalidAmount(f"fee rate {fee_rate_kvb} sat/kvB is not positive")
    vsize = keypath_tx_vsize([destination])
    fee = fee_for(vsize, fee_rate_kvb)
    dust = dust_threshold(destination)
    if amount - fee < dust:
        raise InvalidAmount(
            f"{amount} sat cannot pay the {fee}-sat fee ({vsize} vB at {fee_rate_kvb / 1000:g}"
            f" sat/vB) and leave {dust} sat, the dust limit of the destination"
        )
    return Tx(
        TX_VERSION,
        (TxIn(outpoint[0], outpoint[1], SEQUENCE_NO_RELATIVE_LOCK),),
        (TxOut(amount - fee, destination),),
        0,
    )


def _sign_keypath(
    keys: FactoryKeys,
    output: TaprootOutput,
    clients: range,
    tx: Tx,
    amount: int,
    secrets: Mapping[int, bytes],
    lsp_secret: bytes,
    what: str,
) -> bytes:
    """`tx` (one input, spending `output` of `amount`) signed by the key path of `output`, whose
    internal key is the aggregate of `clients` and the LSP."""
    _require_keys(keys, clients, secrets, what)
    try:
        lsp_ok = musig2.pubkey_from_secret(lsp_secret) == keys.lsp_pubkey
    except MuSigError:
        lsp_ok = False
    if not lsp_ok:
        raise InvalidParameter("the LSP secret is not the factory's LSP key")
    untweaked = keys.keyagg(clients.start, clients.stop)
    if output.internal_key != untweaked.xonly_pubkey:
        raise InvalidParameter(
            f"{what}: its internal key is not the aggregate of its clients and L"
        )
    keyagg = untweaked.apply_tweak(output.tweak, is_xonly=True)
    digest = taproot_sighash(tx, 0, [(amount, output.script_pubkey)])
    signers: list[tuple[int | None, bytes, bytes]] = [
        (c, keys.client_pubkeys[c], secrets[c]) for c in clients
    ]
    signers.append((None, keys.lsp_pubkey, lsp_secret))
    sig = sign_together(keyagg, digest, signers, what)
    return tx.with_witnesses([[sig]]).serialize()


def keypath_spend(
    factory: FactoryKeys,
    outpoint: tuple[str, int],
    amount: int,
    secrets: Mapping[int, bytes],
    lsp_secret: bytes,
    dest_script: bytes,
    fee_rate_kvb: int,
) -> bytes:
    """The raw signed tx spending the factory's funding output (of `amount` sat at `outpoint`)
    by its key path to `dest_script`, with every client's handed-over key (`secrets`: client
    index -> secret) and the LSP's. Valid at once: no tree tx is published, nothing waits for T.

    Raises `MissingHandedKeys` naming every client whose key is missing, `HandoverError` for a
    key that is not its client's, `InvalidParameter` for a wrong LSP key, `InvalidAmount` if the
    fee at `fee_rate_kvb` would leave dust."""
    if amount <= 0:
        raise InvalidAmount(f"funding amount {amount} is not positive")
    tx = keypath_tx(outpoint, amount, dest_script, fee_rate_kvb)
    return _sign_keypath(
        factory,
        factory.funding_output,
        range(factory.n_clients),
        tx,
        amount,
        secrets,
        lsp_secret,
        "the funding output",
    )


def keypath_sweep(
    factory: Factory,
    node: int,
    vout: int,
    outpoint: tuple[str, int],
    amount: int,
    secrets: Mapping[int, bytes],
    lsp_secret: bytes,
    dest_script: bytes,
    fee_rate_kvb: int,
) -> bytes:
    """The raw signed tx spending output `vout` of tree node `node` (confirmed at `outpoint`) by
    its key path to `dest_script`: a branch output (kickoff, state or split) or a leaf's
    liquidity stock, once every client under it handed over its key.

    Raises `HandoverError` for a channel output (the client's own 2-of-2: never the LSP's alone)
    or an anchor, `InvalidAmount` if `amount` is not the output's; otherwise as `keypath_spend`
    (`MissingHandedKeys` names whose keys are missing)."""
    topo = factory.topology
    if not 0 <= node < len(topo.nodes) or not 0 <= vout < len(factory.outputs[node]):
        raise InvalidParameter(f"node {node} has no output {vout}")
    spec = factory.outputs[node][vout]
    where = f"node {node} output {vout}"
    if spec.kind is OutputKind.CHANNEL:
        raise HandoverError(
            f"{where} is client {topo.nodes[node].lo + vout}'s channel (its own 2-of-2 with the"
            " LSP): no handed-over key spends it, the channel closes as a channel"
        )
    if spec.taproot is None or spec.key_range is None:
        raise HandoverError(f"{where} is a {spec.kind.value} output: it has no key path")
    if amount != spec.amount:
        raise InvalidAmount(f"{where} holds {spec.amount} sat, not {amount}")
    tx = keypath_tx(outpoint, amount, dest_script, fee_rate_kvb)
    clients = range(*spec.key_range)
    return _sign_keypath(factory, spec.taproot, clients, tx, amount, secrets, lsp_secret, where)


# --- with some keys: what to publish, what to take --------------------------------------------


@dataclass(frozen=True)
class UnrollStep:
    """A tree tx the LSP publishes, in the DW state it holds signed for it."""

    node: int
    kind: NodeKind
    state: int  # DW state index (0 for a kickoff or split)
    relative_delay: int  # blocks after its parent confirms (BIP68)


@dataclass(frozen=True)
class HandedOutput:
    """An output whose clients all handed over their keys: the LSP takes it by key path."""

    node: int | None  # the tree tx holding it; None: the funding output
    vout: int  # its index in that tx (0 for the funding output, whose outpoint is the caller's)
    kind: OutputKind  # BRANCH (the funding output too) or STOCK
    clients: range  # the clients whose keys (with the LSP's) make up its internal key
    amount: int

    def outpoint(
        self, funding_outpoint: tuple[str, int], txids: Mapping[int, str]
    ) -> tuple[str, int]:
        """Where it is on chain, given the funding outpoint and the published nodes' txids."""
        return funding_outpoint if self.node is None else (txids[self.node], self.vout)


@dataclass(frozen=True)
class UnrollPlan:
    publish: tuple[UnrollStep, ...]  # parents first: the fewest tree txs reaching `spend`
    spend: tuple[HandedOutput, ...]  # the highest outputs whose clients all handed over, by node
    # Children of published kickoffs that the plan leaves out: a kickoff's output must be
    # consumed by its latest state (DW), so they are due next, for the clients under them.
    due: tuple[int, ...]

    @property
    def funding_keypath(self) -> bool:
        """Every client handed over: nothing to publish, the funding output goes by key path."""
        return not self.publish and any(o.node is None for o in self.spend)


def _handed_range(spec_range: tuple[int, int] | None, handed: Collection[int]) -> bool:
    return spec_range is not None and all(c in handed for c in range(*spec_range))


def _visit(
    f: Factory, node: int, handed: frozenset[int], on_chain: frozenset[int]
) -> tuple[list[int], list[HandedOutput], list[int]]:
    """(nodes to publish, outputs to take, due nodes) at and below `node`; nothing at all when
    `node` is not on chain and no handed output lies below it."""
    publish = [] if node in on_chain else [node]
    spend: list[HandedOutput] = []
    due: list[int] = []
    is_kickoff = f.topology.nodes[node].kind is NodeKind.KICKOFF
    for vout, spec in enumerate(f.outputs[node]):
        if spec.key_range is None:  # a channel or the anchor: never the LSP's alone
            continue
        child = spec.child
        if child not in on_chain and _handed_range(spec.key_range, handed):
            spend.append(HandedOutput(node, vout, spec.kind, range(*spec.key_range), spec.amount))
            continue
        if child is None:  # a stock whose clients did not all hand over
            continue
        sub = _visit(f, child, handed, on_chain)
        publish += sub[0]
        spend += sub[1]
        due += sub[2]
        if is_kickoff and child not in on_chain and not sub[1]:
            due.append(child)
    if node not in on_chain and not spend:
        return [], [], []
    return publish, spend, due


def _check_clients(handed: Collection[int], n_clients: int) -> frozenset[int]:
    for c in handed:
        if type(c) is not int or not 0 <= c < n_clients:
            raise InvalidParameter(f"{c!r} is not a client of this factory (0..{n_clients - 1})")
    return frozenset(handed)


def _check_on_chain(f: Factory, published: Collection[int]) -> frozenset[int]:
    nodes = f.topology.nodes
    for n in published:
        if type(n) is not int or not 0 <= n < len(nodes):
            raise InvalidParameter(f"{n!r} is not a node of this factory")
        parent = nodes[n].parent
        if parent is not None and parent not in published:
            raise InvalidParameter(f"node {n} cannot be on chain without its parent {parent}")
    return frozenset(published)


def partial_unroll(
    factory: Factory,
    handed: Collection[int],
    states: Sequence[int] | Mapping[int, int],
    published: Collection[int] = (),
) -> UnrollPlan:
    """What the LSP publishes and takes once the clients in `handed` handed over their keys.

    `states[n]` is the DW state of node n the LSP holds signed (the latest); `published` the
    nodes already confirmed (e.g. by a client's unilateral exit), empty for an untouched tree.
    The plan takes the highest outputs whose clients are all in `handed` (never publishing a
    node whose own input is such an output: that input is taken instead) and publishes exactly
    the nodes above them. Channel outputs are never taken. A leaf's stock is taken only from a
    leaf already on chain: an unpublished leaf whose clients all handed over is taken whole,
    through its input. With every key and nothing published: no node, the funding output."""
    topo = factory.topology
    who = _check_clients(handed, factory.n_clients)
    on_chain = _check_on_chain(factory, published)
    if 0 not in on_chain and len(who) == factory.n_clients:
        everyone = range(factory.n_clients)
        funding = HandedOutput(None, 0, OutputKind.BRANCH, everyone, factory.funding_amount)
        return UnrollPlan((), (funding,), ())
    publish, spend, due = _visit(factory, 0, who, on_chain)
    steps = tuple(
        UnrollStep(n, topo.nodes[n].kind, states[n], topo.relative_delay(n, states[n]))
        if topo.nodes[n].kind.is_state
        else UnrollStep(n, topo.nodes[n].kind, 0, 0)
        for n in sorted(publish)
    )
    taken = sorted(spend, key=lambda o: (o.node or 0, o.vout))
    return UnrollPlan(steps, tuple(taken), tuple(sorted(due)))


def spend_handed(
    factory: Factory,
    output: HandedOutput,
    outpoint: tuple[str, int],
    secrets: Mapping[int, bytes],
    lsp_secret: bytes,
    dest_script: bytes,
    fee_rate_kvb: int,
) -> bytes:
    """The key-path spend of one output of a plan: `keypath_spend` for the funding output,
    `keypath_sweep` for a tree output."""
    if output.node is None:
        return keypath_spend(
            factory, outpoint, output.amount, secrets, lsp_secret, dest_script, fee_rate_kvb
        )
    return keypath_sweep(
        factory,
        output.node,
        output.vout,
        outpoint,
        output.amount,
        secrets,
        lsp_secret,
        dest_script,
        fee_rate_kvb,
    )
