"""What Core Lightning v26.06.6 does with a RETIRED channel, pinned on a real lightningd.

Every migration leaves one retired channel per client: L (the LSP) opened it zero-conf on an
output of the old factory's leaf, a transaction that never goes on chain, C (the client) held
money in it, and it was closed cooperatively after the move (DESIGN 3.1-3.3; the plugin's
`move.py`). Nothing on stock lightningd retires it (the source, lightningd/ at v26.06.6):

- an opener never forgets a channel whose funding never confirmed;
- a fundee forgets one only once 2016 blocks passed without the funding AND it never had a stake
  in it (`is_fundee_should_forget`: no funds of its own, `msat_to_us_max` zero), and keeps the
  newest 100 of those anyway. A factory client always has a stake (a creation pushes it 1 sat);
- the mutual close's transaction, refused by bitcoind (its input never existed), stays in the
  rebroadcast set for as long as the channel exists: sent again after every block and every
  30-60 s, one `sendrawtransaction` (one `bitcoin-cli` run by the bcli plugin) each;
- `withhold=true` on `fundchannel_complete` makes the OPENER delete the channel on close (into
  `listclosedchannels`), but also on any permanent failure, e.g. an error from its peer: it then
  stops watching the funding output, so a withheld factory channel would let a client make the
  LSP forget a live channel and later publish a revoked commitment unpunished. The plugin never
  sets it. The fundee keeps its side as CLOSINGD_COMPLETE either way;
- a close may name another funding output (`wrong_funding`, with the experimental option
  `experimental-shutdown-wrong-funding` on both nodes), which would let the closing transaction
  spend an output that exists; but the fundee accepts it only from the opener, without
  dual-funding, and for a channel never used (no commitment after the first): never a factory
  channel after its move (and a used channel's close that names one never completes);
- `dev-forget-channel` and `dev-max-funding-unconfirmed-blocks` are developer-only.

pyln-testing runs every node with --developer; only the control case below uses a developer
option (`dev-max-funding-unconfirmed-blocks`), to show the forgetting rule firing on this node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from real_node import (
    channel,
    direct_route,
    facts_plugin,
    invoice,
    open_unbroadcast_channel,
    require_lightningd,
    send_route,
    settle,
)

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403
from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

SAT = 300_000
STOCK_FUNDING_TIMEOUT = 2016  # blocks: BOLT #2's "SHOULD forget", lightningd's default


def _pair(
    node_factory: Any,
    tmp_path: Path,
    client_options: dict[str, Any] | None = None,
    lsp_options: dict[str, Any] | None = None,
) -> Any:
    plugin = facts_plugin(tmp_path)
    lsp = node_factory.get_node(
        options={"plugin": plugin, **(lsp_options or {})}, may_reconnect=True
    )
    client = node_factory.get_node(
        options={"plugin": plugin, **(client_options or {})}, may_reconnect=True
    )
    lsp.rpc.connect(client.info["id"], "localhost", client.port)
    return lsp, client


def _retire(lsp: Any, client: Any, **start: Any) -> tuple[str, str]:
    """A channel retired as a migration retires it: opened by L on a never-broadcast output,
    closed cooperatively by C. With the default push C has a stake in it, as in a factory.
    Returns its channel id and its closing transaction (raw)."""
    cid = open_unbroadcast_channel(lsp, client, SAT, **start)
    closed = client.rpc.close(cid)
    assert closed["type"] == "mutual"
    for node in (lsp, client):
        wait_for(lambda node=node: channel(node, cid)["state"] == "CLOSINGD_COMPLETE")
    return cid, str(closed["txs"][0])


def _listed(node: Any) -> dict[str, str]:
    return {c["channel_id"]: c["state"] for c in node.rpc.listpeerchannels()["channels"]}


def _closed(node: Any) -> dict[str, dict[str, Any]]:
    return {c["channel_id"]: c for c in node.rpc.listclosedchannels()["closedchannels"]}


def _sends(node: Any, raw_tx: str, mark: int) -> int:
    """How often since log line `mark` lightningd's rebroadcast handed `raw_tx` to bitcoind and
    had it refused (logged at debug with the raw transaction)."""
    node.daemon.logs_catchup()
    return sum(
        "Expected error broadcasting tx" in line and raw_tx in line
        for line in node.daemon.logs[mark:]
    )


def _mine(bitcoind: Any, nodes: tuple[Any, ...], blocks: int) -> None:
    bitcoind.generate_block(blocks)
    sync_blockheight(bitcoind, list(nodes))


def test_a_retired_channel_outlives_the_unconfirmed_funding_timeout_on_both_nodes(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    """Stock settings: 2016 blocks and more after the close, the retired channel is still
    CLOSINGD_COMPLETE on L and C (neither forgot it, nothing in listclosedchannels), and both
    still send its closing transaction after every block."""
    lsp, client = _pair(node_factory, tmp_path)
    retired, closing_tx = _retire(lsp, client)
    _mine(bitcoind, (lsp, client), STOCK_FUNDING_TIMEOUT + 4)
    marks = [len(n.daemon.logs) for n in (lsp, client)]
    for _ in range(3):
        _mine(bitcoind, (lsp, client), 1)
    for node, mark in zip((lsp, client), marks, strict=True):
        assert _listed(node) == {retired: "CLOSINGD_COMPLETE"}
        assert _closed(node) == {}
        wait_for(lambda node=node, mark=mark: _sends(node, closing_tx, mark) >= 3)


def test_a_fundee_forgets_only_channels_it_never_had_a_stake_in(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    """The control that shows the rule above firing on this node (C's funding timeout cut to 10
    blocks with the developer option, which also cuts the newest-kept count from 100 to 1):
    of two closed channels in which C never held a msat (push 0), C forgets the older one
    completely (not even in listclosedchannels) and keeps the newest; it keeps the retired channel it had a stake in (push
    1 sat, as a creation gives), and L, the opener, forgets none of the three."""
    lsp, client = _pair(node_factory, tmp_path, {"dev-max-funding-unconfirmed-blocks": 10})
    stakeless_old, _ = _retire(lsp, client, push_msat=0)
    _mine(bitcoind, (lsp, client), 1)
    stakeless_new, _ = _retire(lsp, client, push_msat=0)
    retired, _ = _retire(lsp, client)
    assert int(channel(client, retired)["to_us_msat"]) == 1_000
    _mine(bitcoind, (lsp, client), 12)
    wait_for(lambda: stakeless_old not in _listed(client))
    assert _listed(client) == {stakeless_new: "CLOSINGD_COMPLETE", retired: "CLOSINGD_COMPLETE"}
    assert _closed(client) == {}
    assert client.daemon.is_in_log(
        r"Forgetting channel: It has been \d+ blocks without the funding"
    )
    _mine(bitcoind, (lsp, client), 3)
    assert set(_listed(lsp)) == {stakeless_old, stakeless_new, retired}
    assert set(_listed(client)) == {stakeless_new, retired}
    assert _closed(lsp) == {}


def test_withhold_makes_the_opener_forget_on_close_and_on_its_peers_error_alike(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    """Why the plugin never opens a factory channel with `withhold=true`, though it would retire
    the LSP's side: L deletes a withheld channel on its own `close` (no closing transaction, into
    listclosedchannels with `funding_withheld`) while C keeps CLOSINGD_COMPLETE; but L deletes a
    LIVE withheld channel just the same when C fails it (C's `close` timing out into a
    unilateral close, C's error reaching L on reconnection): L no longer watches that funding
    output, so it could not answer C's commitment, revoked or not, once the leaf went on chain."""
    lsp, client = _pair(node_factory, tmp_path)
    failed = open_unbroadcast_channel(lsp, client, SAT, withhold=True)
    assert channel(lsp, failed)["funding"]["withheld"] is True
    client.rpc.disconnect(lsp.info["id"], force=True)
    client.rpc.close(failed, unilateraltimeout=1)
    wait_for(lambda: channel(client, failed)["state"] == "AWAITING_UNILATERAL")
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: failed not in _listed(lsp))
    assert _closed(lsp)[failed]["funding_withheld"] is True
    assert channel(client, failed)["state"] == "AWAITING_UNILATERAL"

    lsp.rpc.connect(client.info["id"], "localhost", client.port)  # L hung up on the error
    closed = open_unbroadcast_channel(lsp, client, SAT, withhold=True)
    result = lsp.rpc.close(closed)
    assert result["txs"] == []
    assert closed not in _listed(lsp)
    assert _closed(lsp)[closed]["funding_withheld"] is True
    wait_for(lambda: channel(client, closed)["state"] == "CLOSINGD_COMPLETE")
    _mine(bitcoind, (lsp, client), 3)
    assert closed not in _listed(lsp)
    assert channel(client, closed)["state"] == "CLOSINGD_COMPLETE"


