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
from .network import DUMMY_PLUGIN, Network, PeerRefused, RelayedMessage
from .node import FakeNode
from .plugin_process import LogLine
from .schemas import SCHEMA_VERSION, SchemaSet

__all__ = [
    "DUMMY_PLUGIN",
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
