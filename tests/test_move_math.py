"""The client's move across the LSP: how much it can move, and the LSP's fee, exactly."""

from __future__ import annotations

import pytest

from superscalar_plugin.plugin.lifecycle.move import forward_fee_msat, movable_msat


def test_the_forwarding_fee_follows_bolt7_rounded_up() -> None:
    assert forward_fee_msat(1_000_000, 1000, 10) == 1000 + 10
    assert forward_fee_msat(1, 1000, 10) == 1001  # a fraction of a msat rounds up
    assert forward_fee_msat(0, 0, 0) == 0


@pytest.mark.parametrize(
    ("spendable", "receivable", "base", "ppm"),
    [
        (30_000_000, 10**12, 1000, 10),
        (30_000_000, 10**12, 0, 0),
        (30_000_000, 10**12, 5000, 5000),
        (30_000_000, 1_000_000, 1000, 10),  # the target is the limit
        (999, 10**12, 1000, 10),  # less than the fee: nothing moves
        (123_456_789, 10**12, 1, 1),
    ],
)
def test_the_move_spends_everything_it_can_and_never_more(
    spendable: int, receivable: int, base: int, ppm: int
) -> None:
    amount = movable_msat(spendable, receivable, base, ppm)
    assert 0 <= amount <= receivable
    if amount:
        assert amount + forward_fee_msat(amount, base, ppm) <= spendable
    # one msat more would not fit (or would exceed what the target takes)
    more = amount + 1
    assert more > receivable or more + forward_fee_msat(more, base, ppm) > spendable
