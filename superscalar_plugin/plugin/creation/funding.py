"""The LSP's calls to lightningd for a factory's funding and channels, each failure named.

Owns: nothing. Worker thread. May call: lightningd's wallet (`fundpsbt`, `addpsbtoutput`,
`signpsbt`, `sendpsbt`, `unreserveinputs`) and channel (`fundchannel_start/complete/cancel`) RPCs.
Every refusal raises `RpcFailed` with the message the LSP's abort reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TypeVar

from ...engine import store
from ...engine.tree import UnsignedNodeTx
from ..lightningd import psbt as psbtmod
from ..lightningd.config import FACTORY_CHANNEL_TYPE, FACTORY_PUSH_MSAT, FACTORY_RESERVE_SAT
from ..lightningd.runtime import Rpc, RpcFailed, why

log = logging.getLogger("superscalar")

FUNDING_RESERVE_BLOCKS = 2016
# tx overhead + the P2TR funding output, which addpsbtoutput adds later.
FUNDING_START_WEIGHT = (4 + 1 + 1 + 4 + 43) * 4


def reserve_inputs(rpc: Rpc, amount: int, feerate: str) -> str:
    """Select and reserve wallet inputs for the funding; its txid is fixed by their outpoints."""
    try:
        res = rpc.call(
            "fundpsbt",
            {
                "satoshi": amount,
                "feerate": feerate,
                "startweight": FUNDING_START_WEIGHT,
                "reserve": FUNDING_RESERVE_BLOCKS,
                "excess_as_change": True,
            },
        )
    except Exception as e:
        raise RpcFailed(f"cannot fund a factory of {amount} sat from the wallet: {why(e)}") from e
    return str(res["psbt"])


T = TypeVar("T")
PARALLEL_PEERS = 8  # lightningd round trips to different clients in flight at once


def per_client(
    clients: Sequence[store.ClientEntry],
    call: Callable[[store.ClientEntry], T],
    what: str,
    timeout: float,
    on_batch: Callable[[dict[int, T | RpcFailed]], None] | None = None,
    batch: int = 1,
) -> list[T | RpcFailed]:
    """`call` for every client, up to PARALLEL_PEERS at once: each is a round trip to a different
    peer through lightningd, independent of the others (pyln's RPC opens a connection per call).
    Results in the clients' order; a refusal is returned in its place, not raised, and so is a
    client whose round trip has not returned after `timeout` seconds (a peer that never answers
    must not hold the LSP's worker: its call is left behind, and the abort cancels it).

    `on_batch`, on the caller's thread, gets the results by client index as they come, at least
    `batch` at a time (the last batch may be smaller), while the other calls are in flight."""

    def one(c: store.ClientEntry) -> T | RpcFailed:
        try:
            return call(c)
        except RpcFailed as e:
            return e

    pool = ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_PEERS, len(clients))))
    try:
        futures = [pool.submit(one, c) for c in clients]
        _collect(futures, timeout, on_batch, batch)
        return [
            f.result()
            if f.done()
            else RpcFailed(f"client {c.node_id}: {what} did not return within {timeout:g} s")
            for c, f in zip(clients, futures, strict=True)
        ]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(
    futures: list[Future[T | RpcFailed]],
    timeout: float,
    on_batch: Callable[[dict[int, T | RpcFailed]], None] | None,
    batch: int,
) -> None:
    """Wait for `futures` up to `timeout` seconds, handing finished results to `on_batch`."""
    index = {f: i for i, f in enumerate(futures)}
    done: dict[int, T | RpcFailed] = {}
    try:
        for f in as_completed(futures, timeout=timeout):
            done[index[f]] = f.result()
            if on_batch is not None and len(done) >= batch:
                on_batch(done)
                done = {}
    except TimeoutError:
        pass  # the caller names the clients still out
    if on_batch is not None and done:
        on_batch(done)


def start_channel(
    rpc: Rpc, client: store.ClientEntry, amount: int | None = None, push_msat: int = 0
) -> str:
    """`fundchannel_start` with a client: the channel's funding script (hex). `amount` defaults
    to the client's channel; `push_msat` (a DW update: what the client holds in the channels the
    new one replaces) is given to the client on top of the one sat every factory channel gets."""
    try:
        res = rpc.call(
            "fundchannel_start",
            {
                "id": client.node_id,
                "amount": client.channel_sat if amount is None else amount,
                "announce": False,
                "mindepth": 0,
                # A fundee that never held funds forgets an unconfirmed channel after 2016
                # blocks (DESIGN 3.6); one pushed sat keeps it for the factory's lifetime.
                "push_msat": max(FACTORY_PUSH_MSAT, push_msat),
                "reserve": FACTORY_RESERVE_SAT,
                "channel_type": list(FACTORY_CHANNEL_TYPE),
            },
        )
    except Exception as e:
        raise RpcFailed(f"client {client.node_id}: fundchannel_start failed: {why(e)}") from e
    return str(res["scriptpubkey"])


def add_funding_output(rpc: Rpc, funding_psbt: str, amount: int, address: str) -> tuple[str, int]:
    """The funding PSBT with the factory's output added, and that output's index."""
    try:
        res = rpc.call(
            "addpsbtoutput",
            {"satoshi": amount, "initialpsbt": funding_psbt, "destination": address},
        )
    except Exception as e:
        raise RpcFailed(f"cannot add the funding output: {why(e)}") from e
    return str(res["psbt"]), int(res["outnum"])


def complete_channel(rpc: Rpc, client: store.ClientEntry, leaf: UnsignedNodeTx) -> str:
    """`fundchannel_complete` with the unsigned leaf PSBT: the channel id."""
    try:
        res = rpc.call(
            "fundchannel_complete", {"id": client.node_id, "psbt": psbtmod.leaf_psbt(leaf)}
        )
    except Exception as e:
        raise RpcFailed(f"client {client.node_id}: fundchannel_complete failed: {why(e)}") from e
    return str(res["channel_id"])


def sign_and_send(rpc: Rpc, funding_psbt: str) -> str:
    """Sign the funding with the wallet and broadcast it: its txid."""
    try:
        signed = rpc.call("signpsbt", {"psbt": funding_psbt})["signed_psbt"]
        return str(rpc.call("sendpsbt", {"psbt": signed})["txid"])
    except Exception as e:
        raise RpcFailed(f"the funding transaction was refused: {why(e)}") from e


def release(rpc: Rpc, record: store.LspRecord, opened: set[int]) -> None:
    """Cancel the channels being opened and free the reserved inputs (best effort, logged). A
    channel already completed is closed by its id instead: a zero-conf channel is CHANNELD_NORMAL
    at once, which `fundchannel_cancel` (by peer only) does not take."""
    signing = record.state in (store.LspState.SIGNING, store.LspState.COMPLETING)
    completed = [c for c in record.clients if c.channel_id]
    for i, c in enumerate(record.clients):
        if (i in opened or signing) and not c.channel_id:
            try:
                rpc.call("fundchannel_cancel", {"id": c.node_id})
            except Exception as e:
                log.info("fundchannel_cancel %s: %s", c.node_id, why(e))
    if completed:
        per_client(completed, lambda c: close_unfunded(rpc, c), "close", CLOSE_WAIT)
    if record.funding_psbt:
        try:
            rpc.call(
                "unreserveinputs",
                {"psbt": record.funding_psbt, "reserve": FUNDING_RESERVE_BLOCKS},
            )
        except Exception as e:
            log.error("could not unreserve the funding inputs: %s", why(e))


CLOSE_WAIT = 10  # seconds: after it lightningd closes alone (a commitment that can never confirm)


def close_unfunded(rpc: Rpc, client: store.ClientEntry) -> None:
    """Close a completed channel whose funding (a leaf or a sale) will never exist: the tree or
    the sale was never signed. Nothing in it is anyone's on chain; closing stops its use."""
    try:
        rpc.call("close", {"id": client.channel_id, "unilateraltimeout": CLOSE_WAIT})
    except Exception as e:
        log.info("close %s: %s", client.channel_id, why(e))


def close_retired(rpc: Rpc, channel_id: str) -> None:
    """Start the cooperative close of a channel a DW update replaced, in the background (`close`
    waits for the peer): its funding is an output of a superseded state that never goes on
    chain, so never a commitment of it (`unilateraltimeout` 0: wait for the peer)."""

    def close() -> None:
        try:
            rpc.call("close", {"id": channel_id, "unilateraltimeout": 0})
        except Exception as e:
            log.info("close %s: %s", channel_id[:16], why(e))

    threading.Thread(target=close, name="superscalar-close", daemon=True).start()


def open_ordinary(rpc: Rpc, client: store.ClientEntry) -> tuple[str, str]:
    """An ordinary (on-chain, unannounced) channel of `client.channel_sat` from the wallet, all on
    our side: (channel id, funding txid). The sales' fallback when the leaf cannot sign."""
    try:
        res = rpc.call(
            "fundchannel",
            {"id": client.node_id, "amount": client.channel_sat, "announce": False},
        )
    except Exception as e:
        raise RpcFailed(f"client {client.node_id}: fundchannel failed: {why(e)}") from e
    return str(res["channel_id"]), str(res["txid"])


def cancel(rpc: Rpc, node_id: str) -> None:
    """Cancel a `fundchannel_start` in progress (best effort, logged)."""
    try:
        rpc.call("fundchannel_cancel", {"id": node_id})
    except Exception as e:
        log.info("fundchannel_cancel %s: %s", node_id, why(e))
