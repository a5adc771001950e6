"""`FakeNode`: one simulated Core Lightning node running one real plugin process.

The node plays lightningd for its plugin: it spawns it with LIGHTNINGD_PLUGIN=1, sends
`getmanifest` then `init`, checks the manifest as lightningd does, serves the RPCs the plugin
calls on `<lightning-dir>/lightning-rpc`, calls the plugin's hooks and sends it notifications.
Every request and response crossing the fake (both directions) is checked against Core
Lightning's schemas; findings are recorded on the network (see `errors.py`).

Threads: one reader and one writer per plugin process, an accept thread plus one per connection on
the RPC socket, and one "connectd" worker per node delivering what peers send (custom messages,
channel opens) in order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from pyln.client import LightningRpc

from . import lightningd_rpcs, walletdb
from .bitcoin import (
    bits_to_features,
    features_or,
    features_to_bits,
    privkey_from_seed as _privkey,
    pubkey_of,
    regtest,
    sha256,
)
from .errors import (
    JSONRPC2_INVALID_PARAMS,
    JSONRPC2_INVALID_REQUEST,
    JSONRPC2_METHOD_NOT_FOUND,
    LIGHTNINGD,
    PLUGIN_TERMINATED,
    HarnessError,
    HarnessTimeout,
    PluginDied,
    PluginProtocolError,
    PluginStartError,
    RpcCallError,
    RpcFail,
    SchemaViolation,
    UnexpectedCall,
)
from .lightningd_rpcs import HANDLERS, KNOWN_SCHEMA_GAPS
from .payments import PaymentBook
from .plugin_process import LogLine, PluginProcess
from .rpc_server import RpcServer
from .state import Channel, Datastore, Peer, RawToken
from .wallet import Wallet

if TYPE_CHECKING:
    from .network import Network

# lightningd's own feature bits (a plausible v26 set); the plugin's manifest bits are OR-ed in.
BASE_INIT_FEATURES = bits_to_features({1, 7, 8, 12, 14, 17, 19, 23, 25, 27, 35, 39, 45, 47, 51})
BASE_NODE_FEATURES = BASE_INIT_FEATURES
# v26.06.6's bolt11 features: var_onion (8), payment_secret (14), basic_mpp (17), route_blinding
# (25): "02024100", as a real node's invoices carry.
BASE_INVOICE_FEATURES = bits_to_features({8, 14, 17, 25})
FEATURE_PLACES = ("init", "node", "channel", "invoice")
OPTION_TYPES = ("string", "int", "bool", "flag")


def _default_hook_result(name: str) -> dict[str, Any]:
    """What lightningd does when no plugin handles a hook: carry on."""
    return {"result": "continue"}


def _apply_filter(value: Any, filt: Any) -> Any:
    """lightningd's reply filter: keep the members named with `true`, recursively."""
    if filt is True:
        return value
    if isinstance(filt, dict) and isinstance(value, dict):
        return {k: _apply_filter(value[k], f) for k, f in filt.items() if k in value}
    if isinstance(filt, list) and filt and isinstance(value, list):
        return [_apply_filter(v, filt[0]) for v in value]
    return value


