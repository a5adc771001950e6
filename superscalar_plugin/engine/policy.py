"""Exits and timeouts: what a client publishes to leave alone, and what the LSP takes after T.

- `plan_exit`: a client's unilateral exit as ordered steps, each with the earliest block it can
  confirm in, given when the funding output confirmed (each state waits out its nSequence delay).
- `timeout_sweep`: the LSP's script-path spend of a timeout-leaf output (the funding output or any
  published branch output) once the factory's absolute timeout has passed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import musig2
from .ceremony import SignedNodeTx
from .errors import InvalidAmount, InvalidParameter
from .taproot import TaprootOutput, taproot_sighash
from .tree import Factory, FactoryKeys, NodeKind, fee_for
from .tx import Tx, TxIn, TxOut

SEQUENCE_LOCKTIME_ENABLED = 0xFFFFFFFE  # lets nLockTime apply, no relative lock, no RBF signal


@dataclass(frozen=True)
class ExitStep:
    node: int
    kind: NodeKind
    txid: str
    raw: bytes
    relative_delay: int  # blocks after its parent confirms (BIP68)
    earliest_height: int  # first block it can confirm in, if every parent confirmed at once
    vsize: int
    fee: int


def plan_exit(
    keys: FactoryKeys,
    path: Sequence[SignedNodeTx],
    states: Sequence[int] | dict[int, int],
    funding_height: int,
) -> list[ExitStep]:
    """A client's unilateral exit: its signed path, root first, with the earliest heights.

    A tx without relative lock can confirm in the same block as its parent; a DW state with delay
    d can confirm from block parent_height + d on (BIP68)."""
    height = funding_height
    steps = []
    for signed in path:
        node = keys.topology.nodes[signed.node]
        delay = keys.topology.relative_delay(signed.node, states[signed.node])
        height += delay
        raw = signed.raw()
        tx = signed.unsigned.tx
        signed_tx = tx.with_witnesses([[signed.signature]])
        steps.append(
            ExitStep(
                signed.node,
                node.kind,
                signed.txid,
                raw,
                delay,
                height,
                signed_tx.vsize,
                signed.unsigned.spent_amount - sum(o.amount for o in tx.outputs),
            )
        )
    return steps


def timeout_sweep(
    keys: FactoryKeys,
    outpoint: tuple[str, int],
    output: TaprootOutput,
    amount: int,
    lsp_seckey: bytes,
    destination: bytes,
    fee_rate_kvb: int,
) -> bytes:
    """The LSP's sweep of a timeout-leaf output after the factory's timeout (script path).

    nLockTime = T, so the tx is final from block T+1 on; the leaf's CLTV checks the same T."""
    leaf = keys.timeout_leaf
    if leaf not in output.leaves:
        raise InvalidParameter("this output has no timeout leaf")
    if musig2.pubkey_from_secret(lsp_seckey) != keys.lsp_pubkey:
        raise InvalidParameter("the sweep key is not the factory's LSP key")
    control = output.control_block(leaf)
    # vsize: 1 in, 1 out; witness = sig(64) + script + control block.
    base = 4 + 1 + 41 + 1 + (9 + len(destination)) + 4
    witness = 2 + 1 + 65 + 1 + len(leaf.script) + 1 + len(control)
    vsize = (base * 4 + witness + 3) // 4
    fee = fee_for(vsize, fee_rate_kvb)
    if amount - fee < 330:
        raise InvalidAmount(f"output of {amount} sat cannot pay a {fee}-sat sweep fee")
    tx = Tx(
        2,
        (TxIn(outpoint[0], outpoint[1], SEQUENCE_LOCKTIME_ENABLED),),
        (TxOut(amount - fee, destination),),
        keys.timeout_height,
    )
    digest = taproot_sighash(tx, 0, [(amount, output.script_pubkey)], leaf=leaf)
    sig = musig2.schnorr_sign(digest, lsp_seckey)
    return tx.with_witnesses([[sig, leaf.script, control]]).serialize()


