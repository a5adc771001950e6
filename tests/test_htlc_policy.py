"""HTLC and invoice rules on factory channels."""

from __future__ import annotations

from superscalar_plugin.engine.policy import (
    EXPIRY_TOO_FAR,
    EXPIRY_TOO_SOON,
    INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS,
    ChannelGuard,
    htlc_failure,
    invoice_cltv,
)

GUARD = ChannelGuard(early_warning_time=100, timeout_height=5000)


def test_htlcs_inside_the_window_pass() -> None:
    assert htlc_failure(1101, 1000, GUARD, 5000, final=False) is None  # exactly height + EWT + 1
    assert htlc_failure(4900, 1000, GUARD, 5000, final=True) is None  # exactly timeout - EWT


def test_too_soon_and_too_late_fail_with_the_bolt4_codes() -> None:
    soon = htlc_failure(1100, 1000, GUARD, 5000, final=False)
    assert soon is not None and int.from_bytes(soon[:2], "big") == EXPIRY_TOO_SOON
    late = htlc_failure(4901, 1000, GUARD, 5000, final=False)
    assert late == EXPIRY_TOO_FAR.to_bytes(2, "big")
    payee = htlc_failure(1050, 1000, GUARD, 5000, final=True)
    assert (
        payee is not None
        and int.from_bytes(payee[:2], "big") == INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
    )
    assert (
        int.from_bytes(payee[2:10], "big") == 5000 and int.from_bytes(payee[10:14], "big") == 1000
    )


def test_invoice_cltv_is_raised_by_the_ewt_but_capped() -> None:
    assert invoice_cltv(18, 100, 2016) == 118
    assert invoice_cltv(18, 2100, 2016) == 2016
    # never so short that the HTLC itself would start an exit (EWT + margin) at the next block
    assert invoice_cltv(5, 39, 2016, exit_margin=12) == 14 + 39
    assert invoice_cltv(18, 39, 2016, exit_margin=12) == 18 + 39
