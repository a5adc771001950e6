"""Facts about Core Lightning v26.06.6 that the next steps rely on, pinned on a real lightningd.

Issue 9 item 1 (a client binding its own channel output): a v1 fundee never sees its channel's
funding script, but in a v2 (dual-funded) open, enabled by `--experimental-dual-fund` on both
nodes, the accepter's `openchannel2_sign` hook receives the final PSBT, whose output at the
channel's funding index is the 2-of-2 P2WSH its own lightningd checked (dualopend's
`check_balances`). Even an accepter that contributed no inputs gets this hook.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from real_node import require_lightningd

require_lightningd()

from pyln.testing.fixtures import *  # noqa: E402, F403
from pyln.testing.utils import wait_for  # noqa: E402

SPY = '''
from pyln.client import Plugin
plugin = Plugin()

@plugin.hook("openchannel2_sign")
def sign(openchannel2_sign, plugin, **kwargs):
    plugin.log("SPY-SIGN " + openchannel2_sign["channel_id"] + " " + openchannel2_sign["psbt"])
    return {"result": "continue", "psbt": openchannel2_sign["psbt"]}

plugin.run()
'''


def _spy(tmp: Path) -> str:
    path = tmp / "spy_openchannel2.py"
    path.write_text(f"#!{sys.executable}\n{SPY}")
    path.chmod(0o755)
    return str(path)


def test_a_v2_accepter_sees_its_verified_funding_output(
    node_factory: Any, bitcoind: Any, tmp_path: Path
) -> None:
    opener = node_factory.get_node(options={"experimental-dual-fund": None})
    accepter = node_factory.get_node(
        options={"experimental-dual-fund": None, "plugin": _spy(tmp_path)}
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
