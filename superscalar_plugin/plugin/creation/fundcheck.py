"""The client's check of its factory's funding output, when the funding confirms.

A client signs the root against an outpoint, an amount and a script (the taproot sighash commits to
both); it records only the funding txid. When that txid confirms, output `funding_vout` of the
confirmed transaction must hold exactly that amount and script, or every signature of the tree is
worthless and the LSP takes everything at the timeout. A factory that fails the check is marked
compromised (the record's `error`, shown by factory-status), logged once at warning level, its
channel takes no more HTLCs (guards) and is closed, so the client stops receiving funds into it.

Owns: nothing. `on_block` runs on the chain thread (from `onchain`'s scan, with the block it
already downloaded) and only reads; marking and closing run on the worker.
May call: `records`, `guards.refresh`, lightningd's `listpeerchannels` and `close`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from ...engine import store
from ...engine.errors import WireError
from ...engine.tx import Tx, TxOut, block_txids
from ..lightningd.guards import Guards
from ..lightningd.node import ChannelsUnavailable, Node
from ..lightningd.records import COMPROMISED, LIVE, Records, is_compromised, txid_of
from ..operator import events

log = logging.getLogger("superscalar")

CLOSABLE = ("CHANNELD_NORMAL", "CHANNELD_AWAITING_LOCKIN", "DUALOPEND_AWAITING_LOCKIN")


def tx_outputs(raw_block: bytes, index: int) -> list[TxOut]:
    """The outputs of the `index`-th transaction of a serialized block (any tx form)."""
    pos = 80  # header

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(raw_block):
            raise WireError("block truncated")
        pos += n
        return raw_block[pos - n : pos]

    def varint() -> int:
        first = take(1)[0]
        if first < 0xFD:
            return first
        return int.from_bytes(take({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")

    count = varint()
    if index >= count:
        raise WireError(f"block has {count} transactions, not {index + 1}")
    for i in range(index + 1):
        take(4)
        segwit = raw_block[pos : pos + 2] == b"\x00\x01"
        if segwit:
            take(2)
        n_in = varint()
        for _ in range(n_in):
            take(36)
            take(varint())
            take(4)
        outputs = []
        for _ in range(varint()):
            amount = struct.unpack("<q", take(8))[0]
            outputs.append(TxOut(amount, take(varint())))
        if i == index:
            return outputs
        if segwit:
            for _ in range(n_in):
                for _ in range(varint()):
                    take(varint())
        take(4)
    raise AssertionError("unreachable")


def funding_problem(record: store.ClientRecord, outputs: list[TxOut]) -> str | None:
    """What is wrong with the confirmed funding's outputs for the root we signed, or None."""
    root = record.path[0]
    spent = Tx.deserialize(bytes.fromhex(root.raw)).inputs[0]
    where = f"funding output {spent.txid}:{spent.vout}"
    if spent.txid != record.funding_txid:
        return f"our root spends {spent.txid}, not the funding {record.funding_txid}"
    if spent.vout >= len(outputs):
        return f"{where} does not exist (the funding has {len(outputs)} outputs)"
    out = outputs[spent.vout]
    if out.amount != root.spent_amount:
        return f"{where} holds {out.amount} sat; the tree was signed for {root.spent_amount} sat"
    if out.script_pubkey.hex() != root.spent_script:
        return (
            f"{where} pays script {out.script_pubkey.hex()}; the tree was signed for"
            f" {root.spent_script}"
        )
    return None


class FundingCheck:
    def __init__(
        self,
        node: Node,
        records: Records,
        guards: Guards,
        submit: Callable[[Callable[[], None]], None],
    ) -> None:
        self._node = node
        self._records = records
        self._guards = guards
        self._submit = submit

    def problems(self, raw_block: bytes, txids: list[str]) -> list[tuple[str, str]]:
        """(instance, what is wrong) for every client factory whose funding confirmed in this
        block with an output other than the one signed. Reads only: any thread."""
        position = {t: i for i, t in enumerate(txids)}
        found = []
        for record in self._records.all():
            if (
                not isinstance(record, store.ClientRecord)
                or record.state not in LIVE
                or not record.path
                or is_compromised(record)
            ):
                continue
            index = position.get(record.funding_txid or "")
            if index is None:
                continue
            try:
                problem = funding_problem(record, tx_outputs(raw_block, index))
            except (WireError, ValueError, IndexError) as e:
                problem = f"the confirmed funding cannot be read: {e}"
            if problem is None:
                log.info("factory %s: funding output checked", record.instance_id[:16])
            else:
                found.append((record.instance_id, problem))
        return found

    def on_block(self, raw_block: bytes, txids: list[str]) -> None:
        """The chain thread scanned a block: what it finds is acted on by the worker."""
        for instance, problem in self.problems(raw_block, txids):
            self._submit(lambda i=instance, p=problem: self.compromised(i, p))  # type: ignore[misc]

    def recheck(self) -> None:
        """At start-up (worker): check every live client factory whose funding is already
        recorded as confirmed (by an older version, or before a crash ended the block's job)."""
        heights = {
            height
            for r in self._records.all()
            if isinstance(r, store.ClientRecord) and r.state in LIVE and not is_compromised(r)
            for txid, height in r.confirmed
            if txid == r.funding_txid
        }
        for height in sorted(heights):
            try:
                block = self._node.rpc.call("getrawblockbyheight", {"height": height})
                raw = bytes.fromhex(block.get("block") or "")
                txids = block_txids(raw) if raw else []
            except Exception as e:  # the block's next scan, if any, checks it
                log.info("cannot recheck the fundings confirmed at %d: %s", height, e)
                continue
            for instance, problem in self.problems(raw, txids):
                self.compromised(instance, problem)

    def compromised(self, instance: str, problem: str) -> None:
        """Worker: mark it, say it once, take no more HTLCs on its channel, close the channel."""
        record = self._records.get(instance)
        if not isinstance(record, store.ClientRecord) or is_compromised(record):
            return
        self._records.persist(record.replace(error=COMPROMISED + problem))
        events.compromise(instance, "client", problem)
        log.warning(
            "factory %s is COMPROMISED: %s. Its signed exit cannot spend the funding: the channel"
            " takes no more HTLCs and is being closed; funds already in it are at the LSP's mercy",
            instance[:16],
            problem,
        )
        self._guards.refresh()
        leaf = txid_of(record.path[-1].raw)
        try:
            channels = self._node.channels()
        except ChannelsUnavailable as e:  # the guards already fail its HTLCs; closed at restart
            log.warning("factory %s: cannot close its channel now: %s", instance[:16], e)
            return
        for ch in channels.values():
            cid = ch.get("channel_id")
            if ch.get("funding_txid") != leaf or not cid or ch.get("state") not in CLOSABLE:
                continue
            try:
                self._node.rpc.call("close", {"id": cid, "unilateraltimeout": 1})
            except Exception as e:
                log.info("close %s: %s", cid[:16], e)
