"""The fake lightningd's database: the one fact of lightningd's `lightningd.sqlite3` the plugin
reads (DESIGN 3.14). Each node writes, for every channel it commits (opener and fundee alike, the
fundee before `fundchannel_complete` returns on the opener, as lightningd writes it before its
`funding_signed` goes back), a `channels` row with the columns lightningd has, and a `peers` row;
at the path its `listconfigs` says (`wallet` if set, else `<lightning-dir>/<network>/`).

Tests may set `node.wallet_option` (what `listconfigs` `wallet` shows) before channels open.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import FakeNode
    from .state import Channel

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
  id INTEGER PRIMARY KEY, node_id BLOB UNIQUE, address TEXT, feature_bits BLOB
);
CREATE TABLE IF NOT EXISTS channels (
  id INTEGER PRIMARY KEY, peer_id INTEGER REFERENCES peers(id) ON DELETE CASCADE,
  short_channel_id TEXT, full_channel_id BLOB, channel_config_local INTEGER,
  channel_config_remote INTEGER, state INTEGER, funder INTEGER, channel_flags INTEGER,
  minimum_depth INTEGER, funding_tx_id BLOB, funding_tx_outnum INTEGER, funding_satoshi BIGINT,
  our_funding_satoshi BIGINT, funding_pubkey_local BLOB, fundingkey_remote BLOB,
  push_msatoshi BIGINT, msatoshi_local BIGINT, last_tx BLOB, alias_local BIGINT
);
"""


# lightningd's `enum channel_state` (lightningd/channel_state.h), as `channels.state` stores it.
STATE_NUMBERS = {
    "CHANNELD_AWAITING_LOCKIN": 2,
    "CHANNELD_NORMAL": 3,
    "CHANNELD_SHUTTING_DOWN": 4,
    "CLOSINGD_SIGEXCHANGE": 5,
    "CLOSINGD_COMPLETE": 6,
    "AWAITING_UNILATERAL": 7,
    "FUNDING_SPEND_SEEN": 8,
    "ONCHAIN": 9,
    "CLOSED": 10,
    "CHANNELD_AWAITING_SPLICE": 13,
}


def db_path(node: FakeNode) -> Path:
    """Where lightningd keeps its database: `wallet` (sqlite3://<path>[:<backup>]) or the
    default file in the network directory."""
    wallet = node.wallet_option
    if wallet and wallet.startswith("sqlite3://"):
        path = wallet.removeprefix("sqlite3://").split(":", 1)[0]
        return Path(path) if path.startswith("/") else node.lightning_dir / path
    return node.lightning_dir / "lightningd.sqlite3"


def create(node: FakeNode) -> None:
    """The database file with its tables, as lightningd creates it at its first start."""
    if node.wallet_option and not node.wallet_option.startswith("sqlite3://"):
        return
    conn = sqlite3.connect(db_path(node), timeout=60)
    try:
        with conn:
            conn.executescript(SCHEMA)
    finally:
        conn.close()


def record_channel(node: FakeNode, ch: Channel) -> None:
    """Insert the channel's row (and its peer's) as lightningd does when it commits a channel."""
    wallet = node.wallet_option
    if wallet and not wallet.startswith("sqlite3://"):
        return  # a PostgreSQL node: no file
    assert ch.channel_id is not None and ch.funding_txid is not None
    conn = sqlite3.connect(db_path(node), timeout=60)
    try:
        with conn:
            conn.executescript(SCHEMA)
            peer = bytes.fromhex(ch.peer_id)
            conn.execute("INSERT OR IGNORE INTO peers (node_id) VALUES (?)", (peer,))
            (peer_dbid,) = conn.execute(
                "SELECT id FROM peers WHERE node_id = ?", (peer,)
            ).fetchone()
            conn.execute(
                "INSERT INTO channels (peer_id, full_channel_id, state, funder, funding_tx_id,"
                " funding_tx_outnum, funding_satoshi, funding_pubkey_local, fundingkey_remote,"
                " push_msatoshi) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    peer_dbid,
                    bytes.fromhex(ch.channel_id),
                    STATE_NUMBERS.get(ch.state, 2),
                    0 if ch.opener == "local" else 1,
                    bytes.fromhex(ch.funding_txid)[::-1],  # internal byte order
                    ch.funding_outnum,
                    ch.amount_sat,
                    ch.our_funding_pubkey,
                    ch.their_funding_pubkey,
                    ch.push_msat,
                ),
            )
    finally:
        conn.close()
    ch.on_state = lambda c: update_state(node, c)


def update_state(node: FakeNode, ch: Channel) -> None:
    """`channels.state` follows the channel, as lightningd updates it at each state change."""
    number = STATE_NUMBERS.get(ch.state)
    if number is None or ch.channel_id is None:
        return
    conn = sqlite3.connect(db_path(node), timeout=60)
    try:
        with conn:
            conn.execute(
                "UPDATE channels SET state = ? WHERE full_channel_id = ?",
                (number, bytes.fromhex(ch.channel_id)),
            )
    finally:
        conn.close()
