"""The guards of a sale that no hostile LSP can claw back (issue 16): when a co-signer may burn a
stock (`solvency.check_burn_publish`), and the floor a client puts on the stock's delay before it
joins (`client.refusal`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from superscalar_plugin.engine import musig2, protocol
from superscalar_plugin.engine.sale_store import Payment
from superscalar_plugin.engine.solvency import SolvencyRefused, Step, StockSpend, check_burn_publish
from superscalar_plugin.engine.tree import FactoryParams, Topology
from superscalar_plugin.plugin.creation.client import refusal
from superscalar_plugin.plugin.lightningd.config import Config
from superscalar_plugin.plugin.lightningd.node import Node

T = 1000
OPENS = T + 1  # the block from which the LSP's own path on the stock is valid
STALLED = StockSpend(
    sale_txid="ab" * 32,
    we_are_buyer=True,
    sale_complete=False,
    burn_signed=True,
    stock_on_chain=True,
    sale_on_chain=False,
)


def test_the_buyer_of_a_stalled_sale_burns_it_when_the_lsps_path_opens() -> None:
    check_burn_publish(STALLED, OPENS - 1, OPENS)  # the tip one before: the burn goes in with it
    check_burn_publish(STALLED, T + 50, OPENS)
    check_burn_publish(STALLED, T + 200, T + 144)


def test_no_burn_before_the_lsps_path_opens_however_long_after_T() -> None:
    """A stock confirmed late: its L-only path opens `stock_delay` after it, well past T; until
    then a complete sale held by an absent buyer may still confirm (red team, hole 2)."""
    with pytest.raises(SolvencyRefused, match="before_lsp_path"):
        check_burn_publish(STALLED, T + 100, T + 144)


@pytest.mark.parametrize(
    ("change", "height", "kind"),
    [
        ({"sale_complete": True}, T, "sale_complete"),  # publish the sale, never its burn
        ({"sale_complete": True, "we_are_buyer": False}, T, "sale_complete"),
        # A co-signer never burns another client's sale: a buyer withholding its own signature
        # would otherwise get honest clients to destroy the LSP's stock (red team, hole 1).
        ({"we_are_buyer": False}, T, "not_our_purchase"),
        ({"burn_signed": False}, T, "burn_unsigned"),
        # A purchase that cost us nothing (a gift, or our payment failed back: a co-client's
        # stall) is never burnt: it would only destroy the LSP's stock (red team, round 8).
        ({"paid": False}, T, "nothing_paid"),
        ({"sale_on_chain": True}, T, "sale_on_chain"),
        ({"stock_on_chain": False}, T, "stock_off_chain"),
        ({}, OPENS - 2, "before_lsp_path"),
    ],
)
def test_a_burn_is_refused_by_the_solvency_guard_naming_why(
    change: dict[str, bool], height: int, kind: str
) -> None:
    with pytest.raises(SolvencyRefused) as e:
        check_burn_publish(replace(STALLED, **change), height, OPENS)
    assert e.value.step is Step.BURN_PUBLISH and e.value.kind == kind
    assert "burn_publish refused" in str(e.value)


LSP_KEY = musig2.pubkey_from_secret(bytes([7]) * 32)
LSP = LSP_KEY.hex()


def _propose(stock_delay: int) -> protocol.Propose:
    params = FactoryParams(stock_delay=stock_delay)
    return protocol.Propose(
        instance_id=bytes(32),
        client_index=0,
        n_clients=4,
        params=params,
        timeout_height=5000,
        lsp_pubkey=LSP_KEY,
        channel_sat=200_000,
        early_warning_time=Topology.build(4, params).ewt,
    )


def test_a_client_refuses_a_stock_delay_below_its_floor() -> None:
    """With a stock delay of 1 the LSP could take an unconfirmed sale one block after its stock
    confirmed (after T): refused below `superscalar-min-stock-delay` (144 by default)."""
    cfg = Config(accept_from=frozenset({LSP}))
    assert cfg.min_stock_delay == 144
    why = refusal(LSP, _propose(1), cfg, 100)
    assert why is not None and "stock delay 1 blocks is below our floor of 144" in why
    assert refusal(LSP, _propose(143), cfg, 100) is not None
    assert refusal(LSP, _propose(144), cfg, 100) is None
    stricter = replace(cfg, min_stock_delay=288)
    assert refusal(LSP, _propose(144), stricter, 100) is not None


class _Pays:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def call(self, method: str, payload: dict[str, object] | None = None) -> object:
        assert method == "listsendpays" and payload == {"payment_hash": "ab" * 32}
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("statuses", "seen"),
    [
        (["failed", "complete"], Payment.PAID),  # a part settled: the LSP has our money
        (["failed", "pending"], Payment.PENDING),
        (["failed", "failed"], Payment.FAILED),  # every part failed back: we paid nothing
        (["failed", "weird"], Payment.PENDING),  # a status we do not know: not "failed"
        ([], None),  # none listed (autoclean may delete a settled one): nothing concluded
    ],
)
def test_a_buyer_reads_what_it_paid_from_its_own_node(
    statuses: list[str], seen: Payment | None
) -> None:
    pays = {"payments": [{"status": s} for s in statuses]}
    assert Node(_Pays(pays), Config()).payment("ab" * 32) is seen  # type: ignore[arg-type]


def test_a_buyer_concludes_nothing_when_its_node_cannot_say() -> None:
    for answer in (RuntimeError("rpc down"), {"payments": "x"}):
        assert Node(_Pays(answer), Config()).payment("ab" * 32) is None  # type: ignore[arg-type]
