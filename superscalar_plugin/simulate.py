"""Participants with deterministic keys, for the demo, the benchmarks and the tests.

A real LSP gets its keys from lightningd (`makesecret`) and the channel scripts from
`fundchannel_start`; here both are derived from a seed so runs are reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .engine import musig2
from .engine.ceremony import ClientTerms
from .engine.tree import ClientSlot, Factory, FactoryParams


def seckey(seed: str, label: str) -> bytes:
    return hashlib.sha256(f"superscalar-sim/{seed}/{label}".encode()).digest()


def channel_script(client_pubkey: bytes, lsp_pubkey: bytes) -> bytes:
    """Core Lightning's channel funding output: P2WSH of a sorted 2-of-2 multisig."""
    a, b = sorted([client_pubkey, lsp_pubkey])
    witness_script = b"\x52\x21" + a + b"\x21" + b + b"\x52\xae"
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


@dataclass(frozen=True)
class Participants:
    lsp_seckey: bytes
    client_seckeys: tuple[bytes, ...]
    factory: Factory


def make_factory(
    n_clients: int,
    params: FactoryParams,
    timeout_height: int,
    channel_sat: int = 200_000,
    seed: str = "demo",
) -> Participants:
    lsp_sk = seckey(seed, "lsp")
    lsp_pk = musig2.pubkey_from_secret(lsp_sk)
    client_sks = tuple(seckey(seed, f"client-{i}") for i in range(n_clients))
    slots = []
    for sk in client_sks:
        pk = musig2.pubkey_from_secret(sk)
        slots.append(ClientSlot(pk, channel_script(pk, lsp_pk), channel_sat))
    return Participants(lsp_sk, client_sks, Factory.create(params, lsp_pk, slots, timeout_height))


def agreed_terms(f: Factory, client: int, with_script: bool = True) -> ClientTerms:
    """What `client` agreed to at PROPOSE for factory `f` (with its channel's script, if known)."""
    script, sat = f.channels[client]
    return ClientTerms(
        f.lsp_pubkey,
        f.timeout_height,
        script if with_script else None,
        sat,
        n_clients=f.n_clients,
        client_index=client,
        params=f.params,
        early_warning_time=f.topology.ewt,
    )
