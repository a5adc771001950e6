"""The fuzz targets: each takes one input and returns normally or raises a `SuperscalarError`;
anything else is a crash. Seeds are valid inputs that the mutation strategies start from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import strategies as st

from superscalar_plugin.engine import blip56, dw, protocol, store, wire
from superscalar_plugin.engine.ceremony import (
    Coordinator,
    SignedNodeTx,
    Signer,
    SignerState,
)
from superscalar_plugin.engine.client_checks import ClientPolicy
from superscalar_plugin.engine.sale import Sale, StockChain
from superscalar_plugin.engine.sale_sign import SaleCoordinator, SaleCosigner
from superscalar_plugin.engine.tree import FactoryParams
from superscalar_plugin.engine.tx import Tx
from superscalar_plugin.simulate import Participants, agreed_terms, make_factory

OUTPOINT = ("cd" * 32, 1)


@cache
def people() -> Participants:
    return make_factory(4, FactoryParams(states_per_layer=3), timeout_height=5000, seed="fuzz")


@dataclass(frozen=True)
class Ceremony:
    """One honest ceremony's messages, recorded once: the seeds of the state-machine targets."""

    requests: dict[int, bytes]
    nonces: dict[int, bytes]
    aggnonces: dict[int, bytes]
    psigs: dict[int, bytes]
    signatures: dict[int, bytes]
    signed: Signer  # client 0 after the ceremony


@cache
def ceremony() -> Ceremony:
    p = people()
    f = p.factory
    co = Coordinator(f, p.lsp_seckey, OUTPOINT, dw.initial_states(f.topology))
    signers = {c: Signer(sk, agreed_terms(f, c)) for c, sk in enumerate(p.client_seckeys)}
    requests = co.start()
    nonces = {c: signers[c].receive(m) for c, m in requests.items()}
    aggnonces: dict[int, bytes] = {}
    for c, m in nonces.items():
        assert m is not None
        aggnonces.update(co.receive(c, m))
    psigs = {c: signers[c].receive(m) for c, m in aggnonces.items()}
    signatures: dict[int, bytes] = {}
    for c, m in psigs.items():
        assert m is not None
        signatures.update(co.receive(c, m))
    for c, m in signatures.items():
        signers[c].receive(m)
    return Ceremony(
        requests,
        {c: m for c, m in nonces.items() if m is not None},
        aggnonces,
        {c: m for c, m in psigs.items() if m is not None},
        signatures,
        signers[0],
    )


def wire_seeds() -> list[bytes]:
    c = ceremony()
    return [
        c.requests[0],
        c.nonces[0],
        c.aggnonces[0],
        c.psigs[0],
        c.signatures[0],
        wire.Abort(bytes(32), "bye").encode(),
    ]


def protocol_seeds() -> list[bytes]:
    inst = bytes(range(32))
    key = people().factory.lsp_pubkey
    return [
        protocol.encode(p)
        for p in (
            protocol.Propose(inst, 1, 4, FactoryParams(arity=(2, 4)), 900_000, key, 250_000, 252),
            protocol.Accept(inst, key),
            protocol.Text(protocol.PayloadType.REJECT, inst, "no"),
            protocol.InFactory(
                inst, blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, inst, 9)
            ),
            protocol.Ceremony(inst, wire_seeds()[1]),
            protocol.Stored(inst, bytes(32)),
            protocol.Funded(inst, "ab" * 32, 1),
            protocol.Buy(inst, 50_000),
            protocol.Quote(inst, 50_000, 1500, "lnbcrt15u1p" + "q" * 200),
            protocol.Offer(inst, bytes(32), protocol.OfferKind.FACTORY, 50_000, 1500),
            sale().proposal(),
            protocol.SaleStep(inst, bytes(32), protocol.SaleStepKind.NONCES, bytes(132)),
            protocol.SaleStep(inst, bytes(32), protocol.SaleStepKind.DONE, b""),
        )
    ]


