"""The LSP's side of a tree that is partly on chain: publish what is due, take what was handed over.

Once any tree transaction of an LSP's factory confirms (a client exits alone, or an HTLC had to be
enforced), two things fall to the LSP:

- A kickoff's outputs must be consumed by their latest state (Decker-Wattenhofer), and a kickoff
  output carries no timeout leaf: a sibling subtree whose clients never act would be locked for
  good. So the LSP publishes the state it holds signed for every such output (`due`).
- The outputs whose clients all handed over their keys (they moved out, `winddown`) are the LSP's
  alone: it publishes only the tree transactions it must to reach them and takes each by key path,
  at once, instead of waiting for the timeout (the engine's `handover.partial_unroll`).

Every transaction is sent as soon as its relative lock allows and again every few blocks until it
confirms; sweeps are persisted (the record's `sweeps`) before they are sent.

Owns: when each of these transactions was last sent (memory: a restart sends them again at once).
Chain thread. May call: `records` (on-chain fields only), lightningd's `newaddr`, `feerates` and
`sendrawtransaction`.
"""

from __future__ import annotations

import logging

from ...engine import handover, store
from ...engine.tree import Factory
from ..lightningd import address
from ..lightningd.node import Node
from ..lightningd.records import Records, factory_of, txid_of

log = logging.getLogger("superscalar")

RESEND_EVERY = 6  # blocks


class Unroller:
    def __init__(self, node: Node, records: Records) -> None:
        self._node = node
        self._records = records
        self._sent: dict[str, int] = {}  # txid -> height we last sent it

    def on_block(self, record: store.LspRecord, height: int) -> None:
        if record.state is not store.LspState.FUNDED or record.handover_tx or not record.tree:
            return
        confirmed = dict(record.confirmed)
        by_node = {e.node: e for e in record.tree}
        published = {n for n, e in by_node.items() if txid_of(e.raw) in confirmed}
        if not published:
            return  # the tree is off chain: nothing is due (the LSP waits for keys, or T)
        factory = factory_of(record)
        handed = {i for i, c in enumerate(record.clients) if c.handed_key}
        states = {n: e.state for n, e in by_node.items()}
        plan = handover.partial_unroll(factory, handed, states, published)
        txids = {n: txid_of(e.raw) for n, e in by_node.items()}
        for node in sorted({s.node for s in plan.publish} | set(plan.due)):
            self._publish(record, factory, by_node[node], txids, height)
        for output in plan.spend:
            if output.node is not None and output.node in published:
                self._take(record, factory, output, txids, handed)
                latest = self._records.get(record.instance_id)
                assert isinstance(latest, store.LspRecord)
                record = latest
        for _, raw in record.sweeps:
            if txid_of(raw) not in confirmed:
                self._send(raw, height)

    def _publish(
        self,
        record: store.LspRecord,
        factory: Factory,
        entry: store.PathEntry,
        txids: dict[int, str],
        height: int,
    ) -> None:
        """Send `entry`'s signed tx once its parent confirmed and its relative lock passed."""
        confirmed = dict(record.confirmed)
        if txids[entry.node] in confirmed:
            return
        parent = factory.topology.nodes[entry.node].parent
        parent_txid = record.funding_txid if parent is None else txids.get(parent)
        since = confirmed.get(parent_txid or "")
        delay = factory.topology.relative_delay(entry.node, entry.state)
        if since is None or height < since + delay:
            return
        self._send(entry.raw, height)

    def _take(
        self,
        record: store.LspRecord,
        factory: Factory,
        output: handover.HandedOutput,
        txids: dict[int, str],
        handed: set[int],
    ) -> None:
        outpoint = output.outpoint((record.funding_txid or "", record.funding_vout or 0), txids)
        key = f"{outpoint[0]}:{outpoint[1]}"
        if key in dict(record.sweeps):
            return
        dest = address.decode(self._node.rpc.call("newaddr", {"addresstype": "p2tr"})["p2tr"])
        secrets = {i: bytes.fromhex(record.clients[i].handed_key or "") for i in handed}
        raw = handover.spend_handed(
            factory,
            output,
            outpoint,
            {i: secrets[i] for i in output.clients},
            self._node.lsp_key(record.instance_id),
            dest,
            max(1000, self._node.fee_rate_kvb()),
        )
        self._records.update_chain(record.instance_id, sweeps=(*record.sweeps, (key, raw.hex())))
        log.warning(
            "factory %s: taking %s (clients %d-%d handed over) by key path",
            record.instance_id[:16],
            key,
            output.clients.start,
            output.clients.stop - 1,
        )

    def _send(self, raw_hex: str, height: int) -> None:
        txid = txid_of(raw_hex)
        last = self._sent.get(txid)
        if last is not None and height - last < RESEND_EVERY:
            return
        self._sent[txid] = height
        refused = self._node.send_tx(raw_hex)
        if refused is not None:
            log.info("tree tx %s not accepted yet: %s", txid[:16], refused)