class FakeNode:
    def __init__(
        self,
        network: Network,
        name: str,
        index: int,
        *,
        plugin: Sequence[str],
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        utxos: int = 10,
        utxo_sat: int = 10_000_000,
        config: dict[str, int] | None = None,
    ) -> None:
        self.network = network
        self.name = name
        self.index = index
        self.plugin_cmd = list(plugin)
        self.options: dict[str, Any] = dict(options or {})
        # lightningd's own options (fee-base, cltv-delta, funding-confirms...)
        unknown = set(config or {}) - set(lightningd_rpcs.DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"config: the fake does not model {sorted(unknown)}")
        self.config: dict[str, int] = {**lightningd_rpcs.DEFAULT_CONFIG, **(config or {})}
        self.env = dict(env or {})
        self.seed = sha256(f"superscalar harness node {name}".encode())
        self.node_secret = _privkey(self.seed, "node")
        self.node_id = pubkey_of(self.node_secret).hex()
        self.port = 19_700 + index
        self.base_dir = network.base_dir / name
        self.lightning_dir = self.base_dir / "regtest"  # lightningd's config_netdir
        self.lightning_dir.mkdir(parents=True, exist_ok=True)
        self.rpc_path = self.lightning_dir / "lightning-rpc"
        self.log_path = self.base_dir / "log"
        self.wallet = Wallet(self.seed, network.chain)
        # Tests replace one RPC of this node: a handler that raises RpcFail (a backend error),
        # blocks (a peer that never answers) or calls the stock one from HANDLERS.
        self.overrides: dict[str, Callable[[FakeNode, dict[str, Any]], Any]] = {}
        for _ in range(utxos):
            self.wallet.add_fake_utxo(utxo_sat, network.chain.height - 6)
        self.datastore = Datastore(self.base_dir / "datastore.json")
        # What listconfigs `wallet` shows (None: not set, the default sqlite file; walletdb).
        self.wallet_option: str | None = None

        # lightningd state (survives plugin restarts)
        self.up = False  # "lightningd" running (RPC socket served)
        self.peers: dict[str, Peer] = {}
        self.channels: list[Channel] = []
        self.closed_channels: list[str] = []  # channel ids the plugin asked `close` for
        self.pending_opens: dict[str, Channel] = {}  # peer id -> uncommitted channel
        self.book = PaymentBook()  # invoices, payments, forwards (lightningd's wallet db)
        self.our_features: dict[str, str] = {
            "init": BASE_INIT_FEATURES,
            "node": BASE_NODE_FEATURES,
            "channel": "",
            "invoice": BASE_INVOICE_FEATURES,
        }
        self._channel_counter = itertools.count(1)
        self._cli_ids = itertools.count(1)

        # plugin state
        self.process: PluginProcess | None = None
        self.plugin_state = "stopped"  # "stopped" | "starting" | "running" | "dead" | "disabled"
        self.manifest: dict[str, Any] | None = None
        self.init_request: dict[str, Any] | None = None
        self.plugin_methods: set[str] = set()
        self.hooks: dict[str, dict[str, Any]] = {}
        self.subscriptions: set[str] = set()
        self.custom_msgs: set[int] = set()
        self.notification_topics: set[str] = set()
        self._expect_exit = False
        self.exit_code: int | None = None

        # records for tests
        self.logs: list[LogLine] = []
        self._log_cond = threading.Condition()
        self._logsearch_start = 0
        self._log_file = self.log_path.open("a", buffering=1)
        self.stderr_path = self.base_dir / "plugin-stderr.log"
        self._stderr_file = self.stderr_path.open("a", buffering=1)
        self.calls: list[dict[str, Any]] = []  # every RPC served: method, params, result/error
        self.unknown_calls: list[str] = []
        self.plugin_notifications: list[tuple[str, Any]] = []  # custom topics from the plugin

        self._lock = threading.RLock()
        self._inbound: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._inbound_thread: threading.Thread | None = None
        self._server: RpcServer | None = None

    def __repr__(self) -> str:
        return f"<FakeNode {self.name} {self.node_id[:16]} plugin={self.plugin_state}>"

    # ================================================================== logging and findings
    @property
    def timeout(self) -> float:
        return self.network.timeout

    def log(self, message: str, level: str = "info") -> None:
        self._add_log(LogLine(time.time(), "harness", level, message))

    def _add_log(self, line: LogLine) -> None:
        with self._log_cond:
            self.logs.append(line)
            self._log_cond.notify_all()
        with contextlib.suppress(ValueError):
            self._log_file.write(str(line) + "\n")
            if line.source == "stderr":
                self._stderr_file.write(line.message + "\n")
        if (
            line.source == "plugin"
            and line.message.startswith("Hook handler for ")
            and ("failed with an exception" in line.message)
        ):
            self.record(
                HarnessError(
                    "a hook handler raised and pyln-client answered with its fallback: "
                    + line.message,
                    node=self.name,
                )
            )

    def record(self, err: HarnessError) -> None:
        self.network.record_error(err)
        self.log(f"FINDING {type(err).__name__}: {err}", "broken")

    def _violation(
        self, what: str, errors: list[str] | None, instance: Any
    ) -> SchemaViolation | None:
        if not errors:
            return None
        v = SchemaViolation(what, errors, instance, node=self.name)
        self.record(v)
        return v

    def wait_for_log(self, regex: str, timeout: float | None = None) -> LogLine:
        """Wait for a log line (plugin `log` notification, plugin stderr, or harness event)
        matching `regex`, searching from just after the previous match (pyln-testing style)."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._log_cond:
            while True:
                for i in range(self._logsearch_start, len(self.logs)):
                    if pattern.search(self.logs[i].message):
                        self._logsearch_start = i + 1
                        return self.logs[i]
                remaining = deadline - time.monotonic()
                if self.plugin_state == "dead" and not self._expect_exit:
                    tail = "\n".join(str(x) for x in self.logs[-15:])
                    raise PluginDied(
                        f"plugin died while waiting for {regex!r}:\n{tail}", node=self.name
                    )
                if remaining <= 0:
                    tail = "\n".join(str(x) for x in self.logs[-15:])
                    raise HarnessTimeout(
                        f"no log line matching {regex!r} within the timeout; last lines:\n{tail}",
                        node=self.name,
                    )
                self._log_cond.wait(min(remaining, 0.5))

    def is_in_log(self, regex: str) -> LogLine | None:
        pattern = re.compile(regex)
        with self._log_cond:
            for line in self.logs:
                if pattern.search(line.message):
                    return line
        return None

    # ================================================================== lifecycle
    @property
    def rpc(self) -> LightningRpc:
        """A pyln `LightningRpc` on this node's socket (what lightning-cli would use)."""
        return LightningRpc(str(self.rpc_path))

    def _ensure_up(self) -> None:
        if self.up:
            return
        self._server = RpcServer(self.rpc_path, self._dispatch_socket, name=self.name)
        self._server.start()
        if self._inbound_thread is None or not self._inbound_thread.is_alive():
            self._inbound = queue.Queue()
            self._inbound_thread = threading.Thread(
                target=self._inbound_loop, name=f"{self.name}-connectd", daemon=True
            )
            self._inbound_thread.start()
        walletdb.create(self)  # lightningd creates its database at start
        self.up = True

    def start(self) -> FakeNode:
        """Start "lightningd" (the RPC socket) and the plugin: getmanifest, checks, init."""
        if self.plugin_state in ("starting", "running"):
            raise HarnessError("plugin already running", node=self.name)
        self._ensure_up()
        self.plugin_state = "starting"
        self._expect_exit = False
        self.exit_code = None
        self.manifest = None
        # lightningd runs the plugin file with no arguments, plus `--developer` in developer mode.
        cmd = [*self.plugin_cmd, "--developer"] if self.network.developer else self.plugin_cmd
        proc = PluginProcess(
            cmd,
            name=self.name,
            cwd=self.lightning_dir,
            env=self.env,
            on_log=self._add_log,
            on_notification=self._on_plugin_notification,
            on_exit=lambda code, reason: self._on_plugin_exit(proc, code, reason),
        )
        self.process = proc
        self.log(f"starting plugin: {' '.join(self.plugin_cmd)}")
        try:
            proc.start()
        except OSError as e:
            self.plugin_state = "dead"
            err = PluginStartError(f"cannot run {self.plugin_cmd}: {e}", node=self.name)
            self.record(err)
            raise err from e
        try:
            manifest = self._startup_call("getmanifest", {"allow-deprecated-apis": False})
            if not isinstance(manifest, dict):
                raise PluginStartError(
                    f"getmanifest result is not an object: {manifest!r}", node=self.name
                )
            if "disable" in manifest:
                self._disable(f"disabled itself: {manifest['disable']}")
                return self
            problems = self._check_manifest(manifest)
            if problems:
                raise PluginStartError("manifest refused: " + "; ".join(problems), node=self.name)
            self._adopt_manifest(manifest)
            init = {"options": self._init_options(manifest), "configuration": self._configuration()}
            self.init_request = init
            result = self._startup_call("init", init)
            if isinstance(result, dict) and "disable" in result:
                self._disable(f"disabled itself at init: {result['disable']}")
                return self
        except HarnessError as e:
            self._expect_exit = True
            proc.kill()
            proc.wait(self.timeout)
            self.plugin_state = "dead"
            self.record(
                e if isinstance(e, PluginStartError) else PluginStartError(str(e), node=self.name)
            )
            raise
        self.plugin_state = "running"
        self.log(f"plugin running (pid {proc.pid})")
        return self

    def _startup_call(self, method: str, params: dict[str, Any]) -> Any:
        assert self.process is not None
        fut = self.process.request(method, params)
        try:
            resp = fut.result(timeout=self.timeout)
        except FutureTimeout as e:
            raise PluginStartError(f"timed out {method}", node=self.name) from e
        except PluginDied as e:
            raise PluginStartError(f"exited during {method}: {e}", node=self.name) from e
        if "error" in resp:
            raise PluginStartError(f"{method} returned an error: {resp['error']}", node=self.name)
        return resp.get("result")

    def _disable(self, why: str) -> None:
        assert self.process is not None
        self.log(f"plugin {why}", "info")
        self._expect_exit = True
        self.process.kill()
        self.process.wait(self.timeout)
        self.plugin_state = "disabled"

    def _check_manifest(self, m: dict[str, Any]) -> list[str]:
        """What lightningd's plugin_parse_getmanifest_response refuses."""
        errs: list[str] = []
        dynamic = m.get("dynamic", False)
        if not isinstance(dynamic, bool):
            errs.append(f'getmanifest: invalid "dynamic" field {dynamic!r}')
        fb = m.get("featurebits")
        if fb is not None:
            if not isinstance(fb, dict):
                errs.append("featurebits is not an object")
            else:
                have = False
                for place, value in fb.items():
                    if place not in FEATURE_PLACES:
                        continue
                    if not isinstance(value, str) or not re.fullmatch(r"([0-9a-fA-F]{2})*", value):
                        errs.append(
                            f"Featurebits returned by plugin is not a valid hexadecimal string: {value!r}"
                        )
                        continue
                    have = have or bool(value)
                    clash = features_to_bits(value) & features_to_bits(self._base_features(place))
                    if clash:
                        errs.append(
                            f"Custom featurebits already present ({place}: {sorted(clash)})"
                        )
                if have and dynamic:
                    errs.append(
                        f"Custom featurebits only allows for non-dynamic plugins: dynamic=1, featurebits={fb}"
                    )
        cm = m.get("custommessages")
        if cm is not None and (
            not isinstance(cm, list) or not all(type(t) is int and 0 <= t < 65536 for t in cm)
        ):
            errs.append(f"custommessages must be an array of u16, not {cm!r}")
        if "nonnumericids" in m and not isinstance(m["nonnumericids"], bool):
            errs.append("Invalid nonnumericids")
        for i, n in enumerate(m.get("notifications", []) or []):
            if not isinstance(n, dict) or not isinstance(n.get("method"), str):
                errs.append(f'"result.notifications[{i}].name" missing or not a string.')
            elif self.network.schemas.has_notification(n["method"]):
                errs.append(
                    f'plugin attempted to register a native notification topic "{n["method"]}"'
                )
        for opt in m.get("options", []) or []:
            if not isinstance(opt, dict) or not all(
                k in opt for k in ("name", "type", "description")
            ):
                errs.append('An option is missing either "name", "description" or "type"')
            elif opt["type"] not in OPTION_TYPES:
                errs.append(
                    f'Only "string", "int", "bool", and "flag" options are supported (option {opt["name"]})'
                )
        methods = m.get("rpcmethods")
        if not isinstance(methods, list):
            errs.append('"result.rpcmethods" missing or not an array')
        else:
            for meth in methods:
                if not isinstance(meth, dict) or not isinstance(meth.get("name"), str):
                    errs.append(f'rpcmethod does not have a string "name": {meth!r}')
                    continue
                if not isinstance(meth.get("description"), str):
                    errs.append(f'rpcmethod {meth["name"]} does not have a string "description"')
                if not isinstance(meth.get("usage"), str):
                    errs.append(f'"usage" not provided by plugin for {meth["name"]}')
                if meth["name"] in HANDLERS:
                    errs.append(
                        f'Could not register method "{meth["name"]}", a method with that name is already registered'
                    )
        subs = m.get("subscriptions", [])
        if subs is not None and (
            not isinstance(subs, list) or not all(isinstance(s, str) for s in subs)
        ):
            errs.append('"result.subscriptions" is not an array of strings')
        for h in m.get("hooks", []) or []:
            name = h.get("name") if isinstance(h, dict) else h
            if not isinstance(name, str) or not self.network.schemas.has_hook(name):
                errs.append(
                    f"could not register hook '{name}', either the name doesn't exist or another plugin already registered it."
                )
            elif isinstance(h, dict) and "filters" in h:
                errs.extend(_filter_problems(name, h["filters"]))
        for opt_name in self.options:
            if not any(
                isinstance(o, dict) and o.get("name") == opt_name
                for o in m.get("options", []) or []
            ):
                errs.append(f"--{opt_name}: unknown option (the plugin does not declare it)")
        return errs

    def _base_features(self, place: str) -> str:
        return {
            "init": BASE_INIT_FEATURES,
            "node": BASE_NODE_FEATURES,
            "channel": "",
            "invoice": BASE_INVOICE_FEATURES,
        }[place]

    def _adopt_manifest(self, m: dict[str, Any]) -> None:
        self.manifest = m
        self.plugin_methods = {x["name"] for x in m.get("rpcmethods", [])}
        self.hooks = {}
        for h in m.get("hooks", []) or []:
            entry = h if isinstance(h, dict) else {"name": h}
            self.hooks[entry["name"]] = entry
        self.subscriptions = set(m.get("subscriptions", []) or [])
        self.custom_msgs = set(m.get("custommessages", []) or [])
        self.notification_topics = {n["method"] for n in m.get("notifications", []) or []}
        fb = m.get("featurebits") or {}
        self.our_features = {
            place: features_or(self._base_features(place), fb.get(place, "") or "")
            for place in FEATURE_PLACES
        }

    def _init_options(self, m: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for opt in m.get("options", []) or []:
            name, typ = opt["name"], opt["type"]
            multi = bool(opt.get("multi"))
            if name in self.options:
                value = self.options[name]
            elif "default" in opt and opt["default"] is not None and typ != "flag":
                value = opt["default"]
            else:
                continue
            values = value if (multi and isinstance(value, list)) else [value]
            conv = [self._convert_option(name, typ, v) for v in values]
            if typ == "flag" and conv == [False]:
                continue
            out[name] = conv if multi else conv[0]
        return out

    def _convert_option(self, name: str, typ: str, value: Any) -> Any:
        try:
            if typ == "int":
                return int(value)
            if typ in ("bool", "flag"):
                if isinstance(value, bool):
                    return value
                if str(value).lower() in ("true", "false"):
                    return str(value).lower() == "true"
                raise ValueError(value)
            return value if isinstance(value, str) else str(value)
        except (TypeError, ValueError) as e:
            raise PluginStartError(f"--{name}={value!r}: not a valid {typ}", node=self.name) from e

    def _configuration(self) -> dict[str, Any]:
        return {
            "lightning-dir": str(self.lightning_dir),
            "rpc-file": self.rpc_path.name,
            "startup": True,
            "network": "regtest",
            "feature_set": dict(self.our_features),
        }

    def stop(self, timeout: float | None = None) -> int | None:
        """Shut "lightningd" down: peers disconnect, a plugin subscribed to `shutdown` is told,
        its stdin is closed (pyln's loop then ends), SIGKILL if it is still there after the
        timeout. Returns the plugin's exit code."""
        timeout = min(self.timeout, 10.0) if timeout is None else timeout
        self.network.disconnect_all(self)
        code = self._stop_plugin(timeout)
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.up = False
        with self.network.peer_cond:  # wake RPCs waiting on this node (waitsendpay, close)
            self.network.peer_cond.notify_all()
        if self._inbound_thread is not None:
            self._inbound.put(None)
            self._inbound_thread.join(timeout=5)
            self._inbound_thread = None
        return code

    def _stop_plugin(self, timeout: float) -> int | None:
        proc = self.process
        if proc is None or not proc.alive:
            if self.plugin_state in ("running", "starting"):
                self.plugin_state = "stopped"
            return self.exit_code
        self._expect_exit = True
        if "shutdown" in self.subscriptions or "*" in self.subscriptions:
            with contextlib.suppress(PluginDied):
                proc.notify("shutdown", {"shutdown": {}})
            code = proc.wait(timeout)
            if code is not None:
                self.plugin_state = "stopped"
                return code
        proc.close_stdin()
        code = proc.wait(timeout)
        if code is None:
            self.log("plugin did not exit after its stdin closed: SIGKILL", "unusual")
            proc.kill()
            code = proc.wait(timeout)
        self.plugin_state = "stopped"
        return code

    def kill(self) -> None:
        """SIGKILL the plugin process (lightningd itself stays up: its hooks fall back to their
        defaults and the plugin's RPC methods are gone, as after a plugin crash)."""
        proc = self.process
        if proc is None:
            return
        self._expect_exit = True
        proc.kill()
        proc.wait(self.timeout)
        self.plugin_state = "dead"
        self.log("plugin killed (SIGKILL)", "info")

    def restart(self, *, reconnect: bool = True) -> FakeNode:
        """Restart the node as after a lightningd restart: same lightning-dir, datastore, wallet
        and channels; peers are disconnected and (by default) reconnected once it is back."""
        peers = [
            (self.network.node_by_id(p.node_id), p.direction)
            for p in self.peers.values()
            if p.state != "disconnected"
        ]
        self.stop()
        self.start()
        if reconnect and self.plugin_state == "running":
            for other, direction in peers:
                if other is None or not other.up:
                    continue
                if direction == "out":
                    self.network.connect(self, other)
                else:
                    self.network.connect(other, self)
        return self

    def _on_plugin_exit(self, proc: PluginProcess, code: int | None, reason: str | None) -> None:
        if proc is not self.process:  # an older process of this node
            return
        self.exit_code = code
        if proc.protocol_error:
            self.record(
                PluginProtocolError(
                    f"killed for a protocol violation: {proc.protocol_error}", node=self.name
                )
            )
        if not self._expect_exit and self.plugin_state != "starting":  # start() reports that
            tail = "\n".join(str(x) for x in self.logs[-20:])
            self.record(
                PluginDied(
                    f"plugin exited unexpectedly (code {code}{', ' + reason if reason else ''}); "
                    f"last log lines:\n{tail}",
                    node=self.name,
                )
            )
        if self.plugin_state not in ("disabled", "stopped"):
            self.plugin_state = "dead"
        self.log(f"plugin exited with code {code}", "info")

    def _on_plugin_notification(self, method: str, params: Any) -> None:
        if method not in self.notification_topics:
            self.log(
                f'Plugin attempted to send a notification to topic "{method}" it hasn\'t '
                "declared in its manifest, not forwarding to subscribers.",
                "unusual",
            )
            return
        self.plugin_notifications.append((method, params))
        self.log(f"plugin notification {method}: {params!r:.200}", "debug")

    # ================================================================== talking to the plugin
    @property
    def plugin_running(self) -> bool:
        return self.plugin_state == "running" and self.process is not None and self.process.alive

    def notify(self, topic: str, payload: dict[str, Any]) -> bool:
        """Send a lightningd notification (payload checked against its schema) if the plugin
        subscribed to it. Returns whether it was sent."""
        self._violation(
            f"{topic} notification (sent by the harness)",
            self.network.schemas.check_notification(topic, payload),
            payload,
        )
        if not self.plugin_running or not (
            topic in self.subscriptions or "*" in self.subscriptions
        ):
            return False
        assert self.process is not None
        try:
            self.process.notify(topic, {topic: payload})
        except PluginDied:
            return False
        return True

    def call_hook_async(self, name: str, payload: dict[str, Any]) -> Future[dict[str, Any]]:
        """Call the plugin's hook `name` (if registered); the future gets its (checked) result,
        or the hook's default when the plugin has no such hook or dies. An invalid result is
        recorded and set as the future's exception."""
        out: Future[dict[str, Any]] = Future()
        self._violation(
            f"{name} hook payload (sent by the harness)",
            self.network.schemas.check_hook_payload(name, payload),
            payload,
        )
        if not self.plugin_running or name not in self.hooks:
            out.set_result(_default_hook_result(name))
            return out
        assert self.process is not None
        fut = self.process.request(name, payload)

        def done(f: Future[dict[str, Any]]) -> None:
            try:
                resp = f.result()
            except PluginDied:
                out.set_result(_default_hook_result(name))
                return
            if "error" in resp or "result" not in resp:
                err = PluginProtocolError(
                    f"Plugin for {name} returned non-result response {resp!r:.300}", node=self.name
                )
                self.record(err)
                out.set_exception(err)
                return
            result = resp["result"]
            v = self._violation(
                f"{name} hook result from the plugin",
                self.network.schemas.check_hook_result(name, result),
                result,
            )
            if v is not None:
                out.set_exception(v)
            else:
                out.set_result(result)

        fut.add_done_callback(done)
        return out

    def call_hook(
        self, name: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Synchronous `call_hook_async` (for tests, e.g. a hand-made `htlc_accepted`)."""
        try:
            return self.call_hook_async(name, payload).result(
                timeout=self.timeout if timeout is None else timeout
            )
        except FutureTimeout as e:
            raise HarnessTimeout(f"plugin did not answer the {name} hook", node=self.name) from e

    def hook_wanted(self, name: str, key: str | int) -> bool:
        """lightningd's hook_callable: registered, and `key` among its filters if it has any."""
        hook = self.hooks.get(name)
        if hook is None or not self.plugin_running:
            return False
        filters = hook.get("filters")
        return filters is None or key in filters

    def cli(self, method: str, *args: str, timeout: float | None = None) -> Any:
        """`lightning-cli method args...`: numbers (digits and dots), bools, null, objects and
        arrays are sent unquoted, exactly as lightning-cli does, so `connect <id> 127.0.0.1 9735`
        carries the raw token 127.0.0.1; the `rpc_command` hook sees those raw tokens."""
        tokens = [a if _is_cli_literal(a) else json.dumps(a) for a in args]
        raw = "[" + ", ".join(tokens) + "]"
        params: list[Any] = []
        for t in tokens:
            try:
                params.append(json.loads(t))
            except ValueError:
                # lightningd's parser reads 127.0.0.1 as a primitive token, not a string
                params.append(RawToken(t))
        return self.rpc_call(method, params, timeout=timeout, raw_params=raw)

    def rpc_call(
        self,
        method: str,
        params: dict[str, Any] | list[Any] | None = None,
        timeout: float | None = None,
        raw_params: str | None = None,
    ) -> Any:
        """Call an RPC as lightning-cli would: the plugin's own methods go to the plugin, the rest
        are served by the fake. Returns the result or raises `RpcCallError`."""
        if not self.up:
            raise HarnessError(f"node is stopped (calling {method})", node=self.name)
        params = {} if params is None else params
        req_id = f"cli:{method}#{next(self._cli_ids)}"
        resp = self._dispatch(
            {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params},
            source="cli",
            timeout=timeout,
            raw_params=raw_params,
        )
        assert resp is not None
        if "error" in resp:
            raise RpcCallError(method, params, resp["error"])
        return resp["result"]

    # ================================================================== the RPC socket
    def _dispatch_socket(self, req: dict[str, Any]) -> dict[str, Any] | None:
        return self._dispatch(req, source="socket", timeout=None)

    def _dispatch(
        self,
        req: dict[str, Any],
        *,
        source: str,
        timeout: float | None,
        raw_params: str | None = None,
    ) -> dict[str, Any] | None:
        req_id = req.get("id")
        if req_id is None:
            return None  # a notification to lightningd: nothing to answer
        if isinstance(req.get("method"), str) and self.hook_wanted("rpc_command", req["method"]):
            req, answer = self._rpc_command_hook(req, raw_params, timeout)
            if answer is not None:
                return answer
        method = req.get("method")
        params = req.get("params", {})
        if not isinstance(method, str) or not isinstance(params, (dict, list)):
            return {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": {"code": JSONRPC2_INVALID_REQUEST, "message": "Invalid request"},
            }
        record: dict[str, Any] = {
            "time": time.time(),
            "source": source,
            "method": method,
            "params": params,
        }
        try:
            if method == "notifications":
                result: Any = {}
            elif method in self.plugin_methods and self.plugin_running:
                result = self._forward_to_plugin(req_id, method, params, timeout)
            else:
                result = self._builtin(method, params, source)
            if "filter" in req:
                result = _apply_filter(result, req["filter"])
            record["result"] = result
            resp = {"jsonrpc": "2.0", "id": req_id, "result": result}
        except RpcFail as e:
            record["error"] = e.to_error()
            resp = {"jsonrpc": "2.0", "id": req_id, "error": e.to_error()}
        except Exception as e:  # a harness bug: report it and answer, never drop the connection
            self.record(
                HarnessError(
                    f"harness error serving {method}: {e!r}\n{traceback.format_exc()}",
                    node=self.name,
                )
            )
            err = {"code": LIGHTNINGD, "message": f"harness error: {e!r}"}
            record["error"] = err
            resp = {"jsonrpc": "2.0", "id": req_id, "error": err}
        self.calls.append(record)
        return resp

    def _rpc_command_hook(
        self, req: dict[str, Any], raw_params: str | None, timeout: float | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Every command of the node passes the `rpc_command` hook first (filters permitting),
        with the request's tokens as lightningd read them: `raw_params` when they are not JSON.
        Returns the (possibly replaced) request, or the answer the hook chose to return."""
        assert self.process is not None
        inner = {k: v for k, v in req.items() if k != "params"}
        if raw_params is None:
            fut = self.process.request("rpc_command", {"rpc_command": req})
        else:
            fut = self.process.request_raw(
                "rpc_command",
                '{"rpc_command": ' + json.dumps(inner)[:-1] + ', "params": ' + raw_params + "}}",
            )
        try:
            resp = fut.result(timeout=self.timeout if timeout is None else timeout)
        except FutureTimeout:
            err = HarnessTimeout(
                f"plugin did not answer the rpc_command hook for {req['method']}", node=self.name
            )
            self.record(err)
            return req, {
                "jsonrpc": "2.0",
                "id": req["id"],
                "error": {"code": LIGHTNINGD, "message": str(err)},
            }
        except PluginDied:
            return req, None  # lightningd goes on without the dead plugin's hook
        result = resp.get("result")
        v = self._violation(
            "rpc_command hook result from the plugin",
            self.network.schemas.check_hook_result("rpc_command", result),
            result,
        )
        if v is not None or not isinstance(result, dict) or "result" in result:
            return req, None
        if "replace" in result:
            return result["replace"], None
        if "return" in result:
            return req, {"jsonrpc": "2.0", "id": req["id"], **result["return"]}
        return req, None

    def _forward_to_plugin(
        self, req_id: Any, method: str, params: Any, timeout: float | None
    ) -> Any:
        assert self.process is not None
        fut = self.process.request(
            method, params, req_id=f"{req_id}/cln:{method}#{next(self._cli_ids)}"
        )
        try:
            resp = fut.result(timeout=self.timeout if timeout is None else timeout)
        except FutureTimeout as e:
            err = HarnessTimeout(
                f"plugin did not answer {method} within the timeout", node=self.name
            )
            self.record(err)
            raise RpcFail(LIGHTNINGD, str(err)) from e
        except PluginDied as e:
            raise RpcFail(
                PLUGIN_TERMINATED, "Plugin terminated before replying to RPC call."
            ) from e
        if "error" in resp:
            error = resp["error"]
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise RpcFail(LIGHTNINGD, f"malformed error from plugin: {error!r}")
            raise RpcFail(error["code"], str(error.get("message", "")), error.get("data"))
        if "result" not in resp:
            raise RpcFail(LIGHTNINGD, f"plugin response has no result: {resp!r}")
        return resp["result"]

    def _builtin(self, method: str, params: dict[str, Any] | list[Any], source: str) -> Any:
        handler = self.overrides.get(method) or HANDLERS.get(method)
        if handler is None:
            if source == "cli":  # the test called it: it gets the error, nothing to report
                raise RpcFail(JSONRPC2_METHOD_NOT_FOUND, f"Unknown command '{method}'")
            self.unknown_calls.append(method)
            if method not in self.network.allowed_unknown_calls:
                self.record(UnexpectedCall(method, params, node=self.name))
            raise RpcFail(JSONRPC2_METHOD_NOT_FOUND, f"Unknown command '{method}'")
        schemas = self.network.schemas
        if isinstance(params, list):
            names = schemas.rpc_param_names(method)
            if len(params) > len(names):
                raise RpcFail(
                    JSONRPC2_INVALID_PARAMS,
                    f"too many parameters: got {len(params)}, expected {len(names)}",
                )
            params = {n: v for n, v in zip(names, params, strict=False) if v is not None}
        v = self._violation(f"{method} request", schemas.check_rpc_request(method, params), params)
        if v is not None:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, f"harness: {v.errors[0]}")
        with regtest():
            result = handler(self, params)
        errors = [
            e
            for e in schemas.check_rpc_response(method, result) or []
            if not any(m == method and gap in e for m, gap in KNOWN_SCHEMA_GAPS)
        ]
        self._violation(f"{method} response (produced by the harness)", errors, result)
        return result

    # ================================================================== "connectd"
    def _inbound_loop(self) -> None:
        while True:
            item = self._inbound.get()
            if item is None:
                return
            try:
                item()
            except HarnessError as e:
                self.record(e)
            except Exception as e:  # a harness bug: report it, keep serving
                self.record(
                    HarnessError(f"harness error in connectd worker: {e!r}", node=self.name)
                )

    def enqueue_inbound(self, fn: Callable[[], None]) -> None:
        self._inbound.put(fn)

    def wait_peer_ready(self, peer_id: str, timeout: float) -> bool:
        """Wait until the connection with `peer_id` is fully up (hooks and notifications done);
        False if it is or becomes disconnected."""
        cond = self.network.peer_cond
        with cond:
            ok = cond.wait_for(
                lambda: (p := self.peers.get(peer_id)) is not None and p.state != "connecting",
                timeout=timeout,
            )
            p = self.peers.get(peer_id)
            return bool(ok and p is not None and p.state == "connected")

    def deliver_custommsg(self, src: FakeNode, msg_hex: str) -> None:
        """Runs on this node's connectd worker: the message from `src` arrives."""
        if not self.wait_peer_ready(src.node_id, self.timeout):
            self.log(f"dropped custommsg from {src.name}: not connected", "debug")
            return
        intercept = self.network.intercept
        if intercept is not None:
            out = intercept(src, self, msg_hex)
            if out is None:
                self.log(f"custommsg from {src.name} dropped by network.intercept", "debug")
                self.network.note_message(src, self, msg_hex, None)
                return
            msg_hex = out
        self.network.note_message(src, self, msg_hex, msg_hex)
        msgtype = int(msg_hex[:4], 16)
        if msgtype % 2 == 0 and not (self.plugin_running and msgtype in self.custom_msgs):
            self.log(
                f"peer {src.name} sent unknown even message type {msgtype}: warning and "
                "disconnecting",
                "unusual",
            )
            self.network.disconnect(src, self)
            return
        payload = {"peer_id": src.node_id, "payload": msg_hex}
        self.notify("custommsg", payload)
        hook = self.hooks.get("custommsg")
        if hook is not None and hook.get("filters") and msgtype not in hook["filters"]:
            return
        self.call_hook_async("custommsg", payload)

    # ================================================================== misc state helpers
    def connected_peer(self, node_id: str) -> Peer | None:
        p = self.peers.get(node_id)
        return p if p is not None and p.connected else None

    def new_channel_keys(self, peer_id: str) -> tuple[bytes, str]:
        n = next(self._channel_counter)
        funding_key = pubkey_of(_privkey(self.seed, "funding", peer_id, n.to_bytes(4, "big")))
        h = sha256(self.seed + b"alias" + n.to_bytes(4, "big"))
        alias = f"{int.from_bytes(h[:3], 'big') % 16_000_000}x{int.from_bytes(h[3:6], 'big') % 16_000_000}x{h[6] % 8}"
        return funding_key, alias

    def accept_open(self, opener: FakeNode, payload: dict[str, Any]) -> dict[str, Any]:
        """Acceptor side of a channel open (see lightningd_rpcs.accept_open)."""
        return lightningd_rpcs.accept_open(self, opener, payload)

    def on_block(self, height: int, block_hash: str) -> None:
        """A block was mined: channel confirmations, then `block_added`."""
        lightningd_rpcs.on_block(self, height, block_hash)

    def close_log(self) -> None:
        with contextlib.suppress(Exception):
            self._log_file.close()
            self._stderr_file.close()


def _is_cli_literal(arg: str) -> bool:
    """lightning-cli's is_literal: what it passes to lightningd without quotes."""
    if not arg:
        return False
    if arg.isdigit() and len(arg) > 1 and arg[0] == "0":
        return False
    return (
        all(c in "0123456789." for c in arg)
        or arg in ("true", "false", "null")
        or (arg[0], arg[-1]) in (("{", "}"), ("[", "]"), ('"', '"'))
    )


# lightningd's hooks that take filters, and their kind (plugin_hook.c, v26.06.6).
_FILTERED_HOOKS = {"custommsg": int, "rpc_command": str}


def _filter_problems(hook: str, filters: Any) -> list[str]:
    """What lightningd's plugin_hook_register refuses about a hook's `filters`."""
    kind = _FILTERED_HOOKS.get(hook)
    if kind is None:
        return [f"Hook {hook} does not allow filters"]
    if not isinstance(filters, list):
        return ["filters token must be an array"]
    if kind is int and not all(type(f) is int and f >= 0 for f in filters):
        return [f"filters must be array of unsigned integers, not {filters!r}"]
    if kind is str and not all(isinstance(f, str) for f in filters):
        return [f"filters must be array of strings, not {filters!r}"]
    return []