# --- HTLC and invoice rules on factory channels (bLIP-56) -------------------------------------

INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F  # PERM|15: what a payee says, to resist probing
EXPIRY_TOO_SOON = 0x100E  # UPDATE|14
EXPIRY_TOO_FAR = 0x0015  # 21


@dataclass(frozen=True)
class ChannelGuard:
    """What the HTLC rules need to know about one factory channel."""

    early_warning_time: int
    timeout_height: int

    @property
    def last_expiry(self) -> int:
        """The latest cltv_expiry an HTLC may have: it must be enforceable on chain, which takes
        the EWT, before the factory times out."""
        return self.timeout_height - self.early_warning_time


def htlc_failure(
    cltv_expiry: int,
    blockheight: int,
    guard: ChannelGuard,
    amount_msat: int,
    final: bool,
    margin: int = 0,
) -> bytes | None:
    """None to let the HTLC through, else the BOLT 4 failure message to fail it with. `margin`:
    blocks more that an HTLC we offer needs (our exit starts when one we offered comes within
    the EWT plus that margin of its expiry: one offered inside it would start it at once).

    bLIP-56: an HTLC on a factory channel needs cltv_expiry >= blockheight + EWT + 1 (there must be
    time to publish the tree before it expires), and it must expire no later than the factory's
    timeout minus the EWT (the seed's `blocks_early`)."""
    too_soon = cltv_expiry < blockheight + guard.early_warning_time + margin + 1
    too_late = cltv_expiry > guard.last_expiry
    if not (too_soon or too_late):
        return None
    if final:
        return unknown_payment_details(amount_msat, blockheight)
    if too_soon:
        return EXPIRY_TOO_SOON.to_bytes(2, "big") + (0).to_bytes(2, "big")  # empty channel_update
    return EXPIRY_TOO_FAR.to_bytes(2, "big")


def unknown_payment_details(amount_msat: int, blockheight: int) -> bytes:
    """BOLT 4 `incorrect_or_unknown_payment_details`: how a payee fails an HTLC it will not take,
    saying no more (it resists probing)."""
    return (
        INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS.to_bytes(2, "big")
        + amount_msat.to_bytes(8, "big")
        + blockheight.to_bytes(4, "big")
    )


def invoice_cltv(
    requested: int, early_warning_time: int, max_locktime: int, exit_margin: int = 0
) -> int:
    """min_final_cltv_expiry for an invoice paid into factory channels: raised by the EWT, never
    above what lightningd accepts (`max-locktime-blocks`). An HTLC that expires within the EWT
    plus the exit margin makes its offerer start an exit at the next block, so the invoice's own
    part is at least the margin plus two blocks, whatever the node's `cltv-final` (regtest: 5)."""
    return min(max(requested, exit_margin + 2) + early_warning_time, max_locktime)


# --- what the LSP can take after the timeout -----------------------------------------------------


@dataclass(frozen=True)
class SweepCandidate:
    outpoint: tuple[str, int]
    output: TaprootOutput
    amount: int


def timeout_sweep_candidates(
    factory: Factory, funding_outpoint: tuple[str, int], published: Mapping[int, str]
) -> list[SweepCandidate]:
    """Every output with the timeout leaf that is on chain and not spent by the tree.

    `published` maps node -> txid of the tree txs confirmed on chain (any DW state). The funding
    output while no root tx is out; then each published state/split output whose child is not."""
    if 0 not in published:
        return [SweepCandidate(funding_outpoint, factory.funding_output, factory.funding_amount)]
    out = []
    for node, txid in published.items():
        for vout, spec in enumerate(factory.outputs[node]):
            if spec.child is None or spec.child in published or spec.taproot is None:
                continue
            if factory.timeout_leaf in spec.taproot.leaves:
                out.append(SweepCandidate((txid, vout), spec.taproot, spec.amount))
    return out
