"""The LSP's side of a signing ceremony (`Coordinator`): requests out, nonces and partial
signatures in, final signatures back, each round batched over every client; an invalid partial
signature is blamed on its signer (`blame`). The client's side is `ceremony.Signer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import Enum

from . import musig2, wire
from .errors import CeremonyError, InvalidPartialSignature, MuSigError, WireError
from .signed import SignedNodeTx, verify_final as _verify_final
from .tree import Factory


def _who(client: int | None) -> str:
    return "lsp" if client is None else f"client {client}"


def blame(
    what: str,
    session: musig2.Session,
    psigs: Mapping[int | None, bytes],
    pubnonces: Mapping[int | None, bytes],
    pubkeys: Mapping[int | None, bytes],
) -> InvalidPartialSignature:
    for who, psig in psigs.items():
        if not musig2.partial_sig_verify(psig, pubnonces[who], pubkeys[who], session):
            return InvalidPartialSignature(_who(who), what)
    return InvalidPartialSignature("unknown", f"{what}: aggregate invalid")


class CoordinatorState(Enum):
    COLLECTING_NONCES = "collecting_nonces"
    COLLECTING_PSIGS = "collecting_psigs"
    DONE = "done"


class Coordinator:
    """The LSP's side of one ceremony: sign `nodes` of `factory` in `states` with every client."""

    def __init__(
        self,
        factory: Factory,
        lsp_seckey: bytes,
        funding_outpoint: tuple[str, int],
        states: Sequence[int],
        nodes: Sequence[int] | None = None,
        session: bytes | None = None,
        client_nonces: Mapping[int, Mapping[int, bytes]] | None = None,
    ) -> None:
        """`client_nonces`: a creation's, each client's public nonces from its ACCEPT (by node
        of its path); `start` then sends the aggregate nonces with the requests."""
        self.factory = factory
        self.lsp_seckey = lsp_seckey
        self.funding_outpoint = funding_outpoint
        self.states = tuple(states)
        self.session = session or os.urandom(32)
        topo = factory.topology
        self.nodes = sorted(set(range(len(topo.nodes)) if nodes is None else nodes))
        self.txs = factory.transactions(funding_outpoint, self.states)
        self.clients = sorted({c for n in self.nodes for c in factory.signers(n)})
        # Nodes each client signs: the requested ones on its path.
        wanted = set(self.nodes)
        self.client_nodes = {
            c: [n for n in topo.client_path(c) if n in wanted] for c in self.clients
        }
        self.state = CoordinatorState.COLLECTING_NONCES
        self._keyaggs = {n: factory.signing_keyagg(n) for n in self.nodes}
        self._lsp_nonces = {
            n: musig2.nonce_gen(
                factory.lsp_pubkey,
                seckey=lsp_seckey,
                keyagg=self._keyaggs[n],
                msg=self.txs[n].sighash,
            )
            for n in self.nodes
        }
        self._pubnonces: dict[int, dict[int, bytes]] = {}
        self._psigs: dict[int, dict[int, bytes]] = {}
        self._sessions: dict[int, musig2.Session] = {}
        self.signed: dict[int, SignedNodeTx] = {}
        self.precommitted = client_nonces is not None
        for c, values in (client_nonces or {}).items():
            if c not in self.client_nodes:
                raise CeremonyError(f"client {c} is not part of this ceremony")
            if set(values) != set(self.client_nodes[c]):
                raise CeremonyError(f"client {c}: nonces for the wrong nodes")
            self._pubnonces[c] = dict(values)
        if self.precommitted and set(self._pubnonces) != set(self.clients):
            missing = sorted(set(self.clients) - set(self._pubnonces))
            raise CeremonyError(f"client {missing[0]}: no nonces")

    def header_for(self, client: int) -> wire.FactoryHeader:
        f = self.factory
        return wire.FactoryHeader(
            f.params,
            f.timeout_height,
            f.lsp_pubkey,
            f.client_pubkeys,
            client,
            self.funding_outpoint[0],
            self.funding_outpoint[1],
            f.funding_amount,
        )

    def start(self) -> dict[int, bytes]:
        """The SIGN_REQUEST for every client taking part (a creation's with the aggregate
        nonces: every nonce is known, the partial signatures are collected next)."""
        aggnonces = self._aggregate_nonces() if self.precommitted else {}
        out = {}
        for c in self.clients:
            templates = tuple(
                wire.NodeTemplate(
                    n,
                    self.states[n],
                    self.factory.nsequence(n, self.states[n]),
                    tuple((o.amount, o.script_pubkey) for o in self.factory.outputs[n]),
                )
                for n in self.factory.topology.client_path(c)
            )
            mine = tuple((n, aggnonces[n]) for n in self.client_nodes[c]) if aggnonces else ()
            out[c] = wire.SignRequest(self.session, self.header_for(c), templates, mine).encode()
        return out

    @property
    def waiting_for(self) -> list[int]:
        """Clients we still need a message from in the current round."""
        got = self._pubnonces if self.state is CoordinatorState.COLLECTING_NONCES else self._psigs
        if self.state is CoordinatorState.DONE:
            return []
        return [c for c in self.clients if c not in got]

    def abort(self, reason: str) -> dict[int, bytes]:
        self._lsp_nonces.clear()
        return {c: wire.Abort(self.session, reason).encode() for c in self.clients}

    def receive(self, client: int, data: bytes) -> dict[int, bytes]:
        """Handle one client's message; returns the messages to send when a round completes.

        Raises `CeremonyError`/`WireError` naming the client on anything malformed or unexpected,
        and `InvalidPartialSignature` naming the culprit."""
        if client not in self.client_nodes:
            raise CeremonyError(f"client {client} is not part of this ceremony")
        try:
            msg = wire.decode(data)
        except WireError as e:
            raise WireError(f"client {client}: {e}") from e
        if isinstance(msg, wire.Abort):
            raise CeremonyError(f"client {client} aborted: {msg.reason}")
        if not isinstance(msg, wire.NodeValues) or msg.session != self.session:
            raise CeremonyError(f"client {client}: unexpected message")
        values = dict(msg.values)
        if set(values) != set(self.client_nodes[client]):
            raise CeremonyError(f"client {client}: values for the wrong nodes")
        if msg.type is wire.MsgType.NONCES and self.state is CoordinatorState.COLLECTING_NONCES:
            if client in self._pubnonces:
                raise CeremonyError(f"client {client}: nonces sent twice")
            self._pubnonces[client] = values
            if self.waiting_for:
                return {}
            aggnonces = self._aggregate_nonces()
            return {
                c: wire.NodeValues(
                    wire.MsgType.AGG_NONCES, self.session, tuple((n, aggnonces[n]) for n in nodes)
                ).encode()
                for c, nodes in self.client_nodes.items()
            }
        if (
            msg.type is wire.MsgType.PARTIAL_SIGS
            and self.state is CoordinatorState.COLLECTING_PSIGS
        ):
            if client in self._psigs:
                raise CeremonyError(f"client {client}: partial signatures sent twice")
            self._psigs[client] = values
            return self._aggregate_signatures() if not self.waiting_for else {}
        raise CeremonyError(f"client {client}: unexpected {msg.type.name} in {self.state.value}")

    def _aggregate_nonces(self) -> dict[int, bytes]:
        """Every node's aggregate nonce (and signing session); blames a client's invalid nonce."""
        aggnonces = {}
        for n in self.nodes:
            pubs = [self._pubnonces[c][n] for c in self.factory.signers(n)]
            pubs.append(self._lsp_nonces[n][1])
            try:
                aggnonces[n] = musig2.nonce_agg(pubs)
            except MuSigError:
                for c in self.factory.signers(n):  # find whose nonce is invalid
                    try:
                        musig2.nonce_agg([self._pubnonces[c][n]])
                    except MuSigError as e:
                        raise CeremonyError(f"client {c}: invalid nonce for node {n}") from e
                raise
            self._sessions[n] = musig2.Session.create(
                aggnonces[n], self.txs[n].sighash, self._keyaggs[n]
            )
        self.state = CoordinatorState.COLLECTING_PSIGS
        return aggnonces

    def _aggregate_signatures(self) -> dict[int, bytes]:
        f = self.factory
        for n in self.nodes:
            session = self._sessions[n]
            secnonce, lsp_pubnonce = self._lsp_nonces.pop(n)
            psigs: dict[int | None, bytes] = {c: self._psigs[c][n] for c in f.signers(n)}
            psigs[None] = musig2.partial_sign(secnonce, self.lsp_seckey, session)
            try:
                sig = musig2.partial_sig_agg(list(psigs.values()), session)
                ok = _verify_final(self.txs[n], self._keyaggs[n], sig)
            except MuSigError:
                ok = False
            if not ok:
                pubnonces: dict[int | None, bytes] = {
                    c: self._pubnonces[c][n] for c in f.signers(n)
                }
                pubnonces[None] = lsp_pubnonce
                pubkeys: dict[int | None, bytes] = {c: f.client_pubkeys[c] for c in f.signers(n)}
                pubkeys[None] = f.lsp_pubkey
                self._lsp_nonces.clear()
                raise blame(f"node {n}", session, psigs, pubnonces, pubkeys)
            self.signed[n] = SignedNodeTx(self.txs[n], sig)
        self.state = CoordinatorState.DONE
        return {
            c: wire.NodeValues(
                wire.MsgType.SIGNATURES,
                self.session,
                tuple((n, self.signed[n].signature) for n in nodes),
            ).encode()
            for c, nodes in self.client_nodes.items()
        }
