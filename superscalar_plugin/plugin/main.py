"""`lightningd --plugin=superscalar`: thin glue between pyln-client and the factory service.

Handlers parse and validate parameters, hand the work to `FactoryService` and format results; they
never wait for a peer (pyln has one dispatch loop). The plugin is not dynamic: lightningd only
accepts feature bit 271 and custom message 32800 from plugins started with it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import sys
from typing import Any, ClassVar

from pyln.client import Plugin, RpcException

from ..engine.blip56 import FACTORY_MESSAGE_TYPE, FEATURE_BIT
from ..engine.errors import InvalidParameter, SuperscalarError
from ..engine.taproot import DUST_P2WSH
from .lightningd.ratelimit import LogLimiter
from .lightningd.settings import OPTIONS, changed, config_from, metrics_endpoint, params_from
from .operator import events
from .service import MIN_CHANNEL_SAT, FactoryService


class _SturdyPlugin(Plugin):  # type: ignore[misc]
    """pyln-client's Plugin, except that one message it cannot parse never ends the process.

    lightningd forwards some payloads with raw tokens from the command line (`lightning-cli
    connect <id> 127.0.0.1 <port>` puts `127.0.0.1` unquoted into an `rpc_command` payload), and
    pyln-client's `json.loads` would raise inside its dispatch loop. A request we cannot read is
    answered `continue` (for a hook, that is a no-op) so lightningd never waits on us."""

    def _multi_dispatch(self, msgs: list[bytes]) -> bytes:
        for payload in msgs[:-1]:
            # One message at a time, each parsed once (hooks run for every HTLC). Only the
            # parse can raise here: pyln's dispatch catches what a handler raises.
            try:
                super()._multi_dispatch([payload, b""])
            except (UnicodeDecodeError, ValueError):
                _answer_unreadable(self, payload)
        return msgs[-1]


_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')
_METHOD = re.compile(rb'"method"\s*:\s*"([a-z_]+)"')


def _answer_unreadable(p: Plugin, payload: bytes) -> None:
    """Answer a request whose JSON does not parse. lightningd writes the outer `id` and `method`
    before `params`, so the first of each is the request's own. A hook gets `continue` (a no-op);
    a command of ours gets an error naming the problem."""
    head = payload.split(b'"params"', 1)[0]
    ident, method = _ID.search(head), _METHOD.search(head)
    name = method.group(1).decode() if method else "message"
    _unreadable_log.warning(name, "unreadable %s request from lightningd (ignored)", name)
    if ident is None:
        return
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": json.loads(ident.group(1))}
    hook = p.methods.get(name)
    if hook is not None and hook.mtype.name == "HOOK":
        reply["result"] = {"result": "continue"}
    else:
        reply["error"] = {"code": -32602, "message": f"{name}: parameters are not valid JSON"}
    p._write_locked(reply)


_unreadable_log = LogLimiter(logging.getLogger("superscalar"))


plugin = _SturdyPlugin(
    dynamic=False,
    init_features=1 << FEATURE_BIT,
    node_features=1 << FEATURE_BIT,
    custom_msgs=[FACTORY_MESSAGE_TYPE],
)
service: FactoryService | None = None


def _on_setconfig(p: Plugin, name: str, value: Any) -> None:
    """`lightning-cli setconfig <name> <value>` for a dynamic option: checked as at start, then
    the new configuration replaces the old whole. lightningd sends the value as a string; a bad
    one raises, and pyln answers lightningd with the error (nothing changes, nothing saved)."""
    try:
        config = changed(_options(), name, value)
    except SuperscalarError as e:
        raise RpcException(f"{name}: {e}", e.rpc_code) from e
    if service is not None:
        service.reconfigure(config)
    p.log(f"{name} set to {value} (setconfig)", level="info")


for opt in OPTIONS:
    plugin.add_option(
        opt.name,
        opt.default,
        opt.description,
        opt_type=opt.kind,
        multi=opt.name == "superscalar-accept-from",
        dynamic=opt.dynamic,
        on_change=_on_setconfig if opt.dynamic else None,
    )
for topic in events.TOPICS:
    plugin.add_notification_topic(topic)


class _PluginLogHandler(logging.Handler):
    """Python logging -> lightningd's log (through pyln's log notification)."""

    LEVELS: ClassVar[dict[int, str]] = {
        logging.DEBUG: "debug",
        logging.INFO: "info",
        logging.WARNING: "warn",
    }

    def emit(self, record: logging.LogRecord) -> None:
        level = self.LEVELS.get(record.levelno, "broken" if record.levelno >= 50 else "unusual")
        with contextlib.suppress(Exception):
            plugin.log(self.format(record), level=level)


def _route_logging() -> None:
    """Each line once, at its level: our loggers write to lightningd themselves and do not also
    propagate to the root handler pyln-client installs (which would repeat every line)."""
    for name in ("superscalar", "superscalar_plugin"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.handlers[:] = [_PluginLogHandler()]
        logger.propagate = False


def _options() -> dict[str, Any]:
    return {o.name: plugin.get_option(o.name) for o in OPTIONS}


def _fail(e: SuperscalarError) -> RpcException:
    return RpcException(str(e), e.rpc_code)


def _service() -> FactoryService:
    if service is None:
        raise RpcException("superscalar is still starting", -32600)
    return service


@plugin.init()
def init(options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **_: Any) -> None:
    global service
    _route_logging()
    try:
        config = config_from(options)
        endpoint = metrics_endpoint(options)
    except SuperscalarError as e:
        raise RpcException(f"bad superscalar option: {e}") from e
    events.set_sink(_notify)
    service = FactoryService(plugin.rpc, config)
    service.start()  # start-up RPCs run on the service's worker, never here
    if endpoint is not None:
        service.metrics.serve(*endpoint)


def _notify(topic: str, fields: dict[str, Any]) -> None:
    """An event as a custom notification: `{"<topic>": fields}` (lightningd wraps it for the
    subscribers in `{"origin": ..., "payload": ...}`)."""
    plugin.notify(topic, {topic: fields})


@plugin.async_method("factory-create")
def factory_create(
    request: Any,
    clients: Any,
    channel_sat: Any,
    clients_per_leaf: Any = None,
    arity: Any = None,
    kickoff_only_top: Any = None,
    states_per_layer: Any = None,
    step_blocks: Any = None,
    feerate: Any = None,
    stock_sat: Any = None,
    **_: Any,
) -> None:
    """Create a SuperScalar factory with connected {clients} (node ids), each getting a channel
    of {channel_sat} (one amount, or a list with one per client). Optional shape:
    {clients_per_leaf}, {arity} (e.g. "2,4,8"), {kickoff_only_top}, {states_per_layer},
    {step_blocks}, {feerate} (sat/vB), {stock_sat}. Returns when the funding is broadcast."""
    svc = _service()
    try:
        ids = _parse_clients(clients)
        amounts = _parse_amounts(channel_sat, len(ids))
        params = params_from(
            _options(),
            {
                "clients_per_leaf": clients_per_leaf,
                "arity": arity,
                "kickoff_only_top": kickoff_only_top,
                "states_per_layer": states_per_layer,
                "step_blocks": step_blocks,
                "feerate": feerate,
                "stock_sat": stock_sat,
            },
        )
        if params.fee_rate_kvb > svc.config.max_fee_rate_kvb:
            raise InvalidParameter("feerate: above superscalar-max-feerate")
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.create(request, ids, amounts, params)


def _parse_clients(clients: Any) -> list[str]:
    if isinstance(clients, str):
        clients = [
            c for c in clients.replace("[", "").replace("]", "").replace('"', "").split(",") if c
        ]
    if not isinstance(clients, list) or not clients:
        raise InvalidParameter("clients: a non-empty list of node ids is required")
    out = []
    for c in clients:
        c = str(c).strip().lower()
        try:
            ok = len(bytes.fromhex(c)) == 33 and c[:2] in ("02", "03")
        except ValueError:
            ok = False
        if not ok:
            raise InvalidParameter(f"clients: {c!r} is not a node id")
        if c in out:
            raise InvalidParameter(f"clients: {c} is listed twice")
        out.append(c)
    return out


def _parse_amounts(channel_sat: Any, n: int) -> list[int]:
    values = channel_sat if isinstance(channel_sat, list) else [channel_sat] * n
    if len(values) != n:
        raise InvalidParameter(f"channel_sat: {len(values)} amounts for {n} clients")
    out = []
    for v in values:
        try:
            sat = int(str(v).removesuffix("sat"))
        except ValueError:
            raise InvalidParameter(f"channel_sat: {v!r} is not an amount in sat") from None
        if sat < max(DUST_P2WSH, MIN_CHANNEL_SAT):
            raise InvalidParameter(f"channel_sat: {sat} is below the minimum of {MIN_CHANNEL_SAT}")
        out.append(sat)
    return out


@plugin.async_method("factory-status")
def factory_status(request: Any, instance: str | None = None, **_: Any) -> None:
    """Status of the factory {instance} (all factories when omitted): lifecycle state,
    parameters, early warning time, timeout, funding, and per client its channel and DW state;
    on a client node, the factories it belongs to and its signed exit path."""
    svc = _service()
    svc.run_on_chain(request, lambda: svc.status(None if instance is None else str(instance)))


@plugin.async_method("factory-exit")
def factory_exit(request: Any, instance: str, client: str | None = None, **_: Any) -> None:
    """Start the unilateral exit of factory {instance}: publish the tree's path (for {client} only,
    on the LSP, when given), each transaction as soon as it is valid, fee-bumping stuck ones, then
    close the channels so lightningd's onchain handling takes over. Returns the factory's status;
    factory-status shows the exit's progress."""
    _service().exit(request, str(instance), None if client is None else str(client).lower())