@cache
def sale() -> SaleCoordinator:
    """An honest sale of client 0's leaf's stock (the seed of the sale state-machine targets)."""
    p = people()
    f = p.factory
    leaf = f.topology.leaf_of_client[0]
    leaf_txid = f.transactions(OUTPOINT, dw.initial_states(f.topology), [leaf])[leaf].txid
    chain = StockChain.of_leaf(f, leaf, leaf_txid)
    assert chain.latest is not None
    s = Sale(chain.latest, 0, 30_000, b"\x00\x20" + bytes(32), 2000)
    return SaleCoordinator(f, chain, s, p.lsp_seckey, bytes(32), bytes(32))


def fuzz_sale_cosigner(data: bytes) -> None:
    """A co-signer (client 1) receives any payload as a sale proposal: refused or checked."""
    p = people()
    co = sale()
    chain = StockChain.of_leaf(p.factory, co.sold.sale.stock.leaf, co.sold.sale.stock.txid)
    proposal = protocol.decode(data)
    if isinstance(proposal, protocol.SaleProposal):
        SaleCosigner(p.factory, 1, p.client_seckeys[1], chain, proposal, ClientPolicy())


def fuzz_sale_coordinator(data: bytes) -> None:
    """The LSP, collecting a sale's nonces, receives any payload from client 1."""
    p = people()
    f = p.factory
    base = sale()
    chain = StockChain.of_leaf(f, base.sold.sale.stock.leaf, base.sold.sale.stock.txid)
    co = SaleCoordinator(f, chain, base.sold.sale, p.lsp_seckey, bytes(32), bytes(32))
    step = protocol.decode(data)
    if isinstance(step, protocol.SaleStep):
        co.receive(1, step)


def blip56_seeds() -> list[bytes]:
    return [
        blip56.SupportedProtocols((blip56.SUPERSCALAR_PROTOCOL_ID,)).encode(),
        blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, protocol_seeds()[0]).encode(),
    ]


def record_seeds() -> list[dict[str, Any]]:
    from adversarial.records import client_record, lsp_record, sold_records

    sold = sold_records()
    return [
        store.to_json(client_record()),
        store.to_json(lsp_record()),
        *(store.to_json(r) for r in sold),
    ]


# --- targets over bytes ------------------------------------------------------------------------


def fuzz_wire(data: bytes) -> None:
    msg = wire.decode(data)
    assert wire.decode(msg.encode()) == msg  # what parses re-encodes to the same value


def fuzz_header(data: bytes) -> None:
    wire.FactoryHeader.from_bytes(data)


def fuzz_protocol(data: bytes) -> None:
    protocol.decode(data)


def fuzz_blip56(data: bytes) -> None:
    blip56.decode_factory_message(data)
    blip56.decode_tlvs(data, frozenset({0, 512, 1024}))
    if data:
        blip56.decode_bigsize(data, 0)
    if len(data) == 66:
        blip56.ChannelInFactory.decode(data)


def fuzz_tx(data: bytes) -> None:
    Tx.deserialize(data)


def fuzz_signer_fresh(data: bytes) -> None:
    """A client that agreed to slot 0 receives anything as its first message."""
    p = people()
    signer = Signer(p.client_seckeys[0], agreed_terms(p.factory, 0))
    signer.receive(data)


def fuzz_signer_mid(data: bytes) -> None:
    """A client that sent its nonces receives anything (mutated aggregate nonces, ...)."""
    p = people()
    signer = Signer(p.client_seckeys[0], agreed_terms(p.factory, 0))
    signer.receive(ceremony().requests[0])
    try:
        signer.receive(data)
    finally:
        signer.forget()


def fuzz_signer_done(data: bytes) -> None:
    """A signed client receives anything: it may refuse, but never leaves DONE nor changes its
    path (checked here: an assertion failure is a crash)."""
    done = ceremony().signed
    assert done.header is not None
    path = [
        SignedNodeTx.from_raw(s.node, s.raw(), s.unsigned.spent_amount, s.unsigned.spent_script)
        for s in done.signed_path
    ]
    signer = Signer.restore(done.seckey, done.terms, done.policy, done.header, path, done.states)
    before = [s.txid for s in signer.signed_path]
    try:
        signer.receive(data)
    finally:
        assert signer.state is SignerState.DONE
        assert [s.txid for s in signer.signed_path] == before


