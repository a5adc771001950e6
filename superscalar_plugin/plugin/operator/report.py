"""`factory-report`: what an operator acts on, per factory and per client, at today's fees.

Per factory: blocks to its dying period and to its timeout T, the clients still inside, the
stock left per leaf. Per client: what its unilateral exit would cost now (the vbytes of its path
and its sales x the node's current fee estimate) against its balance, flagged `uneconomic` when
the exit costs more than the client holds. For the node: the on-chain reserve the LSP's wallet
would need to publish, bump and sweep everything at the current fee rate, against what its
wallet holds (`listfunds`), and the retired channels lightningd keeps (`retired_channels`).

An uneconomic client is never pushed into an exit by our own triggers while a migration can
still take it (`exitcost.defer_exit`): an HTLC deadline on its channel waits for the move. At
the last moment (its factory's timeout less the EWT and the exit margin) a client still inside
starts its exit anyway: the tree's fees were paid when it was signed, our wallet adds CPFP only
up to `superscalar-max-exit-fee-sat`, and staying put would hand its whole balance to the LSP's
timeout path at T.

Owns: nothing. Chain thread (read-only, like factory-status). May call: lightningd's `feerates`,
`listfunds`, `listpeerchannels`.
"""

from __future__ import annotations

from typing import Any

from ...engine import store
from ...engine.tx import Tx
from ..lifecycle.phase import dying_from, pending
from ..lightningd.guards import msat
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.records import LIVE, Records, topology, txid_of
from ..onchain.feebump import FIRST_GUESS_VSIZE
from .exitcost import ExitCost, can_migrate, defer_exit, exit_cost, last_move_height
from .status import stock_view

SWEEP_VSIZE = 111  # one taproot script-path input (timeout leaf) to one P2TR output


def exit_fee_rate_kvb(node: Node) -> tuple[int, str]:
    """lightningd's current estimate for a unilateral close (sat/kvB), and its name."""
    try:
        rates = node.rpc.call("feerates", {"style": "perkb"})["perkb"]
    except Exception:  # unknown: 0, so nothing is called uneconomic (or deferred) on a guess
        return 0, "unknown"
    for name in ("unilateral_close", "urgent", "opening"):
        if rates.get(name):
            return int(rates[name]), name
    return int(rates.get("min_acceptable") or 1000), "min_acceptable"


def deferred_exit(
    node: Node, record: store.ClientRecord, channels: dict[str, dict[str, Any]], height: int
) -> ExitCost | None:
    """Client: the cost of the exit an HTLC deadline would start now, if it is to be held back
    (it costs more than we hold, and a migration can still take us), else None."""
    if not record.path:
        return None
    leaf = txid_of(record.path[-1].raw)
    ours = sum(
        msat(ch.get("to_us_msat", 0)) // 1000
        for ch in channels.values()
        if ch.get("funding_txid") == leaf
    )
    cost = exit_cost(record, record.client_index, exit_fee_rate_kvb(node)[0], ours)
    movable = can_migrate(record, height, node.config.exit_margin)
    return cost if defer_exit(cost, movable) else None


def retired_channels(
    channels: dict[str, dict[str, Any]], records: list[store.Record]
) -> dict[str, int]:
    """The channels lightningd keeps for good: closed cooperatively (CLOSINGD_COMPLETE) on a
    funding output that never confirmed (no short_channel_id), as every migration leaves one per
    client on both nodes (and every DW update one per client below its node). Core Lightning
    v26.06.6 has no stock way to forget them (README, "Retired channels"); each costs its closing
    transaction sent again (refused) after every block and every 30-60 s, and its entry in
    listpeerchannels. `from_factories`: those our records name (a factory's leaf or sale, or a
    channel an update replaced)."""
    ours: set[str] = set()
    for r in records:
        ours.update(r.retired)
        if isinstance(r, store.LspRecord):
            ours.update(c.channel_id for c in r.clients if c.channel_id)
            ours.update(e.channel_id for e in r.sales if e.channel_id)
        elif r.path:
            ours.add(txid_of(r.path[-1].raw))
            ours.update(e.sale_txid for e in r.sales if e.buyer == r.client_index)
    stuck = [
        (cid, ch)
        for cid, ch in channels.items()
        if ch.get("state") == "CLOSINGD_COMPLETE" and not ch.get("short_channel_id")
    ]
    mine = sum(1 for cid, ch in stuck if cid in ours or ch.get("funding_txid") in ours)
    return {"count": len(stuck), "from_factories": mine}


def _channels(node: Node) -> dict[str, dict[str, Any]]:
    try:
        return node.channels()
    except ChannelsUnavailable:  # display only: shown as none
        return {}