@plugin.async_method("factory-migrate")
def factory_migrate(
    request: Any, instance: str, clients: Any = None, channel_sat: Any = None, **_: Any
) -> None:
    """Move factory {instance}'s clients into a new factory now: it is created with every
    connected client still inside (plus new {clients}, with {channel_sat} each), each channel as
    large as its old one; once it is funded every client moves its balance across, hands over its
    key, and with every key the old funding output goes to our wallet in one transaction.
    Clients offline now are asked again on later blocks. Returns the new factory's status."""
    svc = _service()
    try:
        extra = [] if clients is None else _parse_clients(clients)
        sat = _parse_amounts(channel_sat or MIN_CHANNEL_SAT, 1)[0]
        instance = _parse_instance(instance)
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.migrate(request, instance, extra, sat)


@plugin.async_method("factory-close")
def factory_close(request: Any, instance: str, **_: Any) -> None:
    """End factory {instance} cooperatively without a successor: each client still inside gets an
    ordinary channel from our wallet, moves its balance there once it confirms, and hands over its
    key; with every key the funding output goes to our wallet. Clients that never answer exit on
    their own before the timeout. Returns the factory's status."""
    svc = _service()
    try:
        instance = _parse_instance(instance)
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.close(request, instance)


def _parse_instance(instance: Any) -> str:
    text = str(instance).strip().lower()
    try:
        ok = len(bytes.fromhex(text)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise InvalidParameter(
            f"instance: {instance!r} is not a factory instance id (32 bytes hex)"
        )
    return text


@plugin.async_method("factory-sell")
def factory_sell(request: Any, instance: str, client: str, sat: Any, **_: Any) -> None:
    """LSP: give {client} of factory {instance} {sat} of inbound liquidity: a new zero-conf
    channel from its leaf's stock, signed by the leaf's clients (with its burn), or, if one of
    them is offline or the stock cannot pay it, an ordinary on-chain channel from our wallet.
    Returns what was delivered ("kind": "factory" or "onchain")."""
    svc = _service()
    try:
        instance = _parse_instance(instance)
        [client_id] = _parse_clients([client])
        sold = _parse_amounts(sat, 1)[0]
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.sell(request, instance, client_id, sold)


@plugin.async_method("factory-update")
def factory_update(
    request: Any, instance: str, client: Any = None, stock_sat: Any = None, **_: Any
) -> None:
    """LSP: a Decker-Wattenhofer state update of factory {instance}: the lowest state node above
    {client}'s leaf that covers other leaves (every leaf without a client) moves to its next
    state; its leaves' stock is shared out again ({stock_sat} for {client}'s leaf, the rest
    evenly), each leaf's sales are folded into their buyers' channels, and every client below
    the node gets a new channel of its new state with its balance. Only those clients sign.
    Returns the factory's odometer, stocks and channels."""
    svc = _service()
    try:
        instance = _parse_instance(instance)
        client_id = None if client is None else _parse_clients([client])[0]
        stock = None if stock_sat is None else _parse_amounts(stock_sat, 1)[0]
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.update(request, instance, client_id, stock)


@plugin.async_method("factory-buy")
def factory_buy(request: Any, instance: str, sat: Any, max_fee_sat: Any = None, **_: Any) -> None:
    """Client: buy {sat} of inbound liquidity in factory {instance} from its LSP, paying its
    quoted price if it is at most {max_fee_sat} (default: superscalar-max-buy-fee-ppm of the
    amount, at least 2000 sat). The LSP holds the payment until the channel is delivered: a new
    channel inside the factory, or an ordinary on-chain one. Returns the delivered channel."""
    svc = _service()
    try:
        instance = _parse_instance(instance)
        sold = _parse_amounts(sat, 1)[0]
        cap = None if max_fee_sat is None else int(str(max_fee_sat).removesuffix("sat"))
        if cap is not None and cap < 0:
            raise InvalidParameter("max_fee_sat: cannot be negative")
    except ValueError:
        request.set_exception(_fail(InvalidParameter("max_fee_sat: not an amount in sat")))
        return
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.buy(request, instance, sold, cap)


@plugin.async_method("factory-list")
def factory_list(request: Any, **_: Any) -> None:
    """One line per factory this node takes part in (as LSP or client)."""
    svc = _service()
    keys = ("instance", "role", "state", "phase", "timeout_height", "early_warning_time")

    def summary() -> dict[str, Any]:
        return {"factories": [{k: f.get(k) for k in keys} for f in svc.status(None)["factories"]]}

    svc.run_on_chain(request, summary)


@plugin.async_method("factory-metrics")
def factory_metrics(request: Any, **_: Any) -> None:
    """The operator's figures (the same as the Prometheus endpoint of
    superscalar-metrics-port): factories by role and phase, clients and sats inside, stock,
    sales and their fees, on-chain fallbacks, exits in flight and their fees, sweeps, refusals
    by reason, peers rate-limited, creation and migration timings. No parameters."""
    svc = _service()
    svc.run_on_chain(request, svc.metrics.as_json)


@plugin.async_method("factory-report")
def factory_report(request: Any, instance: str | None = None, **_: Any) -> None:
    """What to act on for factory {instance} (every live factory when omitted): blocks to its
    dying period and timeout, clients still inside, stock per leaf; per client what its
    unilateral exit costs at the current fee estimate against its balance (flagged
    uneconomic); the on-chain reserve the wallet needs to exit, bump and sweep everything."""
    svc = _service()
    try:
        inst = None if instance is None else _parse_instance(instance)
    except SuperscalarError as e:
        request.set_exception(_fail(e))
        return
    svc.run_on_chain(request, lambda: svc.report(inst))


@plugin.hook("custommsg", filters=[FACTORY_MESSAGE_TYPE])
def on_custommsg(peer_id: str, payload: str, plugin: Plugin, **_: Any) -> dict[str, str]:
    if service is not None:
        service.on_custommsg(peer_id, payload)
    return {"result": "continue"}


@plugin.hook("openchannel")
def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **_: Any) -> dict[str, Any]:
    if service is None:
        return {"result": "continue"}
    try:
        funding = _msat(openchannel["funding_msat"])
        push = _msat(openchannel.get("push_msat", 0))
        return service.on_openchannel(openchannel["id"], funding, push)
    except (KeyError, ValueError) as e:
        plugin.log(f"malformed openchannel hook payload: {e}", level="unusual")
        return {"result": "continue"}


