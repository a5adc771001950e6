"""What the LSP checks of, and tells, the clients of a creation: each ACCEPT's nonces, whom an
invalid partial signature blames, what an abort tells each client, and the funding amount of a
proposed shape before any key is known (`probe_factory`)."""

from __future__ import annotations

import hashlib

from ...engine import musig2, protocol, store
from ...engine.errors import CeremonyError, MuSigError
from ...engine.tree import ClientSlot, Factory, FactoryParams, Topology


def probe_factory(
    params: FactoryParams, lsp_pub: bytes, channel_sat: list[int], timeout: int
) -> Factory:
    """A factory with stand-in keys and P2WSH scripts: amounts depend only on script sizes."""
    slots = []
    for i, sat in enumerate(channel_sat):
        pk = musig2.pubkey_from_secret(hashlib.sha256(b"probe%d" % i).digest())
        slots.append(ClientSlot(pk, b"\x00\x20" + bytes(32), sat))
    return Factory.create(params, lsp_pub, slots, timeout)


GENERIC_ABORT = "the LSP aborted the factory's creation"


def reason_for(client: str, reason: str, clients: list[str]) -> str:
    """What one client is told of an abort: the reason when it names no other client and no
    internal detail of ours, else a generic one (a co-client's id or words are not its business)."""
    if "internal error" in reason or any(c != client and c in reason for c in clients):
        return GENERIC_ABORT
    return reason


def culprit(clients: tuple[store.ClientEntry, ...], signer: str, peer: str) -> str:
    """The node id of the engine's "client <index>" (an invalid partial signature is found when
    the last one arrives, from whoever sent it), else the sender's."""
    index = signer.removeprefix("client ")
    return clients[int(index)].node_id if index.isdigit() and int(index) < len(clients) else peer


def accepted_nonces(topology: Topology, index: int, p: protocol.Accept) -> dict[int, bytes]:
    """The ACCEPT's nonces: one valid nonce per node of the client's path (checked now, so a
    bad one aborts before any channel is opened, naming its client)."""
    nonces = dict(p.nonces)
    if not nonces:
        raise CeremonyError(
            "its ACCEPT has no nonces (an older superscalar: both sides need this version)"
        )
    if set(nonces) != set(topology.client_path(index)):
        raise CeremonyError("its nonces are not for the nodes of its path")
    for node, nonce in nonces.items():
        try:
            musig2.nonce_agg([nonce])  # parses both points
        except MuSigError as e:
            raise CeremonyError(f"its nonce for node {node} is invalid: {e}") from e
    return nonces
