"""Signing a factory: two batched MuSig2 rounds (all nonces, then all partial signatures).

`Coordinator` (the LSP) and `Signer` (a client) are message-driven state machines that exchange only
bytes (`wire`): message in, state updated, messages out. A client receives and signs only the txs on
its own root-to-leaf path and rebuilds every one of them itself before signing (`check_path`), so its
work and its messages grow with its path length, not with the number of clients.

At a creation the nonce round comes first, with the proposal: a client's ACCEPT carries its public
nonces for the nodes of its path (the proposed shape fixes them; `Signer.precommit`), and the
SIGN_REQUEST carries the aggregates (`Coordinator(client_nonces=...)`), so the client answers it
with its partial signatures after its checks: one round trip fewer, nothing signed earlier. An
update or a sale collects its nonces after the request.

`sign_in_process` signs with every secret key in one process (tests, demo, benchmarks);
`sign_together`, its core, makes one such signature (also `handover`'s key-path spends).
Secret nonces live only in memory, single-use; an interrupted ceremony restarts with fresh ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import musig2, wire

# What a client checks before it signs lives in its own module; re-exported here for callers.
from .client_checks import (
    ChannelBinder as ChannelBinder,
    ClientPolicy as ClientPolicy,
    ClientTerms as ClientTerms,
    bind_leaf,
    check_agreed as check_agreed,
    check_header as check_header,
    check_path as check_path,
    check_update_path,
    update_phase,
)
from .coordinator import (
    Coordinator as Coordinator,
    CoordinatorState as CoordinatorState,
    blame,
)
from .errors import (
    AlreadySigned,
    CeremonyError,
    MuSigError,
    UnsafeToSign,
    WireError,
)
from .signed import SignedNodeTx as SignedNodeTx, verify_final as _verify_final
from .solvency import BoundChannel
from .tree import (
    Factory,
    FactoryKeys,
    UnsignedNodeTx,
)

log = logging.getLogger(__name__)


# --- all participants in one process ----------------------------------------------------------


def sign_in_process(
    factory: Factory,
    funding_outpoint: tuple[str, int],
    states: Sequence[int],
    lsp_seckey: bytes,
    client_seckeys: Sequence[bytes],
    nodes: Sequence[int] | None = None,
) -> dict[int, SignedNodeTx]:
    """Sign `nodes` (default: the whole tree) with every key at hand; same two rounds as the wire."""
    txs = factory.transactions(funding_outpoint, states, nodes)
    out: dict[int, SignedNodeTx] = {}
    for node, utx in txs.items():
        signers: list[tuple[int | None, bytes, bytes]] = [
            (c, factory.client_pubkeys[c], client_seckeys[c]) for c in factory.signers(node)
        ]
        signers.append((None, factory.lsp_pubkey, lsp_seckey))
        sig = sign_together(factory.signing_keyagg(node), utx.sighash, signers, f"node {node}")
        out[node] = SignedNodeTx(utx, sig)
    return out


def sign_one_in_process(
    utx: UnsignedNodeTx,
    keyagg: musig2.KeyAggContext,
    signers: Sequence[tuple[int | None, bytes, bytes]],
) -> SignedNodeTx:
    """One key-path MuSig2 signature of `utx` by every signer, in process (`sign_together`)."""
    return SignedNodeTx(utx, sign_together(keyagg, utx.sighash, signers, f"node {utx.node}"))


def sign_together(
    keyagg: musig2.KeyAggContext,
    msg: bytes,
    signers: Sequence[tuple[int | None, bytes, bytes]],
    what: str,
) -> bytes:
    """One BIP340 signature for `keyagg`'s key over `msg`, by MuSig2 with every signer's
    (client index or None for the LSP, pubkey, secret key) in this process.

    Fresh random nonces, used once and never kept. The result is verified; a bad partial
    signature raises `InvalidPartialSignature` naming its signer and `what` was signed."""
    nonces = [musig2.nonce_gen(pk, seckey=sk, keyagg=keyagg, msg=msg) for _, pk, sk in signers]
    session = musig2.Session.create(musig2.nonce_agg([p for _, p in nonces]), msg, keyagg)
    psigs = {
        who: musig2.partial_sign(sec, sk, session)
        for (who, _, sk), (sec, _) in zip(signers, nonces, strict=True)
    }
    sig = musig2.partial_sig_agg(list(psigs.values()), session)
    if not musig2.schnorr_verify(sig, msg, keyagg.xonly_pubkey):
        raise blame(
            what,
            session,
            psigs,
            {who: p for (who, _, _), (_, p) in zip(signers, nonces, strict=True)},
            {who: pk for who, pk, _ in signers},
        )
    return sig


# --- the client (signer) ----------------------------------------------------------------------


class SignerState(Enum):
    IDLE = "idle"
    NONCES_SENT = "nonces_sent"
    PSIGS_SENT = "psigs_sent"
    BELOW_SIGNED = "below_signed"  # an update's first phase: the txs below the moved node signed
    DONE = "done"
    FAILED = "failed"


@dataclass
class Signer:
    """A client in the ceremony. Holds its secret key; sees only what it is sent.

    A client signs a factory exactly once, at creation. Once it holds a signed path (DONE), nothing
    the LSP sends changes it: a new SIGN_REQUEST is refused (`AlreadySigned`), an ABORT or any
    malformed message leaves the path and the DONE state as they are. A later DW state is signed
    only through a flow the client starts itself (`agree_update`), never on the LSP's word."""

    seckey: bytes
    terms: ClientTerms
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    state: SignerState = SignerState.IDLE
    signed_path: list[SignedNodeTx] = field(default_factory=list)  # our exit, root first
    states: dict[int, int] = field(default_factory=dict)  # DW state of each signed path node
    _session: bytes = b""
    _keys: FactoryKeys | None = None
    _header: wire.FactoryHeader | None = None
    _pending: dict[int, UnsignedNodeTx] = field(default_factory=dict)
    _path: list[UnsignedNodeTx] = field(default_factory=list)
    _pending_states: dict[int, int] = field(default_factory=dict)
    # Our node's record of our channel, read when the tree arrives (`bind_leaf`): no nonce for a
    # tree whose leaf output is not that channel. `bound` keeps what was checked.
    binder: ChannelBinder | None = None
    bound: BoundChannel | None = None
    # The update agreed (`agree_update`): terms, the node it moves and its state, the solvency
    # check of our bound new channel (`solvency.check_update_signature`) before any nonce.
    _update_terms: ClientTerms | None = None
    _update_node: int | None = None
    _update_check: Callable[[BoundChannel, bool], None] | None = None
    _update_state: int | None = None
    # Signed bottom-up: first every changed tx below the moved node (`below`, final signatures
    # ours), then the moved node: whoever completes it cannot strand us.
    below: dict[int, SignedNodeTx] = field(default_factory=dict)
    # Per state node, the latest state whose moved-node signature we gave in an update that may
    # never have completed (the LSP may hold it): a later update must move past it.
    spent: dict[int, int] = field(default_factory=dict)
    _pending_terms: ClientTerms | None = None
    _nonces: dict[int, tuple[musig2.SecretNonce, bytes]] = field(default_factory=dict, repr=False)
    # Our nonces went out with our ACCEPT (`precommit`): the SIGN_REQUEST brings the aggregates.
    _precommitted: bool = False
    # We gave partial signatures for this factory's creation: whatever happened to that
    # ceremony since (an abort, a refusal), the LSP may hold that tree, so we sign no other.
    _creation_signed: bool = False

    def __post_init__(self) -> None:
        self.pubkey = musig2.pubkey_from_secret(self.seckey)

    @property
    def keys(self) -> FactoryKeys | None:
        return self._keys

    @property
    def header(self) -> wire.FactoryHeader | None:
        """The header of the factory we signed: exactly our agreed terms (`check_agreed`), and
        what exits, status and the EWT must be rebuilt from (`FactoryHeader.factory_keys`)."""
        return self._header

    @property
    def session(self) -> bytes:
        return self._session

    @classmethod
    def restore(
        cls,
        seckey: bytes,
        terms: ClientTerms,
        policy: ClientPolicy,
        header: wire.FactoryHeader,
        path: Sequence[SignedNodeTx],
        states: Mapping[int, int],
    ) -> Signer:
        """A signer holding a stored signed path (after a restart), re-checked before use."""
        signer = cls(seckey, terms, policy)
        keys = check_header(header, signer.pubkey, terms, policy)
        for s in path:
            if not _verify_final(s.unsigned, keys.signing_keyagg(s.node), s.signature):
                raise CeremonyError(f"stored path: node {s.node} has an invalid signature")
        signer._keys, signer._header = keys, header
        signer.signed_path, signer.states = list(path), dict(states)
        signer.state = SignerState.DONE
        return signer

    def precommit(self, nodes: Sequence[int]) -> tuple[tuple[int, bytes], ...]:
        """Fresh nonces for a creation's `nodes` (our path in the proposed shape), before any
        transaction exists: BIP327 nonces need no message, only fresh randomness. Each is used
        for at most one partial signature, after every check of the SIGN_REQUEST, or forgotten.
        Returns the public nonces for our ACCEPT."""
        if self.state is not SignerState.IDLE or self.signed_path or self._nonces:
            raise CeremonyError(
                f"nonces are committed once, before signing (we are {self.state.value})"
            )
        self._nonces = {n: musig2.nonce_gen(self.pubkey, seckey=self.seckey) for n in nodes}
        self._precommitted = True
        return tuple((n, pub) for n, (_, pub) in self._nonces.items())

    def forget(self) -> None:
        """Drop the ceremony in flight and its secret nonces (abort, restart)."""
        self._fail()
        self._update_terms = self._update_node = self._update_check = None
        self.below = {}

    @property
    def update_states(self) -> dict[int, int]:
        """The DW state of each node of the update being signed."""
        return dict(self._pending_states)

    @property
    def update_path(self) -> list[UnsignedNodeTx]:
        """The path of the update being signed, unsigned, root first."""
        return list(self._path)

    @property
    def signing_moved_node(self) -> bool:
        """Whether we are signing an update's moved node (then the LSP may hold the new state)."""
        return self._update_node is not None and self._update_node in self._pending

    def agree_update(
        self,
        terms: ClientTerms,
        node: int | None = None,
        check: Callable[[BoundChannel, bool], None] | None = None,
        state: int | None = None,
    ) -> None:
        """The client itself agreed to one DW update (never the LSP alone): its requests may
        re-sign our path's changed nodes, checked against `terms` (script known or `binder`),
        moving `node` into `state`; `check` runs on our bound new channel before any nonce."""
        if self.state is not SignerState.DONE or not self.signed_path:
            raise CeremonyError(f"an update needs a signed factory, we are {self.state.value}")
        if terms.channel_script is None and self.binder is None:
            raise UnsafeToSign("an update must check our channel's exact script: it is unknown")
        self._update_terms, self._update_node, self._update_check = terms, node, check
        self._update_state = state

    def receive(self, data: bytes) -> bytes | None:
        """Handle one message from the LSP; returns our reply, if any. Raises on anything unsafe
        (and then forgets the ceremony's nonces: a restart needs fresh ones)."""
        try:
            msg = wire.decode(data)
            if isinstance(msg, wire.Abort):
                self._fail()
                log.info("LSP aborted the ceremony: %s", msg.reason)
                return None
            if isinstance(msg, wire.SignRequest):
                return self._on_sign_request(msg)
            if msg.session != self._session:
                raise CeremonyError("message for another ceremony")
            if msg.type is wire.MsgType.AGG_NONCES and self.state is SignerState.NONCES_SENT:
                return self._on_agg_nonces(msg)
            if msg.type is wire.MsgType.SIGNATURES and self.state is SignerState.PSIGS_SENT:
                self._on_signatures(msg)
                return None
            raise CeremonyError(f"unexpected {msg.type.name} in state {self.state.value}")
        except (WireError, CeremonyError, MuSigError):
            self.forget()  # a refused request also ends the update we agreed to
            raise

    def _fail(self) -> None:
        """Forget what is in flight. A signed path stays, and with it the DONE state."""
        self._nonces.clear()
        self._precommitted = False
        self._pending.clear()
        self._pending_terms = None
        self.state = SignerState.DONE if self.signed_path else SignerState.FAILED

    def _on_sign_request(self, msg: wire.SignRequest) -> bytes:
        if self.state in (SignerState.NONCES_SENT, SignerState.PSIGS_SENT):
            raise CeremonyError("a new ceremony started before the previous one ended")
        # One agreement covers the update's two ceremonies; DONE or a failure ends it.
        update, update_node, update_check = (
            self._update_terms,
            self._update_node,
            self._update_check,
        )
        self._refuse_another_tree(msg, update is not None)
        terms = update or self.terms
        unbound = terms.channel_script is None and self.binder is None
        if self.policy.require_channel_script and unbound:
            raise UnsafeToSign("our channel script is unknown and our policy requires it")
        keys = check_header(msg.header, self.pubkey, terms, self.policy)
        if self._header is not None and msg.header != self._header:
            raise UnsafeToSign("the factory changed under an existing signed path")
        path = check_path(keys, msg.header, msg.templates, terms, self.policy.exact_siblings)
        bound = self.bound
        if self.binder is not None:  # before any nonce: our node holds exactly that channel
            terms, bound = bind_leaf(keys, msg.header, msg.templates, path, terms, self.binder)
        states = {t.node: t.state for t in msg.templates}
        to_sign = (
            self._phase(
                path,
                check_update_path(keys, self.signed_path, self.states, path, states, update_node),
                states,
            )
            if self.signed_path
            else {u.node for u in path}
        )
        if update is not None and update_check is not None:
            if bound is None:
                raise UnsafeToSign("an update's new channel must be bound by our own node")
            update_check(bound, self._update_node in to_sign)  # the solvency guard
        self.bound = bound
        self._keys, self._header, self._session = keys, msg.header, msg.session
        self._path = path
        self._pending = {u.node: u for u in path if u.node in to_sign}
        self._pending_states = states
        self._pending_terms = terms
        if self._precommitted:  # a creation: our nonces went with our ACCEPT
            return self._sign_precommitted(msg)
        if msg.aggnonces:
            raise CeremonyError("aggregate nonces of nonces we never gave")
        self._nonces = {
            n: musig2.nonce_gen(
                self.pubkey, seckey=self.seckey, keyagg=keys.signing_keyagg(n), msg=u.sighash
            )
            for n, u in self._pending.items()
        }
        self.state = SignerState.NONCES_SENT
        values = tuple((n, pub) for n, (_, pub) in self._nonces.items())
        return wire.NodeValues(wire.MsgType.NONCES, msg.session, values).encode()

    def _refuse_another_tree(self, msg: wire.SignRequest, agreed_update: bool) -> None:
        """A factory is signed once, at creation, and at its initial DW states: a later state's
        shorter delays would beat every update we ever sign. Once our partial signatures for a
        creation left, the LSP may hold that tree whatever it says next (an ABORT included), so
        no other tree of it is signed. Later states only in an update we agreed to."""
        if (self.signed_path or self._creation_signed) and not agreed_update:
            raise AlreadySigned(
                "we already signed this factory: a client signs once, and a later state only in"
                " an update it agreed to"
            )
        if not self.signed_path:
            for t in msg.templates:
                if t.state != 0:
                    raise UnsafeToSign(
                        f"a creation signs the initial states: node {t.node} is at {t.state}"
                    )

    def _sign_precommitted(self, msg: wire.SignRequest) -> bytes:
        """Every check of the request passed: sign with the nonces of our ACCEPT, once. They
        must be exactly for the nodes the request has us sign."""
        self._precommitted = False  # whatever happens now, these nonces serve no other request
        if set(self._nonces) != set(self._pending):
            raise CeremonyError("the request signs other nodes than our nonces were given for")
        if not msg.aggnonces:
            raise CeremonyError("a creation's request must carry the aggregate nonces")
        self.state = SignerState.NONCES_SENT
        return self._on_agg_nonces(
            wire.NodeValues(wire.MsgType.AGG_NONCES, msg.session, msg.aggnonces)
        )

    def _phase(
        self, path: list[UnsignedNodeTx], changed: set[int], states: dict[int, int]
    ) -> set[int]:
        """What this request of an update may sign (`client_checks.update_phase`)."""
        held = {n: s.txid for n, s in self.below.items()}
        self._update_node, nodes = update_phase(
            path, changed, states, held, self.spent, self._update_state
        )
        return nodes

    def _on_agg_nonces(self, msg: wire.NodeValues) -> bytes:
        assert self._keys is not None
        if {n for n, _ in msg.values} != set(self._pending):
            raise CeremonyError("aggregate nonces do not cover exactly the nodes we are signing")
        if self.signing_moved_node:  # the LSP may hold this state from now on
            assert self._update_node is not None
            self.spent[self._update_node] = self._pending_states[self._update_node]
        if not self.signed_path:  # the LSP may hold this creation's tree from now on
            self._creation_signed = True
        psigs = []
        for node, aggnonce in msg.values:
            utx = self._pending[node]
            session = musig2.Session.create(aggnonce, utx.sighash, self._keys.signing_keyagg(node))
            secnonce, _ = self._nonces.pop(node)
            psigs.append((node, musig2.partial_sign(secnonce, self.seckey, session)))
        self.state = SignerState.PSIGS_SENT
        return wire.NodeValues(wire.MsgType.PARTIAL_SIGS, self._session, tuple(psigs)).encode()

    def _on_signatures(self, msg: wire.NodeValues) -> None:
        assert self._keys is not None and self._pending_terms is not None
        sigs = dict(msg.values)
        if set(sigs) != set(self._pending):
            raise CeremonyError("signatures do not cover exactly the nodes we signed")
        signed = {}
        for node, utx in self._pending.items():
            if not _verify_final(utx, self._keys.signing_keyagg(node), sigs[node]):
                raise CeremonyError(f"node {node}: the LSP's final signature is invalid")
            signed[node] = SignedNodeTx(utx, sigs[node])
        if self.signed_path and self._update_node not in signed:  # an update's first phase
            self.below = signed
            self._pending.clear()
            self.state = SignerState.BELOW_SIGNED
            return
        old = {s.node: s for s in self.signed_path}
        mine = {**self.below, **signed}
        self.signed_path = [mine.get(u.node) or old[u.node] for u in self._path]
        self.below = {}
        self._update_terms = self._update_node = self._update_check = None
        self.states = dict(self._pending_states)
        self.terms = self._pending_terms
        self._pending.clear()
        self._pending_terms = None
        self.state = SignerState.DONE


def run_ceremony(coordinator: Coordinator, signers: Mapping[int, Signer]) -> dict[str, int]:
    """Relay bytes between a coordinator and its signers until done; returns bytes per direction.

    Each signer sees only the bytes addressed to it (tests, demo and benchmarks)."""
    to_clients = 0
    from_clients = 0
    outbox = coordinator.start()
    while outbox:
        replies: dict[int, bytes] = {}
        for c, data in outbox.items():
            to_clients += len(data)
            reply = signers[c].receive(data)
            if reply is not None:
                from_clients += len(reply)
                replies[c] = reply
        outbox = {}
        for c, data in replies.items():
            outbox.update(coordinator.receive(c, data))
    return {"to_clients": to_clients, "from_clients": from_clients}
