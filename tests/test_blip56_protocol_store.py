"""bLIP-56 envelope, SuperScalar payloads and stored records: round trips and strict refusals."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random

import pytest

from superscalar_plugin.engine import blip56, protocol, store
from superscalar_plugin.engine.errors import StoreError, SuperscalarError, WireError
from superscalar_plugin.engine.tree import FactoryParams

from adversarial.records import client_record, lsp_record

INSTANCE = bytes(range(32))
KEY = bytes.fromhex("02" + "11" * 32)


def test_protocol_id_is_sha256_of_name_and_major_version() -> None:
    import hashlib

    assert hashlib.sha256(b"superscalar_v1").digest() == blip56.SUPERSCALAR_PROTOCOL_ID


def test_bigsize_is_canonical() -> None:
    for n in (0, 0xFC, 0xFD, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000):
        assert blip56.decode_bigsize(blip56.encode_bigsize(n), 0) == (
            n,
            len(blip56.encode_bigsize(n)),
        )
    with pytest.raises(WireError, match="non-canonical"):
        blip56.decode_bigsize(b"\xfd\x00\x10", 0)


def test_envelope_round_trip_and_refusals() -> None:
    hello = blip56.SupportedProtocols((blip56.SUPERSCALAR_PROTOCOL_ID, bytes(32)))
    assert blip56.decode_factory_message(hello.encode()) == hello
    pig = blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, b"payload")
    assert blip56.decode_factory_message(pig.encode()) == pig
    raw = pig.encode()
    assert raw[:2] == (32800).to_bytes(2, "big") and raw[2:4] == b"\x00\x04"
    with pytest.raises(WireError, match="multiple of 32"):
        blip56.decode_factory_message(b"\x80\x20\x00\x02" + blip56.encode_tlvs({512: b"x" * 33}))
    with pytest.raises(WireError, match="unknown even"):
        blip56.decode_factory_message(raw + blip56.encode_tlvs({2000: b""}))
    # unknown odd TLVs are fine ("it's okay to be odd")
    assert blip56.decode_factory_message(raw + blip56.encode_tlvs({2001: b"z"})) == pig
    with pytest.raises(WireError, match="strictly increasing"):
        blip56.decode_tlvs(
            blip56.encode_tlvs({1024: b""}) + blip56.encode_tlvs({0: b""}), frozenset({0, 1024})
        )
    with pytest.raises(WireError, match="unsupported factory submessage"):
        blip56.decode_factory_message(b"\x80\x20\x00\x06")
    record = blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, INSTANCE, 252)
    assert len(record.encode()) == 66 and blip56.ChannelInFactory.decode(record.encode()) == record


PAYLOADS: list[protocol.Payload] = [
    protocol.Propose(INSTANCE, 3, 8, FactoryParams(arity=(2, 4)), 900_000, KEY, 250_000, 252),
    protocol.Accept(INSTANCE, KEY),
    protocol.Text(protocol.PayloadType.REJECT, INSTANCE, "no thanks ✓"),
    protocol.Text(protocol.PayloadType.ABORT, INSTANCE, "client x went silent"),
    protocol.InFactory(
        INSTANCE, blip56.ChannelInFactory(blip56.SUPERSCALAR_PROTOCOL_ID, INSTANCE, 9)
    ),
    protocol.Ceremony(INSTANCE, b"\x02" + bytes(40)),
    protocol.Stored(INSTANCE, bytes(32)),
    protocol.Funded(INSTANCE, "ab" * 32, 1),
    protocol.Move(INSTANCE, protocol.MoveTarget.FACTORY, bytes(range(32))),
    protocol.Move(INSTANCE, protocol.MoveTarget.CHANNEL, bytes(32)),
    protocol.Key(INSTANCE, bytes(range(32, 64))),
]


def test_a_move_to_an_unknown_kind_of_target_is_refused() -> None:
    data = bytearray(protocol.encode(PAYLOADS[-2]))
    data[33] = 7  # the target kind
    with pytest.raises(WireError, match="move target kind"):
        protocol.decode(bytes(data))


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_payload_round_trip(payload: protocol.Payload) -> None:
    data = protocol.encode(payload)
    assert protocol.decode(data) == payload
    if not isinstance(payload, protocol.Ceremony):  # ceremony bodies run to the end
        with pytest.raises(WireError):
            protocol.decode(data + b"\x00")
    with pytest.raises(WireError):
        protocol.decode(data[:20])


def test_mutated_payloads_never_raise_anything_else() -> None:
    rng = random.Random(3)
    blobs = [protocol.encode(p) for p in PAYLOADS]
    for _ in range(3000):
        data = bytearray(rng.choice(blobs))
        data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(SuperscalarError):
            protocol.decode(bytes(data))


def _lsp_record() -> store.LspRecord:
    """A real LSP record (tree from an honest ceremony) with every optional field set."""
    return lsp_record().replace(
        state=store.LspState.SIGNING,
        funding_psbt="cHNidP8=",
        confirmed=(("cd" * 32, 101),),
        exit=store.ExitState(
            "timeout near", 4000, (0,), (("ab" * 32, 4001),), ("ab" * 32,), ("11" * 32,)
        ),
        sweeps=(("ab" * 32 + ":1", "00"),),
        wind_down=store.WindDown.MIGRATE,
        successors=("ef" * 32,),
        clients=tuple(
            dataclasses.replace(c, moved_to="12" * 32, refusal="not yet")
            for c in lsp_record().clients
        ),
    )


def _client_record() -> store.ClientRecord:
    return client_record().replace(confirmed=(("cd" * 32, 101),), moving_to="34" * 32)


@pytest.mark.parametrize("record", [_lsp_record(), _client_record()], ids=["lsp", "client"])
def test_records_round_trip_through_json(record: store.Record) -> None:
    text = json.dumps(store.to_json(record))
    assert store.from_json(json.loads(text)) == record


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(version=2), "unknown record version"),
        (lambda d: d.update(kind="other"), "unknown record kind"),
        (lambda d: d.update(state="flying"), "invalid value"),
        (lambda d: d.update(instance_id="zz"), "not hex"),
        (lambda d: d.update(instance_id="00"), "32 bytes"),
        (lambda d: d.update(timeout_height="5000"), "integer"),
        (lambda d: d["params"].update(step_blocks=0), "params invalid"),
        (lambda d: d["params"].pop("arity"), "params fields"),
        (lambda d: d.pop("lsp_pubkey"), "missing"),
        (lambda d: d["clients"].append("x"), "client entry"),
        (lambda d: d["confirmed"].append(["x"]), "pairs"),
        (lambda d: d["exit"].update(clients=["a"]), "exit.clients"),
        (lambda d: d["tree"].append(1), "tree entry"),
        (lambda d: d.update(wind_down="explode"), "invalid value"),
        (lambda d: d.update(successors=["00"]), "32 bytes"),
        (lambda d: d.update(successors="ab"), "must be a list"),
        (lambda d: d["clients"][0].update(handed_key="zz"), "not hex"),
        (lambda d: d["clients"][0].update(moved_to="00" * 31), "32 bytes"),
        (lambda d: d.update(state="closed"), "handover_tx"),
        (lambda d: d.update(handover_tx="00"), "without every client's key"),
    ],
)
def test_bad_records_are_refused_with_a_reason(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    data = store.to_json(_lsp_record())
    mutate(data)
    with pytest.raises(StoreError, match=needle):
        store.from_json(data)