def _msat(value: Any) -> int:
    return int(str(value).removesuffix("msat"))


@plugin.async_hook("htlc_accepted")
def on_htlc_accepted(
    onion: dict[str, Any], htlc: dict[str, Any], plugin: Plugin, request: Any, **_: Any
) -> None:
    """Async: an HTLC paying a sale's quote is held until the sale is over (answered from the
    worker); every other HTLC is answered here at once."""
    if service is None:
        request.set_result({"result": "continue"})
        return
    try:
        service.on_htlc(htlc, onion, request)
    except Exception as e:  # every path answers last: an HTLC is never left unanswered
        plugin.log(f"malformed htlc_accepted payload: {e!r}", level="unusual")
        request.set_result({"result": "continue"})


# Only `invoice` reaches us: every other command of the node (and its raw tokens) stays away.
@plugin.hook("rpc_command", filters=["invoice"])
def on_rpc_command(rpc_command: dict[str, Any], plugin: Plugin, **_: Any) -> dict[str, Any]:
    if service is None or rpc_command.get("method") != "invoice":
        return {"result": "continue"}
    try:
        params = service.invoice_params(rpc_command.get("params", {}))
    except (TypeError, ValueError) as e:
        plugin.log(f"leaving an invoice call alone: {e}", level="debug")
        return {"result": "continue"}
    if params is None:
        return {"result": "continue"}
    return {"replace": {**rpc_command, "jsonrpc": "2.0", "params": params}}