def test_a_used_channel_cannot_be_closed_on_another_funding_output(
    node_factory: Any, bitcoind: Any, executor: Any, tmp_path: Path
) -> None:
    """With `experimental-shutdown-wrong-funding` on both nodes, L (the opener) asks to close a
    channel on another outpoint (`close ... wrong_funding`), one that exists on chain: C refuses
    it (a warning) for a channel that carried a payment, as every retired channel did (the
    move). On reconnection L's closingd still signs closing transactions over that outpoint and
    C's over the real funding: each refuses the other's signature and the close never
    completes (CLOSINGD_SIGEXCHANGE, negotiating again at each reconnection)."""
    both = {"experimental-shutdown-wrong-funding": None}
    lsp, client = _pair(node_factory, tmp_path, both, both)
    elsewhere = bitcoind.rpc.getblock(bitcoind.rpc.getbestblockhash())["tx"][0]
    used = open_unbroadcast_channel(lsp, client, SAT)
    inv = invoice(client, 10_000_000)
    assert send_route(lsp, direct_route(lsp, client, used, inv), inv)["status"] == "complete"
    settle(lsp, client)
    executor.submit(lsp.rpc.call, "close", {"id": used, "wrong_funding": f"{elsewhere}:0"})
    client.daemon.wait_for_log(r"No shutdown wrong_funding for used channels")
    lsp.daemon.wait_for_log(rf"Setting wrong_funding_txid to {elsewhere}:0")
    client.daemon.wait_for_log(r"Bad closing_signed signature")
    for node in (lsp, client):
        assert channel(node, used)["state"] == "CLOSINGD_SIGEXCHANGE"
        assert not node.daemon.is_in_log(r"Broadcasting txid")
