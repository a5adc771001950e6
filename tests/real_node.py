"""What every real-lightningd test needs: lightningd on PATH (else the module is skipped with the
reason), the project's bitcoind on PATH, pyln-testing told what this lightningd is, the plugin as an
operator installs it, and lightning-cli run exactly as an operator types it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from superscalar_plugin.engine.tree import UnsignedNodeTx
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.plugin.lightningd.psbt import leaf_psbt

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = str(Path(sys.executable).parent / "superscalar")


def require_lightningd() -> None:
    """Skip the calling test module unless a lightningd is on PATH; prepare the environment
    pyln-testing reads when it is."""
    if shutil.which("lightningd") is None:
        pytest.skip(
            "lightningd is not on PATH: build Core Lightning v26.06.6 and put it on PATH to run "
            "the real-node tests",
            allow_module_level=True,
        )
    bitcoind_dir = ROOT / ".venv" / "bitcoind-path"
    if shutil.which("bitcoind") is None and bitcoind_dir.exists():
        os.environ["PATH"] = bitcoind_dir.read_text().strip() + os.pathsep + os.environ["PATH"]
    # pyln-testing passes --grpc-port unless RUST=0; a lightningd built without Rust (no
    # cln-grpc plugin) refuses that option.
    os.environ.setdefault("RUST", "0")


def cli(node: Any, *args: str) -> Any:
    """`lightning-cli <args>` against a pyln-testing node, arguments as typed in a shell (so
    `connect <id> 127.0.0.1 <port>` sends the raw token 127.0.0.1, as an operator's would)."""
    out = subprocess.run(
        [
            "lightning-cli",
            "--network=regtest",
            f"--lightning-dir={node.daemon.lightning_dir}",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out) if out.strip() else None


def connect_by_ip(node: Any, peer: Any) -> None:
    """How every LSP connects to its clients: `lightning-cli connect <id> 127.0.0.1 <port>`."""
    cli(node, "connect", peer.info["id"], "127.0.0.1", str(peer.port))


def write_plugin(directory: Path, name: str, source: str) -> str:
    """A small pyln plugin for a test node: `source` as an executable file run by this
    interpreter (which has pyln-client); returns its path for the node's `plugin` option."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return str(path)


# --- factories on real nodes: what most real-node tests start with --------------------------

CHANNEL_SAT = 500_000


def lsp_and_clients(
    node_factory: Any,
    n: int,
    lsp_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    lsp_broken_log: str | None = None,
) -> tuple[Any, list[Any]]:
    """An LSP and `n` clients running the plugin, connected as an operator connects them (each
    options dict is laid over the defaults: e.g. `{"plugin": [PLUGIN, another]}`)."""
    # watchtime-blocks: the to_self_delay the LSP asks of clients, short so exits finish quickly.
    lsp = node_factory.get_node(
        options={"plugin": PLUGIN, "watchtime-blocks": 6, **(lsp_options or {})},
        may_reconnect=True,
        broken_log=lsp_broken_log,
    )
    clients = node_factory.get_nodes(
        n,
        opts={
            "plugin": PLUGIN,
            "superscalar-accept-from": lsp.info["id"],
            "may_reconnect": True,
            **(client_options or {}),
        },
    )
    for c in clients:
        connect_by_ip(lsp, c)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def create_factory(lsp: Any, clients: list[Any], **extra: Any) -> dict[str, Any]:
    from pyln.testing.utils import wait_for

    ids = [c.info["id"] for c in clients]
    params = {"clients": ids, "channel_sat": CHANNEL_SAT, "states_per_layer": 2, "step_blocks": 6}
    result: dict[str, Any] = {}

    def attempt() -> bool:  # the bLIP-56 handshake arrives right after connecting
        nonlocal result
        try:
            result = lsp.rpc.call("factory-create", {**params, **extra})
            return True
        except Exception as e:
            if "has not announced SuperScalar support" in str(e):
                return False
            raise

    wait_for(attempt)
    return result


def normal(node: Any, peer: Any) -> bool:
    chans = node.rpc.listpeerchannels(peer.info["id"])["channels"]
    return any(c["state"] == "CHANNELD_NORMAL" for c in chans)


def pay_both_ways(lsp: Any, clients: list[Any], amount_msat: int) -> None:
    for c in clients:
        inv = c.rpc.invoice(amount_msat, f"to-{os.urandom(4).hex()}", "factory")["bolt11"]
        assert lsp.rpc.pay(inv)["status"] == "complete"
    for c in clients:
        inv = lsp.rpc.invoice(amount_msat // 2, f"from-{os.urandom(4).hex()}", "factory")["bolt11"]
        assert c.rpc.pay(inv)["status"] == "complete"


SMALL = {"states_per_layer": 2, "step_blocks": 3}


def open_factory(lsp: Any, clients: list[Any], **extra: Any) -> dict[str, Any]:
    """A small factory whose channels are open on both sides (`extra`: factory-create params)."""
    from pyln.testing.utils import wait_for

    out = create_factory(lsp, clients, **{**SMALL, **extra})
    for c in clients:
        wait_for(lambda c=c: normal(lsp, c) and normal(c, lsp))
    return out


def wallet_sat(node: Any) -> int:
    return sum(
        int(o["amount_msat"]) // 1000
        for o in node.rpc.listfunds()["outputs"]
        if o["status"] == "confirmed"
    )


def no_htlcs(node: Any) -> bool:
    return all(not c.get("htlcs") for c in node.rpc.listpeerchannels()["channels"])


def factory_message(payload: Any) -> str:
    """A SuperScalar payload (`protocol.Move`, `protocol.Key`, ...) as the hex of the bLIP-56
    message 32800 that carries it: what `sendcustommsg` sends."""
    from superscalar_plugin.engine import blip56, protocol

    body = protocol.encode(payload)
    return blip56.Piggyback(blip56.SUPERSCALAR_PROTOCOL_ID, body).encode().hex()


# --- a factory's end on real nodes: short lives, so tests reach the dying period quickly --------

# The EWT of these shapes is 39 blocks; moves are possible until T - 2*EWT - 58.
LADDER = {
    "superscalar-lifetime-blocks": 300,
    "superscalar-dying-blocks": 220,
    "superscalar-ladder-every": 20,
    "superscalar-states-per-layer": 2,
    "superscalar-step-blocks": 3,
}


def status(node: Any, instance: str) -> dict[str, Any]:
    """`node`'s factory-status of one factory."""
    return dict(node.rpc.call("factory-status", {"instance": instance})["factories"][0])


def to_us_msat(node: Any, peer: Any) -> dict[str, int]:
    """Per channel id with `peer`: `node`'s balance."""
    return {
        c["channel_id"]: int(c["to_us_msat"])
        for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]
    }


def mine_to(bitcoind: Any, nodes: list[Any], height: int) -> None:
    """Mine up to `height` (if below) and wait until every node saw it."""
    from pyln.testing.utils import wait_for

    now = bitcoind.rpc.getblockcount()
    if height > now:
        bitcoind.generate_block(height - now)
    for n in nodes:
        wait_for(lambda n=n: n.rpc.getinfo()["blockheight"] >= height)


MOVE_DEPTH = 3  # superscalar-move-min-depth's default: a client moves only into a deeper target


def migrate(lsp: Any, instance: str, bitcoind: Any, nodes: list[Any]) -> dict[str, Any]:
    """`factory-migrate`, then the blocks that confirm the successor deep enough for its clients
    to move (the LSP asks again at each)."""
    new = dict(lsp.rpc.call("factory-migrate", {"instance": instance}))
    mine_to(bitcoind, nodes, bitcoind.rpc.getblockcount() + MOVE_DEPTH)
    return new


def fill(lsp: Any, clients: list[Any], amount_msat: int) -> None:
    """Payments both ways over the factory channels: each client ends holding money."""
    from pyln.testing.utils import wait_for

    for c in clients:
        inv = c.rpc.invoice(amount_msat, f"in-{os.urandom(4).hex()}", "in")["bolt11"]
        assert lsp.rpc.pay(inv)["status"] == "complete"
        # `pay` returns with the preimage; the client can spend it once the commitments settle.
        wait_for(lambda c=c: no_htlcs(c) and no_htlcs(lsp))
        back = lsp.rpc.invoice(amount_msat // 4, f"out-{os.urandom(4).hex()}", "out")["bolt11"]
        assert c.rpc.pay(back)["status"] == "complete"
    for n in [lsp, *clients]:
        wait_for(lambda n=n: no_htlcs(n))


# --- zero-conf channels on a transaction that is never broadcast (DESIGN 3.1-3.3) ---------------

# A plugin for the channel-fact tests, steered through the node's datastore under ["facts", ...]:
# - the `openchannel` hook answers zero-conf (mindepth 0), with "reserve" (sat) when stored: the
#   reserve the fundee asks its opener to keep;
# - the `htlc_accepted` hook (async: HTLCs do not queue behind a held one) holds an HTLC while
#   "hold" is the short_channel_id it came in over, and answers a forward with
#   `"forward_to": <channel id>` when "forward_to" is stored.
FACTS_PLUGIN = """
import threading, time
from pyln.client import Plugin
plugin = Plugin()

def stored(key):
    found = plugin.rpc.listdatastore(["facts", key])["datastore"]
    return found[0]["string"] if found else None

@plugin.hook("openchannel")
def on_openchannel(openchannel, plugin, **kwargs):
    answer = {"result": "continue", "mindepth": 0}
    reserve = stored("reserve")
    if reserve is not None:
        answer["reserve"] = reserve
    return answer

def answer(htlc, onion, request):
    while stored("hold") == htlc["short_channel_id"]:
        time.sleep(0.1)
    result = {"result": "continue"}
    forward_to = stored("forward_to")
    if forward_to is not None and "short_channel_id" in onion:
        result["forward_to"] = forward_to
    request.set_result(result)

@plugin.async_hook("htlc_accepted")
def on_htlc_accepted(htlc, onion, plugin, request, **kwargs):
    threading.Thread(target=answer, args=(htlc, onion, request), daemon=True).start()

plugin.run()
"""


def facts_plugin(directory: Path) -> str:
    return write_plugin(directory, "facts_plugin.py", FACTS_PLUGIN)


def steer(node: Any, key: str, value: str | None) -> None:
    """Set (or, with None, clear) one of FACTS_PLUGIN's datastore settings on `node`."""
    if value is None:
        node.rpc.deldatastore(["facts", key])
    else:
        node.rpc.datastore(["facts", key], string=value, mode="create-or-replace")


def channel(node: Any, channel_id: str) -> dict[str, Any]:
    """`node`'s listpeerchannels entry for `channel_id`."""
    [chan] = [c for c in node.rpc.listpeerchannels()["channels"] if c["channel_id"] == channel_id]
    return chan


def open_unbroadcast_channel(
    opener: Any, peer: Any, amount_sat: int, withhold: bool = False, **start: Any
) -> str:
    """A zero-conf, unannounced anchor channel from `opener` to `peer` (whose `openchannel` hook
    answers mindepth 0) on an output of a transaction that is never broadcast: the funding is an
    UNSIGNED PSBT paying `fundchannel_start`'s scriptpubkey, its input (an outpoint that does not
    exist) carrying `witness_utxo`. `withhold` is `fundchannel_complete`'s (the plugin never sets
    it). Returns the channel id once both sides are CHANNELD_NORMAL."""
    from pyln.testing.utils import wait_for

    params = {
        "id": peer.info["id"],
        "amount": amount_sat,
        "mindepth": 0,
        "announce": False,
        "channel_type": [12, 46, 50],
        "push_msat": 1000,
        **start,
    }
    script = bytes.fromhex(opener.rpc.call("fundchannel_start", params)["scriptpubkey"])
    tx = Tx(2, (TxIn(os.urandom(32).hex(), 0, 0xFFFFFFFD),), (TxOut(amount_sat, script),), 0)
    parent_script = bytes.fromhex("5120") + os.urandom(32)  # a P2TR output that never existed
    psbt = leaf_psbt(UnsignedNodeTx(0, tx, amount_sat + 1_000, parent_script))
    # Not pyln-client's `fundchannel_complete` wrapper: it sends withhold=true (DESIGN 3.4).
    done = opener.rpc.call(
        "fundchannel_complete", {"id": peer.info["id"], "psbt": psbt, "withhold": withhold}
    )
    channel_id: str = done["channel_id"]
    wait_for(
        lambda: all(channel(n, channel_id)["state"] == "CHANNELD_NORMAL" for n in (opener, peer))
    )
    return channel_id


# --- payments over a chosen channel: `sendpay` with an explicit route -------------------------


def invoice(payee: Any, amount_msat: int) -> dict[str, Any]:
    """A fresh invoice of `payee`, with its amount and its `min_final_cltv_expiry` ("cltv")."""
    inv: dict[str, Any] = payee.rpc.invoice(amount_msat, f"facts-{os.urandom(8).hex()}", "facts")
    inv["amount_msat"] = amount_msat
    inv["cltv"] = payee.rpc.decode(inv["bolt11"])["min_final_cltv_expiry"]
    return inv


def start_payment(payer: Any, route: list[dict[str, Any]], inv: dict[str, Any]) -> None:
    payer.rpc.sendpay(
        route,
        inv["payment_hash"],
        payment_secret=inv["payment_secret"],
        amount_msat=route[-1]["amount_out_msat"],
        bolt11=inv["bolt11"],
    )


def settle(*nodes: Any) -> None:
    """Wait until no channel of `nodes` has an HTLC left (waitsendpay returns on the preimage,
    before the commitments that remove the HTLC are exchanged)."""
    from pyln.testing.utils import wait_for

    wait_for(
        lambda: all(c["htlcs"] == [] for n in nodes for c in n.rpc.listpeerchannels()["channels"])
    )


def send_route(payer: Any, route: list[dict[str, Any]], inv: dict[str, Any]) -> dict[str, Any]:
    """Pay `inv` along `route` and wait for the result (raises RpcError if it failed)."""
    start_payment(payer, route, inv)
    done: dict[str, Any] = payer.rpc.waitsendpay(inv["payment_hash"], timeout=60)
    return done


def hop(scid: str, node: Any, amount_msat: int, cltv: int) -> dict[str, Any]:
    """One sendpay route hop, in v26.06's field names (the older id/channel/amount_msat/delay
    are accepted too): `cltv` is relative to the current block height."""
    return {
        "short_channel_id_dir": scid,
        "node_id_out": node.info["id"],
        "amount_out_msat": amount_msat,
        "cltv_out": cltv,
    }


def direct_route(
    payer: Any, payee: Any, channel_id: str, inv: dict[str, Any]
) -> list[dict[str, Any]]:
    """A one-hop route over one chosen channel: the payer names it by its own local alias."""
    alias = channel(payer, channel_id)["alias"]["local"]
    return [hop(alias, payee, inv["amount_msat"], inv["cltv"])]


def forwarding_fee(update: dict[str, Any], amount_msat: int) -> int:
    return (
        int(update["fee_base_msat"]) + amount_msat * update["fee_proportional_millionths"] // 10**6
    )


def circular_route(
    client: Any, lsp: Any, out: str, back: str, inv: dict[str, Any]
) -> list[dict[str, Any]]:
    """The client pays its own invoice out over channel `out` and back in over channel `back`:
    [the LSP over `out` (the client's local alias), the client over `back` (its remote alias, the
    LSP's own name for it)], amounts and delays from the LSP's channel_update for `back` as the
    client sees it (`updates.remote` in listpeerchannels)."""
    update = channel(client, back)["updates"]["remote"]
    amount = int(inv["amount_msat"])
    return [
        hop(
            channel(client, out)["alias"]["local"],
            lsp,
            amount + forwarding_fee(update, amount),
            inv["cltv"] + update["cltv_expiry_delta"],
        ),
        hop(channel(client, back)["alias"]["remote"], client, amount, inv["cltv"]),
    ]


def max_movable(spendable_msat: int, update: dict[str, Any]) -> int:
    """The largest amount whose forwarding fee under `update` still fits in `spendable_msat`."""
    amount = (
        (spendable_msat - int(update["fee_base_msat"]))
        * 10**6
        // (10**6 + update["fee_proportional_millionths"])
    )
    while amount + 1 + forwarding_fee(update, amount + 1) <= spendable_msat:
        amount += 1
    return amount


def buy(node: Any, instance: str, sat: int) -> dict[str, Any]:
    """factory-buy, retried while the LSP has not heard our greeting yet (after a restart)."""
    from pyln.testing.utils import wait_for

    result: dict[str, Any] = {}

    def attempt() -> bool:
        nonlocal result
        try:
            result = node.rpc.call("factory-buy", {"instance": instance, "sat": sat})
            return True
        except Exception as e:
            if "not greeted" in str(e) or "offline" in str(e):
                return False
            raise

    wait_for(attempt, timeout=120)
    return result


def mine_until(bitcoind: Any, done: Any, timeout: int = 400) -> None:
    """A block at a time until `done()` (pyln's wait_for backs off to 5 s between tries)."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not reached in time"
        bitcoind.generate_block(1)
        time.sleep(0.5)