@plugin.subscribe("connect")
def on_connect(plugin: Plugin, **kwargs: Any) -> None:
    info = kwargs.get("connect", kwargs)
    if service is not None and "id" in info:
        service.on_connect(info["id"])


@plugin.subscribe("disconnect")
def on_disconnect(plugin: Plugin, **kwargs: Any) -> None:
    info = kwargs.get("disconnect", kwargs)
    if service is not None and "id" in info:
        service.on_disconnect(info["id"])


@plugin.subscribe("block_added")
def on_block_added(plugin: Plugin, **kwargs: Any) -> None:
    block = kwargs.get("block_added", kwargs.get("block", {}))
    if service is not None and "height" in block:
        service.on_block(int(block["height"]))


@plugin.subscribe("channel_state_changed")
def on_channel_state_changed(plugin: Plugin, **_: Any) -> None:
    """A channel opened, locked in or closed: the HTLC guards follow (on the worker)."""
    if service is not None:
        service.on_channel_change()


@plugin.subscribe("shutdown")
def on_shutdown(plugin: Plugin, **_: Any) -> None:
    """lightningd is stopping and its RPC goes away: finish the job in hand (it persists before it
    sends), start no other, and exit, so no job calls a closed RPC and logs a failure."""
    if service is not None:
        service.shutdown(timeout=10.0)
    sys.exit(0)


def _describe_methods() -> None:
    """Each factory-* command's docstring as its manifest description (Core Lightning >= 24.08
    shows `usage`, which names every parameter, and keeps the rest in doc/schemas)."""
    for method in plugin.methods.values():
        if method.name.startswith("factory-") and not method.description:
            method.description = inspect.cleandoc(method.func.__doc__ or "")


def run() -> None:
    _describe_methods()
    plugin.run()
