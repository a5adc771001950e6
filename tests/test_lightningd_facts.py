"""Facts about Core Lightning v26.06.6 that the next steps rely on, pinned on a real lightningd.

Issue 9 item 1 (a client binding its own channel output): a v1 fundee never sees its channel's
funding script, but in a v2 (dual-funded) open, enabled by `--experimental-dual-fund` on both
nodes, the accepter's `openchannel2_sign` hook receives the final PSBT, whose output at the
channel's funding index is the 2-of-2 P2WSH its own lightningd checked (dualopend's
`check_balances`). Even an accepter that contributed no inputs gets this hook. But a v2
accepter cannot take a zero-conf channel, which a factory channel must be: so no way is known on
v26.06.6 for a zero-conf fundee to bind its channel's script.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from real_node import require_lightningd, write_plugin

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403
from pyln.testing.utils import wait_for  # noqa: E402

SPY = """
from pyln.client import Plugin
plugin = Plugin()

@plugin.hook("openchannel2_sign")
def sign(openchannel2_sign, plugin, **kwargs):
    plugin.log("SPY-SIGN " + openchannel2_sign["channel_id"] + " " + openchannel2_sign["psbt"])
    return {"result": "continue", "psbt": openchannel2_sign["psbt"]}

plugin.run()
"""


def test_a_v2_accepter_sees_its_verified_funding_output(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    opener = node_factory.get_node(options={"experimental-dual-fund": None})
    accepter = node_factory.get_node(
        options={
            "experimental-dual-fund": None,
            "plugin": write_plugin(tmp_path, "spy_openchannel2.py", SPY),
        }
    )
    opener.rpc.connect(accepter.info["id"], "localhost", accepter.port)
    opener.fundwallet(2_000_000)
    opener.rpc.fundchannel(accepter.info["id"], 100_000)
    wait_for(lambda: accepter.daemon.is_in_log(r"SPY-SIGN"))
    line = accepter.daemon.is_in_log(r"SPY-SIGN")
    match = re.search(r"SPY-SIGN ([0-9a-f]{64}) (\S+)", line)
    assert match is not None
    [chan] = accepter.rpc.listpeerchannels(opener.info["id"])["channels"]
    assert chan["channel_id"] == match.group(1)
    psbt_v0 = accepter.rpc.setpsbtversion(match.group(2), 0)["psbt"]
    decoded = bitcoind.rpc.decodepsbt(psbt_v0)
    assert decoded["tx"]["txid"] == chan["funding_txid"]
    funding = decoded["tx"]["vout"][chan["funding_outnum"]]
    assert funding["scriptPubKey"]["type"] == "witness_v0_scripthash"
    assert round(funding["value"] * 100_000_000) == 100_000


def test_a_v2_accepter_cannot_take_a_zero_conf_channel(node_factory: Any, bitcoind: Any) -> None:
    """...but v26.06.6 cannot open a zero-conf v2 channel: the accepter's minimum depth is the
    node-wide `funding-confirms` (which lightningd refuses to set to 0), and the `openchannel2`
    hook has no `mindepth` (a FIXME in lightningd/dual_open_control.c). A factory channel's funding
    (a leaf that stays off chain) would never lock in, so factory channels cannot be v2 opens."""
    opener = node_factory.get_node(options={"experimental-dual-fund": None})
    accepter = node_factory.get_node(options={"experimental-dual-fund": None})
    opener.rpc.connect(accepter.info["id"], "localhost", accepter.port)
    opener.fundwallet(2_000_000)
    res = opener.rpc.fundchannel(
        accepter.info["id"], 100_000, mindepth=0, channel_type=[12, 46, 50], announce=False
    )
    assert res["channel_type"]["names"][-1] == "zeroconf/even"
    time.sleep(5)  # a zero-conf channel would be CHANNELD_NORMAL within a second
    for node in (opener, accepter):
        [chan] = node.rpc.listpeerchannels()["channels"]
        assert chan["state"] == "DUALOPEND_AWAITING_LOCKIN"
    bitcoind.generate_block(1)  # one confirmation (funding-confirms=1 on pyln-testing nodes)
    wait_for(
        lambda: all(
            n.rpc.listpeerchannels()["channels"][0]["state"] == "CHANNELD_NORMAL"
            for n in (opener, accepter)
        )
    )