def _balances(chans: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """channel id -> (ours, theirs) in sat; empty when lightningd cannot say (display only)."""
    out = {}
    for cid, ch in chans.items():
        ours = msat(ch.get("to_us_msat", 0)) // 1000
        out[cid] = (ours, msat(ch.get("total_msat", 0)) // 1000 - ours)
    return out


class Report:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records

    def report(self, instance: str | None) -> dict[str, Any]:
        rate, source = exit_fee_rate_kvb(self._node)
        channels = _channels(self._node)
        balances = _balances(channels)
        records = [
            r
            for r in self._records.all()
            if r.state in LIVE and (instance is None or r.instance_id == instance)
        ]
        factories = [
            self._lsp(r, rate, balances)
            if isinstance(r, store.LspRecord)
            else self._client(r, rate, balances)
            for r in records
        ]
        out: dict[str, Any] = {
            "blockheight": self._node.height,
            "feerate_perkb": rate,
            "feerate_source": source,
            "factories": factories,
            "retired_channels": retired_channels(channels, self._records.all()),
        }
        lsps = [r for r in records if isinstance(r, store.LspRecord)]
        if lsps:
            out["reserve"] = self._reserve(lsps, rate)
        return out

    def _ends(self, record: store.Record) -> dict[str, Any]:
        height = self._node.height
        cfg = self._node.config
        dying = record.timeout_height - cfg.dying_blocks
        return {
            "instance": record.instance_id,
            "timeout_height": record.timeout_height,
            "blocks_to_dying": max(0, dying - height),
            "blocks_to_timeout": max(0, record.timeout_height - height),
            "blocks_to_last_move": last_move_height(record, cfg.exit_margin) - height,
        }

    def _lsp(
        self, record: store.LspRecord, rate: int, balances: dict[str, tuple[int, int]]
    ) -> dict[str, Any]:
        exited = set(record.exit.clients) if record.exit is not None else set()
        inside = [i for i in pending(record) if i not in exited]
        clients = []
        for i in inside:
            c = record.clients[i]
            theirs = balances.get(c.channel_id or "", (0, 0))[1]
            cost = exit_cost(record, i, rate, theirs)
            clients.append(
                {
                    "node_id": c.node_id,
                    "index": i,
                    "balance_sat": theirs,
                    "exit_vbytes": cost.vbytes,
                    "exit_txs": cost.txs,
                    "exit_cost_sat": cost.cost_sat,
                    "uneconomic": cost.uneconomic,
                }
            )
        return {
            **self._ends(record),
            "role": "lsp",
            "dying_from_height": dying_from(record, self._node.config.dying_blocks),
            "clients_inside": len(inside),
            "uneconomic_clients": sum(1 for c in clients if c["uneconomic"]),
            "stock": stock_view(record),
            "clients": clients,
        }

    def _client(
        self, record: store.ClientRecord, rate: int, balances: dict[str, tuple[int, int]]
    ) -> dict[str, Any]:
        ours = 0
        if record.path:
            leaf = txid_of(record.path[-1].raw)
            try:
                chans = self._node.channels()
            except ChannelsUnavailable:
                chans = {}
            for cid, ch in chans.items():
                if ch.get("funding_txid") == leaf:
                    ours = balances.get(cid, (0, 0))[0]
        cost = exit_cost(record, record.client_index, rate, ours)
        return {
            **self._ends(record),
            "role": "client",
            "balance_sat": ours,
            "exit_vbytes": cost.vbytes,
            "exit_txs": cost.txs,
            "exit_cost_sat": cost.cost_sat,
            "uneconomic": cost.uneconomic,
        }

    def _reserve(self, lsps: list[store.LspRecord], rate: int) -> dict[str, Any]:
        """Publish every tree tx (one CPFP child each) and sweep every leaf's outputs."""
        vbytes = 0
        for r in lsps:
            if r.handover_tx:
                vbytes += Tx.deserialize(bytes.fromhex(r.handover_tx)).vsize
                continue
            confirmed = {t for t, _ in r.confirmed}
            for e in r.tree:
                if txid_of(e.raw) not in confirmed:
                    vbytes += Tx.deserialize(bytes.fromhex(e.raw)).vsize + FIRST_GUESS_VSIZE
            vbytes += SWEEP_VSIZE * 2 * len(topology(r).leaves)  # stock and timeout outputs
        need = (vbytes * rate + 999) // 1000
        wallet = self._wallet_sat()
        return {
            "vbytes": vbytes,
            "needed_sat": need,
            "wallet_sat": wallet,
            "short_sat": max(0, need - wallet) if wallet is not None else None,
        }

    def _wallet_sat(self) -> int | None:
        try:
            outputs = self._node.rpc.call("listfunds").get("outputs", [])
        except Exception:
            return None
        return sum(
            msat(o.get("amount_msat", 0)) // 1000
            for o in outputs
            if o.get("status") == "confirmed" and not o.get("reserved", False)
        )
