"""The plugin's options: what each means, which may change while running, and one validation for
start-up and `setconfig` alike.

Owns: the option table. Pure: no pyln (main.py registers the options and routes `setconfig`
here). A dynamic option takes effect through `lightning-cli setconfig <name> <value>`: the new
value is checked with the same rules as at start, a new `Config` is built from every option, and
only then swapped in whole (`Node.config`); a bad value changes nothing and names what is wrong.
A static option says why in `STATIC_WHY` (the README's table repeats it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...engine.errors import InvalidParameter, SuperscalarError
from ...engine.tree import FactoryParams
from .config import TRUST_CHANNEL_SCRIPT_HELP, Config


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    description: str
    kind: str  # "int", "string" or "bool", as pyln-client declares it
    dynamic: bool


# Why an option cannot change while lightningd runs (it says so in its description too).
STATIC_WHY: dict[str, str] = {
    "superscalar-accept-from": "repeatable; the LSPs we trust are read once at start",
    "superscalar-exit-margin": "running exits and HTLC limits were computed with it",
    "superscalar-dying-blocks": "it moves the end of factories already running",
    "superscalar-metrics-port": "the endpoint is bound once at start",
    "superscalar-metrics-address": "the endpoint is bound once at start",
    "superscalar-trust-channel-script": "whether we may join unchecked is decided at start",
}

_TABLE: list[tuple[str, Any, str, str]] = [
    (
        "superscalar-accept-from",
        None,
        "Node id of an LSP whose factories this node joins as a client (repeatable; 'any' for all)",
        "string",
    ),
    (
        "superscalar-max-ewt",
        2016,
        "Largest early warning time (blocks) we accept as a client",
        "int",
    ),
    (
        "superscalar-max-feerate",
        50,
        "Largest off-chain fee rate (sat/vB) we sign as a client",
        "int",
    ),
    (
        "superscalar-min-feerate",
        2,
        "Smallest off-chain fee rate (sat/vB) we sign as a client: a tree below it may not "
        "get into a mempool when fees rise",
        "int",
    ),
    (
        "superscalar-min-stock-delay",
        144,
        "Smallest stock delay (blocks) we accept as a client: after T, the LSP alone may take a"
        " leaf's stock that many blocks after it confirmed, and our sales chained on it must"
        " confirm before",
        "int",
    ),
    (
        "superscalar-max-exit-fee-sat",
        50000,
        "Most our wallet pays (sat) in CPFP children to get one factory's exit confirmed",
        "int",
    ),
    (
        "superscalar-feerate",
        2,
        "Fee rate (sat/vB) every off-chain tx of our new factories pays",
        "int",
    ),
    ("superscalar-clients-per-leaf", 2, "Clients per leaf in new factories", "int"),
    ("superscalar-arity", "2", "Interior arity per level from the leaves up, e.g. 2,4,8", "string"),
    ("superscalar-kickoff-only-top", 0, "Top levels without DW states in new factories", "int"),
    ("superscalar-states-per-layer", 4, "DW states per layer (K) in new factories", "int"),
    ("superscalar-step-blocks", 36, "DW step (S, blocks) in new factories", "int"),
    ("superscalar-stock-sat", 100000, "LSP liquidity stock per leaf (sat)", "int"),
    ("superscalar-lifetime-blocks", 4320, "Blocks from creation to the factory's timeout", "int"),
    ("superscalar-ceremony-timeout", 60, "Seconds a creation waits for a silent client", "int"),
    ("superscalar-exit-margin", 12, "Blocks added to the EWT before an exit starts", "int"),
    (
        "superscalar-ladder-every",
        0,
        "The ladder: blocks between successor factories for the clients of a dying factory"
        " (0: migrate only with factory-migrate)",
        "int",
    ),
    (
        "superscalar-dying-blocks",
        432,
        "Blocks before a factory's timeout in which its clients move to a successor",
        "int",
    ),
    (
        "superscalar-sale-fee-base",
        1000,
        "LSP: the fixed part (sat) of the price of inbound liquidity bought with factory-buy",
        "int",
    ),
    (
        "superscalar-sale-fee-ppm",
        10000,
        "LSP: the proportional part (ppm of the amount) of the price of inbound liquidity",
        "int",
    ),
    (
        "superscalar-max-buy-fee-ppm",
        20000,
        "Client: the most factory-buy pays without max_fee_sat (ppm of the amount, at least"
        " 2000 sat)",
        "int",
    ),
    (
        "superscalar-max-move-fee-sat",
        100,
        "Client: the most (sat) the LSP may keep as its fee when we move our balance out of a"
        " factory (migration or close); a dearer move is refused",
        "int",
    ),
    (
        "superscalar-move-min-depth",
        3,
        "Client: confirmations the target's funding (the successor factory's, or an ordinary"
        " channel's) needs before our balance moves into it",
        "int",
    ),
    ("superscalar-trust-channel-script", False, TRUST_CHANNEL_SCRIPT_HELP, "bool"),
    (
        "superscalar-metrics-port",
        0,
        "TCP port of the Prometheus metrics endpoint (0: off)",
        "int",
    ),
    (
        "superscalar-metrics-address",
        "127.0.0.1",
        "Address the Prometheus metrics endpoint binds to",
        "string",
    ),
]


def _describe(name: str, text: str) -> str:
    why = STATIC_WHY.get(name)
    if why is None:
        return f"{text} (dynamic: setconfig)"
    return f"{text} (static: {why})"


OPTIONS: list[Option] = [
    Option(name, default, _describe(name, text), kind, name not in STATIC_WHY)
    for name, default, text, kind in _TABLE
]
OPTION_NAMES = frozenset(o.name for o in OPTIONS)


def _parse_arity(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise InvalidParameter(f"arity must be integers like 2,4,8, got {text!r}") from None


def params_from(options: dict[str, Any], overrides: dict[str, Any]) -> FactoryParams:
    """The shape of a new factory: the options, each overridden by a `factory-create` field."""

    def pick(key: str, option: str) -> Any:
        value = overrides.get(key)
        return options[option] if value is None else value

    def integer(key: str, option: str) -> int:
        value = pick(key, option)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidParameter(f"{key}: expected an integer, got {value!r}") from None

    params = FactoryParams(
        clients_per_leaf=integer("clients_per_leaf", "superscalar-clients-per-leaf"),
        arity=_parse_arity(pick("arity", "superscalar-arity")),
        kickoff_only_top=integer("kickoff_only_top", "superscalar-kickoff-only-top"),
        states_per_layer=integer("states_per_layer", "superscalar-states-per-layer"),
        step_blocks=integer("step_blocks", "superscalar-step-blocks"),
        fee_rate_kvb=integer("feerate", "superscalar-feerate") * 1000,
        stock_sat=integer("stock_sat", "superscalar-stock-sat"),
    )
    params.validate()
    return params


def _int(options: dict[str, Any], name: str, low: int) -> int:
    value = options[name]
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InvalidParameter(f"{name}: expected an integer, got {value!r}") from None
    if out < low:
        raise InvalidParameter(f"{name}: must be at least {low}, got {out}")
    return out


def _bool(options: dict[str, Any], name: str) -> bool:
    value = options.get(name, False)
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "false"):
        return str(value).strip().lower() == "true"
    raise InvalidParameter(f"{name}: expected true or false, got {value!r}")


def config_from(options: dict[str, Any]) -> Config:
    """Every option checked and turned into a `Config`; InvalidParameter names the bad one."""
    accept = options.get("superscalar-accept-from") or []
    if isinstance(accept, str):
        accept = [accept]
    try:
        params = params_from(options, {})
    except SuperscalarError as e:
        raise InvalidParameter(f"factory shape options: {e}") from e
    min_rate = _int(options, "superscalar-min-feerate", 1) * 1000
    max_rate = _int(options, "superscalar-max-feerate", 1) * 1000
    if min_rate > max_rate:
        raise InvalidParameter(
            "superscalar-min-feerate: above superscalar-max-feerate"
            f" ({min_rate // 1000} > {max_rate // 1000})"
        )
    min_stock_delay = _int(options, "superscalar-min-stock-delay", 1)
    if min_stock_delay >= 0xFFFF:
        raise InvalidParameter("superscalar-min-stock-delay: must be 1..65534")
    return Config(
        accept_from=frozenset(accept),
        max_ewt=_int(options, "superscalar-max-ewt", 1),
        max_fee_rate_kvb=max_rate,
        min_fee_rate_kvb=min_rate,
        min_stock_delay=min_stock_delay,
        max_exit_fee_sat=_int(options, "superscalar-max-exit-fee-sat", 0),
        fee_rate_kvb=params.fee_rate_kvb,
        params=params,
        lifetime_blocks=_int(options, "superscalar-lifetime-blocks", 1),
        ceremony_timeout=float(_int(options, "superscalar-ceremony-timeout", 1)),
        exit_margin=_int(options, "superscalar-exit-margin", 0),
        ladder_every=_int(options, "superscalar-ladder-every", 0),
        dying_blocks=_int(options, "superscalar-dying-blocks", 1),
        sale_fee_base_sat=_int(options, "superscalar-sale-fee-base", 0),
        sale_fee_ppm=_int(options, "superscalar-sale-fee-ppm", 0),
        max_buy_fee_ppm=_int(options, "superscalar-max-buy-fee-ppm", 0),
        max_move_fee_sat=_int(options, "superscalar-max-move-fee-sat", 0),
        move_min_depth=_int(options, "superscalar-move-min-depth", 1),
        trust_channel_script=_bool(options, "superscalar-trust-channel-script"),
    )


def changed(options: dict[str, Any], name: str, value: Any) -> Config:
    """`setconfig name value`: the Config with that one option changed, checked as at start.
    Raises InvalidParameter (nothing changes) for an unknown or static option or a bad value."""
    if name not in OPTION_NAMES:
        raise InvalidParameter(f"{name}: not an option of superscalar")
    if name in STATIC_WHY:
        raise InvalidParameter(f"{name} cannot change while running: {STATIC_WHY[name]}")
    return config_from({**options, name: value})


def metrics_endpoint(options: dict[str, Any]) -> tuple[str, int] | None:
    """Where the Prometheus endpoint listens, or None when it is off (port 0)."""
    port = _int(options, "superscalar-metrics-port", 0)
    if port > 65535:
        raise InvalidParameter(f"superscalar-metrics-port: {port} is not a TCP port")
    address = str(options.get("superscalar-metrics-address") or "127.0.0.1")
    return None if port == 0 else (address, port)
