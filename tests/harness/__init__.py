"""A harness that runs a real Core Lightning plugin process the way lightningd does, without
lightningd: `FakeNode` plays lightningd for one plugin (getmanifest/init, the lightning-rpc
socket, hooks, notifications), `Network` links nodes (connections, custom messages, a shared fake
chain). Every request, response, hook payload, hook result and notification is checked against
Core Lightning v26.06.6's JSON schemas (copied in `schemas/`).

See `network.py` for a usage sketch and `fixtures.py` for the pytest fixtures.
"""

from .errors import (
    HarnessError,
    HarnessTimeout,
    PluginDied,
    PluginProtocolError,
    PluginStartError,
    RpcCallError,
    SchemaViolation,
    UnexpectedCall,
)
from .lightningd_rpcs import DEFAULT_CONFIG, REGTEST_DEFAULTS
from .network import DUMMY_PLUGIN, Network, PeerRefused, RelayedMessage
from .node import FakeNode
from .plugin_process import LogLine
from .schemas import SCHEMA_VERSION, SchemaSet

__all__ = [
    "DEFAULT_CONFIG",
    "DUMMY_PLUGIN",
    "REGTEST_DEFAULTS",
    "SCHEMA_VERSION",
    "FakeNode",
    "HarnessError",
    "HarnessTimeout",
    "LogLine",
    "Network",
    "PeerRefused",
    "PluginDied",
    "PluginProtocolError",
    "PluginStartError",
    "RelayedMessage",
    "RpcCallError",
    "SchemaSet",
    "SchemaViolation",
    "UnexpectedCall",
]