def fuzz_signer_update(data: bytes) -> None:
    """A signed client that agreed to one update receives anything: whatever happens, it ends
    DONE, and its path changes only by a newer state it fully checked (never a kickoff first)."""
    done = ceremony().signed
    assert done.header is not None
    signer = Signer.restore(
        done.seckey, done.terms, done.policy, done.header, done.signed_path, done.states
    )
    signer.agree_update(done.terms)
    try:
        signer.receive(data)
    finally:
        signer.forget()
        assert signer.state is SignerState.DONE
        assert [s.txid for s in signer.signed_path] == [s.txid for s in done.signed_path]


def _update_request() -> bytes:
    p = people()
    f = p.factory
    adv = dw.advance_leaf(f.topology, dw.initial_states(f.topology), f.topology.leaf_of_client[0])
    co = Coordinator(f, p.lsp_seckey, OUTPOINT, adv.states, adv.resigned)
    return co.start()[0]


def _coordinator() -> Coordinator:
    p = people()
    f = p.factory
    c = ceremony()
    session = wire.decode(c.requests[0]).session
    return Coordinator(f, p.lsp_seckey, OUTPOINT, dw.initial_states(f.topology), session=session)


def fuzz_coordinator_nonces(data: bytes) -> None:
    """The LSP, collecting nonces, receives anything from client 0."""
    _coordinator().receive(0, data)


def fuzz_coordinator_psigs(data: bytes) -> None:
    """The LSP, collecting partial signatures, receives anything from client 0 (the others'
    honest nonces are in; client 0's are the recorded ones)."""
    co = _coordinator()
    c = ceremony()
    for client, m in c.nonces.items():
        co.receive(client, m)
    co.receive(0, data)


BYTE_TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]] = {
    "wire.decode": (fuzz_wire, wire_seeds),
    "wire.FactoryHeader": (fuzz_header, lambda: [wire.decode(wire_seeds()[0]).header.encode()]),  # type: ignore[union-attr]
    "protocol.decode": (fuzz_protocol, protocol_seeds),
    "blip56": (fuzz_blip56, blip56_seeds),
    "tx.deserialize": (fuzz_tx, lambda: [s.raw() for s in ceremony().signed.signed_path]),
    "Signer (idle)": (fuzz_signer_fresh, wire_seeds),
    "Signer (nonces sent)": (fuzz_signer_mid, lambda: [ceremony().aggnonces[0], *wire_seeds()]),
    "Signer (done)": (fuzz_signer_done, wire_seeds),
    "Signer (update agreed)": (fuzz_signer_update, lambda: [_update_request(), *wire_seeds()]),
    "Coordinator (nonces)": (
        fuzz_coordinator_nonces,
        lambda: [ceremony().nonces[0], *wire_seeds()],
    ),
    "Coordinator (psigs)": (fuzz_coordinator_psigs, lambda: [ceremony().psigs[0], *wire_seeds()]),
    "SaleCosigner (proposal)": (fuzz_sale_cosigner, protocol_seeds),
    "SaleCoordinator (nonces)": (fuzz_sale_coordinator, protocol_seeds),
}


# --- the store: JSON in ------------------------------------------------------------------------


def fuzz_store(data: Any) -> None:
    store.from_json(json.loads(json.dumps(data)))


# --- strategies --------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid seed with a few byte-level edits: flips, overwrites, inserts, deletes, truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFD, 0xFE, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def byte_inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seeds), st.binary(max_size=300))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_record(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> Any:
    """A valid record with one value somewhere inside replaced by arbitrary JSON."""
    record = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    node: Any = record
    for _ in range(draw(st.integers(1, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            key = draw(st.integers(0, len(node) - 1))
        else:
            break
        if draw(st.booleans()) or not isinstance(node[key], dict | list):
            node[key] = draw(JSON)
            break
        node = node[key]
    return record


def record_inputs(seeds: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(mutated_record(seeds), JSON)
