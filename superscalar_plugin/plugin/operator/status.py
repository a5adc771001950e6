"""Status views: what `factory-status`, `factory-list`, `factory-exit` and `factory-create` show.

Owns: nothing (reads records, the height and lightningd's channels). Worker thread.
May call: lightningd's `listpeerchannels`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ...engine import dw, store
from ...engine.errors import InvalidParameter
from ...engine.sale_store import SaleEntry
from ...engine.tree import NodeKind, Topology
from ...engine.tx import Tx
from ..lifecycle.phase import client_phase, client_view, factory_view
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.records import Records, is_compromised, topology, txid_of


class StatusView:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records

    def status(self, instance: str | None) -> dict[str, Any]:
        if instance is not None:
            record = self._records.get(instance)
            if record is None:
                raise InvalidParameter(f"instance: no factory {instance}")
            return {"factories": [self.of(record)]}
        return {"factories": [self.of(r) for r in self._records.all()]}

    def of(
        self, record: store.Record, channels: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """`channels`: lightningd's channels when the caller just listed them."""
        topo = topology(record)
        base: dict[str, Any] = {
            "instance": record.instance_id,
            "state": record.state.value,
            "early_warning_time": topo.ewt,
            "timeout_height": record.timeout_height,
            "params": json.loads(json.dumps(dataclasses.asdict(record.params))),
        }
        if record.error:
            base["error"] = record.error
        if is_compromised(record):
            base["compromised"] = True  # the funding is not what the tree was signed against
        if record.exit is not None:
            base["exit"] = exit_progress(record, topo)
        if isinstance(record, store.LspRecord):
            base.update(self._lsp_view(record, topo, channels))
        else:
            base.update(self._client_view(record, topo))
        return base

    def _lsp_view(
        self,
        record: store.LspRecord,
        topo: Topology,
        channels: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        cfg = self._node.config
        view: dict[str, Any] = {
            "role": "lsp",
            **factory_view(record, self._node.height, cfg.dying_blocks, cfg.exit_margin),
        }
        view.update(self._funding_view(record))
        channels = self._shown_channels() if channels is None else channels
        states = {e.node: e.state for e in record.tree}
        per_client, view["onchain"] = lsp_onchain_view(record, topo)
        view["clients"] = [
            {
                "node_id": c.node_id,
                "index": i,
                "leaf": topo.leaf_of_client[i],
                "channel_sat": c.channel_sat,
                "channel_id": c.channel_id,
                "channel_state": channels.get(c.channel_id or "", {}).get("state"),
                # The DW digits on its path, root first (state nodes only).
                "dw_state": [
                    states.get(n, 0) for n in topo.client_path(i) if topo.nodes[n].kind.is_state
                ],
                "onchain": per_client[i],
                **client_view(c),
                **sales_view(record, i, channels),
            }
            for i, c in enumerate(record.clients)
        ]
        view["stock"] = stock_view(record)
        view["state_nodes"] = state_nodes_view(topo, states)
        if record.update is not None:
            view["update"] = {
                "node": record.update.node,
                "stage": record.update.stage.value,
                "clients": [c.client for c in record.update.clients],
            }
        view["orders"] = [
            {
                "payment_hash": o.payment_hash,
                "client": o.client,
                "sold_sat": o.sold_sat,
                "fee_sat": o.fee_sat,
                "state": o.state.value,
                "result": o.result,
                "error": o.error,
            }
            for o in record.orders
        ]
        return view

    def _funding_view(self, record: store.LspRecord) -> dict[str, Any]:
        view: dict[str, Any] = {}
        if record.sweeps:
            confirmed = dict(record.confirmed)
            view["sweeps"] = [
                {"outpoint": o, "txid": txid_of(raw), "confirmed": txid_of(raw) in confirmed}
                for o, raw in record.sweeps
            ]
        view["funding"] = {
            "txid": record.funding_txid,
            "vout": record.funding_vout,
            "amount_sat": record.funding_amount,
            "confirmations": self._confirmations(record, record.funding_txid),
        }
        return view

    def _shown_channels(self) -> dict[str, dict[str, Any]]:
        """Channels for display only (no decision rests on it): unknown shows as none."""
        try:
            return self._node.channels()
        except ChannelsUnavailable:
            return {}

    def _client_view(self, record: store.ClientRecord, topo: Topology) -> dict[str, Any]:
        return {
            "role": "client",
            "phase": client_phase(record, self._node.height, self._node.config.dying_blocks),
            "moving_to": record.moving_to,
            "lsp": record.lsp_node_id,
            "index": record.client_index,
            "channel_sat": record.channel_sat,
            "funding_txid": record.funding_txid,
            "funding_confirmations": self._confirmations(record, record.funding_txid),
            **own_sales_view(record, self._shown_channels()),
            **(
                {
                    "updates_left": dw.updates_left(
                        topo,
                        tuple(_digits(record, len(topo.nodes))),
                        topo.leaf_of_client[record.client_index],
                    )
                }
                if record.path
                else {}
            ),
            "exit_path": [
                {
                    "node": e.node,
                    "kind": topo.nodes[e.node].kind.value,
                    "dw_state": e.state,
                    "txid": txid_of(e.raw),
                    "relative_delay": topo.relative_delay(e.node, e.state),
                    "raw": e.raw,  # signed: enough to exit by hand with any bitcoind
                }
                for e in record.path
            ],
        }

    def _confirmations(self, record: store.Record, txid: str | None) -> int:
        height = dict(record.confirmed).get(txid or "")
        return 0 if height is None else max(0, self._node.height - height + 1)


def sales_view(
    record: store.LspRecord, client: int, channels: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A client's channels beyond its factory channel, as the LSP sees them: one per sale of its
    leaf's stock that it bought, and its on-chain fallback channel, if any."""
    return {
        "sales": [
            {
                "sale_txid": e.sale_txid,
                "sold_sat": e.sold_sat,
                "price_sat": e.price_sat,
                "channel_id": e.channel_id,
                "channel_state": channels.get(e.channel_id or "", {}).get("state"),
                "complete": e.complete,
                "acked_by": list(e.acked),
            }
            for e in record.sales
            if e.buyer == client
        ],
        "onchain_channels": [
            {
                "channel_id": j.channel_id,
                "sat": j.sat,
                "reason": j.reason,
                "channel_state": channels.get(j.channel_id, {}).get("state"),
            }
            for j in record.jit
            if j.client == client
        ],
    }


def _digits(record: store.ClientRecord, n: int) -> list[int]:
    states = {e.node: e.state for e in record.path}
    return [states.get(i, 0) for i in range(n)]


def state_nodes_view(topo: Topology, states: dict[int, int]) -> list[dict[str, Any]]:
    """Each DW state node's odometer digit and how many more states it has; per leaf, how many
    updates its path still allows (every digit above it counted)."""
    digits = tuple(states.get(n, 0) for n in range(len(topo.nodes)))
    return [
        {
            "node": n,
            "kind": topo.nodes[n].kind.value,
            "state": digits[n],
            "states_left": topo.params.states_per_layer - 1 - digits[n],
            **(
                {"updates_left": dw.updates_left(topo, digits, n)}
                if topo.nodes[n].kind is NodeKind.LEAF
                else {}
            ),
        }
        for n in topo.state_nodes
    ]


def stock_view(record: store.LspRecord) -> list[dict[str, Any]]:
    """Per leaf: its sales and what is left of its stock (the latest change)."""
    topo = topology(record)
    stocks = dict(zip(topo.leaves, record.stocks, strict=True)) if record.stocks else {}
    out = []
    for leaf in topo.leaves:
        sales = [e for e in record.sales if e.leaf == leaf]
        left = stocks.get(leaf, record.params.stock_sat)
        if sales:
            tx = Tx.deserialize(bytes.fromhex(sales[-1].sale_tx))
            left = tx.outputs[1].amount if len(tx.outputs) == 3 else 0
        out.append({"leaf": leaf, "sales": len(sales), "stock_left_sat": left})
    return out


def own_sales_view(
    record: store.ClientRecord, channels: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A client's view of its leaf's sales: those it bought (with their channels and the exit
    each adds), how many it co-signed, and its on-chain fallback channels."""
    by_funding = {ch.get("funding_txid"): cid for cid, ch in channels.items()}
    mine = []
    chain_len = 0
    for e in record.sales:
        chain_len += 1
        if e.buyer != record.client_index:
            continue
        txid = e.sale_txid
        mine.append(
            {
                "sale_txid": txid,
                "spends": f"{e.stock_txid}:{e.stock_vout}",  # the leaf's stock, or a change
                "sold_sat": e.sold_sat,
                "channel_id": by_funding.get(txid),
                "channel_state": channels.get(by_funding.get(txid) or "", {}).get("state"),
                "complete": e.complete,
                # what we paid for it: "gift", "pending", "paid" or "failed" (failed back: we
                # paid nothing, and never burn it); null in records from before it was kept
                "payment": e.payment,
                "exit_sales": chain_len,  # sale txs its exit adds after the leaf
            }
        )
    return {
        "sales": mine,
        "sales_cosigned": len(record.sales),
        "onchain_channels": list(record.jit_channels),
    }


def lsp_onchain_view(
    record: store.LspRecord, topo: Topology
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What the chain shows of the tree, as the LSP sees it from the blocks it scans: per client,
    how much of its path confirmed (a client that exits alone publishes its path without asking
    the LSP); for the factory, who is on chain and who is still inside."""
    confirmed = dict(record.confirmed)
    txids = {e.node: txid_of(e.raw) for e in record.tree}
    per_client = []
    for i in range(len(record.clients)):
        path = topo.client_path(i)
        heights = [confirmed.get(txids.get(n, "")) for n in path]
        done = [h for h in heights if h is not None]
        per_client.append(
            {
                "path_length": len(path),
                "path_confirmed": len(done),
                "leaf_confirmed": bool(path) and heights[-1] is not None,
                "last_confirmed_height": max(done) if done else None,
            }
        )
    on_chain = sum(1 for c in per_client if c["leaf_confirmed"])
    summary = {
        "tree_txs_confirmed": sum(1 for t in txids.values() if t in confirmed),
        "tree_txs": len(txids),
        "clients_on_chain": on_chain,
        "clients_in_factory": len(per_client) - on_chain,
    }
    return per_client, summary


def exit_progress(record: store.Record, topo: Topology) -> dict[str, Any]:
    """What confirmed, what was broadcast, what waits for which height."""
    ex = record.exit
    assert ex is not None
    confirmed = dict(record.confirmed)
    sent = dict(ex.broadcast)
    entries = record.tree if isinstance(record, store.LspRecord) else record.path
    wanted = set()
    for c in ex.clients:
        wanted.update(topo.client_path(c))
    txs = []
    txid_by_node = {e.node: txid_of(e.raw) for e in entries}
    for e in sorted(entries, key=lambda e: e.node):
        if e.node not in wanted:
            continue
        txid = txid_by_node[e.node]
        node = topo.nodes[e.node]
        parent_txid = record.funding_txid if node.parent is None else txid_by_node.get(node.parent)
        parent_height = confirmed.get(parent_txid or "")
        item: dict[str, Any] = {"node": e.node, "kind": node.kind.value, "txid": txid}
        if txid in confirmed:
            item["status"], item["height"] = "confirmed", confirmed[txid]
        elif txid in sent:
            item["status"], item["height"] = "broadcast", sent[txid]
        else:
            item["status"] = "waiting"
            if parent_height is not None:
                item["valid_from"] = parent_height + topo.relative_delay(e.node, e.state)
        txs.append(item)
    buyers = {record.client_index} if isinstance(record, store.ClientRecord) else set(ex.clients)
    for sale in exit_sales(record, buyers):
        txid = sale.sale_txid
        item = {"kind": "sale", "txid": txid, "spends": f"{sale.stock_txid}:{sale.stock_vout}"}
        if txid in confirmed:
            item["status"], item["height"] = "confirmed", confirmed[txid]
        else:
            item["status"] = "broadcast" if txid in sent else "waiting"
        txs.append(item)
    return {
        "reason": ex.reason,
        "started_height": ex.started_height,
        "done": ex.done,
        "clients": list(ex.clients),
        "channels_closed": list(ex.closed),
        "txs": txs,
    }


def exit_sales(record: store.Record, buyers: set[int]) -> list[SaleEntry]:
    """The sale txs an exit publishes after the leaves: per leaf, its signed sales down to the
    last one bought by a client whose path is being published."""
    out: list[SaleEntry] = []
    leaves = dict.fromkeys(e.leaf for e in record.sales)
    for leaf in leaves:
        chain = [e for e in record.sales if e.leaf == leaf]
        signed = []
        for e in chain:
            if not e.complete:
                break
            signed.append(e)
        last = max((i for i, e in enumerate(signed) if e.buyer in buyers), default=-1)
        out.extend(signed[: last + 1])
    return out
