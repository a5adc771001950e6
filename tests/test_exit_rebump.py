"""The exit machine bumps a stuck tx again when the fee market rises (issue 9, item 7)."""

from __future__ import annotations

from superscalar_plugin.engine.exit import Bump, ChainView, PathTx, exit_step

FUNDING = "ff" * 32
TX = PathTx(
    node=0,
    txid="aa" * 32,
    raw=b"\x00",
    relative_delay=0,
    vsize=200,
    fee=400,
    anchor_vout=1,
    anchor_sat=240,
)  # 2 sat/vB


def _view(rate_kvb: int, bumped: dict[str, int] | None = None) -> ChainView:
    return ChainView(
        height=110,
        confirmed={FUNDING: 100},
        in_mempool=frozenset({TX.txid}),
        fee_rate_kvb=rate_kvb,
        first_seen={TX.txid: 105},
        bumped=frozenset(bumped or {}),
        bump_rates=bumped or {},
    )


def test_a_stuck_tx_is_bumped_then_bumped_again_as_the_market_rises() -> None:
    [first] = exit_step(FUNDING, [TX], _view(6000))
    assert isinstance(first, Bump) and first.target_rate_kvb == 6000
    assert exit_step(FUNDING, [TX], _view(6000, {TX.txid: 6000})) == []  # market flat: done
    assert exit_step(FUNDING, [TX], _view(7000, {TX.txid: 6000})) == []  # +17%: not worth it
    [again] = exit_step(FUNDING, [TX], _view(25000, {TX.txid: 6000}))
    assert isinstance(again, Bump) and again.target_rate_kvb == 25000
    assert again.child_fee(150) == (200 + 150) * 25 - 400


def test_a_tx_paying_the_market_is_not_bumped() -> None:
    assert exit_step(FUNDING, [TX], _view(2000)) == []
