"""The solvency invariant, checked from the outside for every honest client.

Every msat the client's node shows as its own (lightningd's state in the fake: `to_us` of every
channel plus the HTLCs offered to it) must be enforceable by the client alone on chain: the
channel's funding output is confirmed with the channel's exact 2-of-2 script and amount, or the
client's OWN stored signed transactions (its datastore record: its tree path, its sales with their
signatures) lead from confirmed, unconflicted outputs down to that output, each input valid under
Bitcoin Core's consensus rules (`chainview`). Nothing of the plugin's own guard code decides it.

Two findings: UNENFORCEABLE (more than one dust allowance of shown balance has no such path) and
SHORTFALL (what is enforceable is below what the client is owed, the ledger the driver keeps from
the honest flows, less the fee bounds it accepted: the move fee cap per move, the quoted price
bound per purchase)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .chainview import (
    ChainView,
    Output,
    outpoints,
    output_of,
    p2wsh_2of2,
    parse,
    txid,
    verify_inputs,
)
from harness.bitcoin import CScriptWitness, CTransaction
from harness.node import FakeNode
from harness.state import Channel

DUST_ALLOWANCE_MSAT = 1_000_000  # what a hand-over may leave behind, one allowance in all
MOVE_FEE_CAP_MSAT = 100_000  # superscalar-max-move-fee-sat's default (100 sat) per move
FORGOTTEN = ("ONCHAIN", "CLOSED")
RECORDS = ("superscalar", "factories")


@dataclass(frozen=True)
class Claim:
    """One channel's shown balance and why it is not enforceable (None: it is)."""

    channel_id: str
    funding: str
    own_msat: int
    problem: str | None

    def describe(self) -> str:
        where = f"{self.channel_id[:12]} on {self.funding}"
        return f"{where}: {self.own_msat} msat " + (self.problem or "enforceable")


@dataclass(frozen=True)
class Violation:
    client: str
    kind: str  # "UNENFORCEABLE" | "SHORTFALL"
    detail: str

    def describe(self) -> str:
        return f"{self.kind} {self.client}: {self.detail}"


@dataclass
class Ledger:
    """What a client is owed (msat) and the loss it accepted (fee bounds), from the honest flows."""

    owed_msat: int = 0
    accepted_loss_msat: int = 0


def own_msat(ch: Channel) -> int:
    return ch.our_msat + sum(h.amount_msat for h in ch.htlcs if h.direction == "in")


def _with_sig(raw: bytes, sig: bytes) -> CTransaction:
    """A key-path spend: the unsigned tx with its one input's witness [sig]."""
    mtx = CTransaction.deserialize(raw).to_mutable()
    mtx.wit.vtxinwit[0].scriptWitness = CScriptWitness([sig])
    return CTransaction.from_tx(mtx)


def signed_txs(node: FakeNode) -> dict[str, CTransaction]:
    """Every signed tx the client holds in its own records: tree path and completed sales."""
    out: dict[str, CTransaction] = {}
    with node.datastore.lock:
        entries = [v for k, (v, _) in node.datastore.entries.items() if k[:2] == RECORDS]
    for raw in entries:
        rec = json.loads(raw)
        if rec.get("kind") != "client":
            continue
        for e in rec.get("path", []):
            tx = parse(bytes.fromhex(e["raw"]))
            out[txid(tx)] = tx
        for s in rec.get("sales", []):
            if s.get("sale_sig"):
                tx = _with_sig(bytes.fromhex(s["sale_tx"]), bytes.fromhex(s["sale_sig"]))
                out[txid(tx)] = tx
    return out


def _spent_output(
    op: tuple[str, int], txs: dict[str, CTransaction], view: ChainView, depth: int
) -> tuple[Output | None, str | None]:
    if view.confirmed(op[0]):
        out = view.confirmed_output(op)
        return out, None if out else f"{op[0]}:{op[1]} has no such output"
    parent = txs.get(op[0])
    if parent is None:
        return None, f"{op[0]}:{op[1]} neither confirmed nor ours signed"
    problem = reach(op[0], txs, view, depth + 1)
    return output_of(parent, op[1]), problem


def reach(tx_id: str, txs: dict[str, CTransaction], view: ChainView, depth: int = 0) -> str | None:
    """None if `tx_id` is confirmed or can be confirmed from what the client holds; else why."""
    if view.confirmed(tx_id):
        return None
    tx = txs.get(tx_id)
    if tx is None or depth > 64:
        return f"{tx_id} not confirmed and not held signed"
    spent: list[Output] = []
    for op in outpoints(tx):
        other = view.spender(op)
        if other is not None and other != tx_id:
            return f"{op[0]}:{op[1]} (input of {tx_id[:12]}) spent by {other}"
        out, problem = _spent_output(op, txs, view, depth)
        if problem or out is None:
            return problem or f"{op[0]}:{op[1]} missing"
        spent.append(out)
    if not verify_inputs(tx, spent):
        return f"{tx_id} fails consensus script checks"
    return None


def channel_problem(ch: Channel, txs: dict[str, CTransaction], view: ChainView) -> str | None:
    if ch.funding_txid is None or ch.funding_outnum is None:
        return "no funding outpoint"
    want = Output(p2wsh_2of2(ch.our_funding_pubkey, ch.their_funding_pubkey), ch.amount_sat)
    op = (ch.funding_txid, ch.funding_outnum)
    if view.confirmed(ch.funding_txid):
        got = view.confirmed_output(op)
        other = view.spender(op)
        if other is not None and other != ch.closing_txid:
            return f"confirmed funding spent by {other}"
    else:
        tx = txs.get(ch.funding_txid)
        got = output_of(tx, ch.funding_outnum) if tx is not None else None
        problem = reach(ch.funding_txid, txs, view)
        if problem:
            return problem
    if got != want:
        return f"funding output {got} is not the channel's 2-of-2 of {ch.amount_sat} sat"
    return None


def claims(node: FakeNode, view: ChainView) -> list[Claim]:
    txs = signed_txs(node)
    with node.network.state_lock:
        chans = [ch for ch in node.channels if ch.state not in FORGOTTEN and own_msat(ch) > 0]
        shown = [(ch, own_msat(ch)) for ch in chans]
    return [
        Claim(
            ch.channel_id or "?",
            f"{ch.funding_txid}:{ch.funding_outnum}",
            amt,
            channel_problem(ch, txs, view),
        )
        for ch, amt in shown
    ]


def check(node: FakeNode, ledger: Ledger, view: ChainView) -> list[Violation]:
    found = claims(node, view)
    bad = [c for c in found if c.problem]
    lost = sum(c.own_msat for c in bad)
    out = []
    if lost > DUST_ALLOWANCE_MSAT:
        out.append(
            Violation(
                node.name, "UNENFORCEABLE", f"{lost} msat: " + "; ".join(c.describe() for c in bad)
            )
        )
    good = sum(c.own_msat for c in found if not c.problem)
    floor = ledger.owed_msat - ledger.accepted_loss_msat - DUST_ALLOWANCE_MSAT
    if good < floor:
        out.append(
            Violation(
                node.name,
                "SHORTFALL",
                f"enforceable {good} msat < owed {ledger.owed_msat} less accepted "
                f"{ledger.accepted_loss_msat} and dust: " + "; ".join(c.describe() for c in found),
            )
        )
    return out
