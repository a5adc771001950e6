"""The solvency guard's rules (engine/solvency.py), each refusal by its kind."""

from __future__ import annotations

import hashlib

import pytest

from superscalar_plugin.engine import musig2, solvency
from superscalar_plugin.engine.solvency import (
    BoundChannel,
    HeldChannel,
    MoveTarget,
    SolvencyRefused,
    Step,
)

TXID = "11" * 32
CLOSING = ("CLOSINGD_COMPLETE",)


def _key(seed: bytes) -> bytes:
    return musig2.pubkey_from_secret(hashlib.sha256(seed).digest())


def _bound(**changes: object) -> BoundChannel:
    fields: dict[str, object] = {
        "channel_id": "aa" * 32,
        "local_funding_key": _key(b"local"),
        "remote_funding_key": _key(b"remote"),
        "funding_txid": TXID,
        "funding_vout": 1,
        "funding_sat": 50_000,
    }
    fields.update(changes)
    return BoundChannel(**fields)  # type: ignore[arg-type]


def _kind(call: object) -> str:
    assert callable(call)
    with pytest.raises(SolvencyRefused) as e:
        call()
    return e.value.kind


def test_the_bound_script_is_bolt3s_sorted_2_of_2() -> None:
    b = _bound()
    a, c = sorted((b.local_funding_key, b.remote_funding_key))
    assert b.witness_script() == bytes([0x52, 33]) + a + bytes([33]) + c + bytes([0x52, 0xAE])
    assert (
        _bound(
            local_funding_key=b.remote_funding_key, remote_funding_key=b.local_funding_key
        ).script_pubkey()
        == b.script_pubkey()
    )


def test_a_channel_output_is_signed_only_when_bound_exactly() -> None:
    b = _bound()
    spk = b.script_pubkey()

    def check(
        bound: BoundChannel | None,
        txid: str = TXID,
        vout: int = 1,
        script: bytes = spk,
        sat: int = 50_000,
    ) -> object:
        return lambda: solvency.check_channel_bound(
            Step.TREE_SIGNATURE, bound, txid, vout, script, sat
        )

    solvency.check_channel_bound(Step.TREE_SIGNATURE, b, TXID, 1, spk, 50_000)
    assert _kind(check(None)) == "channel_unbound"
    assert _kind(check(b, txid="22" * 32)) == "channel_outpoint"
    assert _kind(check(b, vout=0)) == "channel_outpoint"
    assert _kind(check(b, sat=49_999)) == "channel_amount"
    other = _bound(remote_funding_key=_key(b"lsp's other key")).script_pubkey()
    assert _kind(check(b, script=other)) == "channel_script"
    # A channel our node already closes (e.g. a stalled sale's, closed by the LSP then) takes no
    # signature: money signed into it could never be used (red team, round 9).
    solvency.check_channel_bound(Step.TREE_SIGNATURE, _bound(state=2), TXID, 1, spk, 50_000)
    for closing in (4, 5, 6, 7, 8, 9, 10, 13, 99):
        assert _kind(check(_bound(state=closing))) == "channel_state", closing


def test_a_move_pays_only_a_capped_fee_into_a_confirmed_target() -> None:
    good = MoveTarget("cc" * 32, 3, True, "factory x")
    solvency.check_move_payment(1_000_000, 100_000, 100_000, good, 3)
    assert (
        _kind(lambda: solvency.check_move_payment(1_000_000, 100_001, 100_000, good, 3))
        == "fee_above_cap"
    )
    shallow = MoveTarget("cc" * 32, 2, True, "factory x")
    assert _kind(lambda: solvency.check_move_payment(1, 0, 0, shallow, 3)) == "target_unconfirmed"
    unchecked = MoveTarget("cc" * 32, 9, False, "factory x")
    assert _kind(lambda: solvency.check_move_payment(1, 0, 0, unchecked, 3)) == "target_unchecked"
    assert _kind(lambda: solvency.check_move_payment(0, 0, 0, good, 3)) == "amount"


def test_what_arrived_is_what_was_sent_less_the_cap() -> None:
    solvency.check_move_arrived(1_000_100, 1_000_000, 100)
    assert _kind(lambda: solvency.check_move_arrived(1_000_101, 1_000_000, 100)) == "move_short"
    assert _kind(lambda: solvency.check_move_arrived(1_000, 0, 10_000)) == "move_short"


def test_the_key_leaves_only_when_every_channel_of_the_factory_is_empty() -> None:
    leaf = HeldChannel("01" * 32, "CLOSINGD_COMPLETE", 546_000, 0)
    sale = HeldChannel("02" * 32, "CHANNELD_NORMAL", 400_000, 0)
    target = MoveTarget("cc" * 32, 3, True, "factory x")

    def hand(
        leaf: HeldChannel | None, *others: HeldChannel, target: MoveTarget | None = target
    ) -> object:
        return lambda: solvency.check_key_handover(leaf, others, 1_000_000, CLOSING, target, 3)

    solvency.check_key_handover(leaf, (), 1_000_000, CLOSING, target, 3)
    solvency.check_key_handover(None, (), 1_000_000, CLOSING, None, 3)
    # One allowance in all: 546 + 400 sat is fine, a second sale channel's 400 sat is not.
    solvency.check_key_handover(leaf, (sale,), 1_000_000, CLOSING, target, 3)
    assert (
        _kind(hand(leaf, sale, HeldChannel("03" * 32, "CHANNELD_NORMAL", 100_000, 0)))
        == "balance_left"
    )
    assert _kind(hand(HeldChannel("01" * 32, "CHANNELD_NORMAL", 0, 0))) == "not_closing"
    # An HTLC anywhere (a sale channel's included) keeps the key, whatever the balances say.
    assert _kind(hand(leaf, HeldChannel("02" * 32, "CHANNELD_NORMAL", 0, 1))) == "htlcs"
    assert _kind(hand(leaf, target=MoveTarget("cc" * 32, 0, True, "f"))) == "target_unconfirmed"
    with pytest.raises(SolvencyRefused) as e:
        hand(leaf, target=MoveTarget("cc" * 32, 9, False, "f"))()  # type: ignore[operator]
    assert e.value.step is Step.KEY_HANDOVER


class _FailingRpc:
    def call(self, method: str, params: object = None) -> object:
        raise RuntimeError(f"{method}: lightningd is gone")


def test_an_rpc_error_is_never_no_channels() -> None:
    from superscalar_plugin.plugin.lightningd.config import Config
    from superscalar_plugin.plugin.lightningd.node import ChannelsUnavailable, Node

    node = Node(_FailingRpc(), Config())  # type: ignore[arg-type]
    with pytest.raises(ChannelsUnavailable, match="listpeerchannels failed"):
        node.channels()
