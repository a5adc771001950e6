"""`superscalar` command line: plan a factory's shape, or run a full lifecycle on a local chain."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from .engine import dw
from .engine.errors import InvalidParameter, InvalidShape, SuperscalarError
from .engine.tree import FactoryParams, Topology, fee_for
from .engine.update import update_costs

P2WPKH_INPUT_VB = 68  # a funding input from a segwit v0 wallet, as an LSP's wallet typically has
FUNDING_OVERHEAD_VB = 11 + 31  # tx overhead + one P2WPKH change output
P2TR_OUTPUT_VB = 43


def parse_arity(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InvalidShape(
            f"--arity must be comma-separated integers like 2,4,8, got {text!r}"
        ) from None
    return values


def shape_options(f: Any) -> Any:
    """Options shared by `plan` and `demo` that choose the factory's shape and economics."""
    opts = [
        click.option("--clients", "-n", type=int, required=True, help="Number of clients."),
        click.option("--clients-per-leaf", type=int, default=2, show_default=True),
        click.option(
            "--arity",
            default="2",
            show_default=True,
            help="Interior arity per level from the leaves up, e.g. 2,4,8 (last repeats).",
        ),
        click.option(
            "--kickoff-only-top",
            type=int,
            default=0,
            show_default=True,
            help="Top interior levels without DW states (plain timeout-sig-tree).",
        ),
        click.option(
            "--states-per-layer",
            type=int,
            default=None,
            help="DW states per layer K (plan: 4, demo: 3).",
        ),
        click.option(
            "--step-blocks", type=int, default=None, help="DW step S in blocks (plan: 36, demo: 3)."
        ),
        click.option(
            "--fee-rate",
            type=float,
            default=2.0,
            show_default=True,
            help="sat/vB paid by every off-chain tx (endogenous, from the LSP's share).",
        ),
        click.option(
            "--channel-sat",
            type=int,
            default=200_000,
            show_default=True,
            help="Channel amount per client.",
        ),
        click.option(
            "--stock-sat",
            type=int,
            default=100_000,
            show_default=True,
            help="LSP liquidity stock per leaf.",
        ),
        click.option(
            "--ewt-margin",
            type=int,
            default=None,
            help="Blocks added to the DW delays for the early warning time.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@dataclass(frozen=True)
class Shape:
    clients: int
    params: FactoryParams
    channel_sat: int


def make_shape(kw: dict[str, Any], k: int, s: int, margin: int) -> Shape:
    if kw["clients"] < 1:
        raise InvalidShape(f"--clients must be at least 1, got {kw['clients']}")
    fee = kw["fee_rate"]
    if not 1 <= fee <= 10_000:
        raise InvalidParameter(f"--fee-rate must be 1..10000 sat/vB, got {fee:g}")
    params = FactoryParams(
        clients_per_leaf=kw["clients_per_leaf"],
        arity=parse_arity(kw["arity"]),
        kickoff_only_top=kw["kickoff_only_top"],
        states_per_layer=kw["states_per_layer"] if kw["states_per_layer"] is not None else k,
        step_blocks=kw["step_blocks"] if kw["step_blocks"] is not None else s,
        fee_rate_kvb=round(fee * 1000),
        stock_sat=kw["stock_sat"],
        ewt_margin=kw["ewt_margin"] if kw["ewt_margin"] is not None else margin,
    )
    params.validate()
    return Shape(kw["clients"], params, kw["channel_sat"])


# --- plan -------------------------------------------------------------------------------------


def describe_levels(topo: Topology) -> list[dict[str, Any]]:
    """Per depth from the root: how many nodes, of which kind, with which arity."""
    by_depth: dict[int, list[int]] = {}
    for n in topo.nodes:
        by_depth.setdefault(len(topo.path(n.index)) - 1, []).append(n.index)
    levels = []
    for depth in sorted(by_depth):
        nodes = [topo.nodes[i] for i in by_depth[depth]]
        kinds = sorted({n.kind.value for n in nodes})
        arities = sorted(
            {len(n.children) for n in nodes if n.children} or {n.hi - n.lo for n in nodes}
        )
        levels.append(
            {"depth": depth, "nodes": len(nodes), "kind": "/".join(kinds), "arity": arities}
        )
    return levels


def plan_factory(shape: Shape, fee_rate_kvb: int) -> dict[str, Any]:
    from .simulate import make_factory

    f = make_factory(
        shape.clients, shape.params, timeout_height=1_000_000, channel_sat=shape.channel_sat
    ).factory
    topo = f.topology
    worst: dict[str, Any] | None = None
    for client in range(shape.clients):
        path = topo.client_path(client)
        vbytes = sum(f.vsize(n) for n in path)
        if worst is None or vbytes > worst["vbytes"]:
            # Worst case: every tx in its own block, each state waiting its first (longest) delay.
            delays = dw.path_delays(topo, dw.initial_states(topo), path[-1])
            blocks = sum(max(1, d) for d in delays)
            worst = {
                "client": client,
                "transactions": len(path),
                "vbytes": vbytes,
                "fee_sat_endogenous": sum(f.fee(n) for n in path),
                "fee_sat_at_rate": sum(fee_for(f.vsize(n), fee_rate_kvb) for n in path),
                "blocks_until_channel_output": blocks,
            }
    assert worst is not None
    funding_vb = P2WPKH_INPUT_VB + FUNDING_OVERHEAD_VB + P2TR_OUTPUT_VB
    tree_fees = sum(f.fee(n.index) for n in topo.nodes)
    anchors = f.params.anchor_sat * len(topo.nodes)
    return {
        "clients": shape.clients,
        "params": {
            "clients_per_leaf": f.params.clients_per_leaf,
            "arity": list(f.params.arity),
            "kickoff_only_top": f.params.kickoff_only_top,
            "states_per_layer": f.params.states_per_layer,
            "step_blocks": f.params.step_blocks,
            "fee_rate_sat_per_vb": f.params.fee_rate_kvb / 1000,
        },
        "levels": describe_levels(topo),
        "transactions": len(topo.nodes),
        "leaves": len(topo.leaves),
        "state_layers": topo.max_state_layers,
        "total_states": topo.total_states,
        "ewt_blocks": topo.ewt,
        "funding_sat": f.funding_amount,
        "offchain_fees_sat": tree_fees,
        "anchors_sat": anchors,
        "worst_exit": worst,
        "updates": {
            "leaf_updates_before_exhausted": dw.updates_left(
                topo, dw.initial_states(topo), topo.leaves[0]
            ),
            "per_level": [dataclasses.asdict(c) for c in update_costs(topo)],
        },
        "funding_vbytes": funding_vb,
        "funding_vbytes_per_client": round(funding_vb / shape.clients, 2),
        "funding_fee_per_client_sat": round(fee_for(funding_vb, fee_rate_kvb) / shape.clients, 2),
    }


def print_plan(plan: dict[str, Any]) -> None:
    p = plan["params"]
    click.echo(f"SuperScalar factory for {plan['clients']} clients")
    click.echo(
        f"  shape: {p['clients_per_leaf']} clients per leaf, interior arity {p['arity']},"
        f" {p['kickoff_only_top']} kickoff-only top levels; DW K={p['states_per_layer']},"
        f" S={p['step_blocks']} blocks"
    )
    for lv in plan["levels"]:
        click.echo(
            f"  depth {lv['depth']:>2}: {lv['nodes']:>5} x {lv['kind']:<14} arity {lv['arity']}"
        )
    click.echo(f"  off-chain transactions: {plan['transactions']} ({plan['leaves']} leaves)")
    click.echo(
        f"  DW state layers on the longest path: {plan['state_layers']}"
        f" ({plan['total_states']} updates of the deepest leaf)"
    )
    click.echo(f"  early warning time (EWT): {plan['ewt_blocks']} blocks")
    click.echo(
        f"  funding output: {plan['funding_sat']} sat (off-chain fees {plan['offchain_fees_sat']},"
        f" anchors {plan['anchors_sat']})"
    )
    w = plan["worst_exit"]
    click.echo(
        f"  worst-case unilateral exit: {w['transactions']} txs, {w['vbytes']} vB,"
        f" {w['fee_sat_at_rate']} sat at {p['fee_rate_sat_per_vb']:g} sat/vB,"
        f" channel output after {w['blocks_until_channel_output']} blocks"
    )
    click.echo(
        f"  on-chain funding per client: {plan['funding_vbytes_per_client']} vB"
        f" ({plan['funding_fee_per_client_sat']} sat)"
    )
    u = plan["updates"]
    click.echo(
        f"  DW updates of a leaf before the root state is exhausted:"
        f" {u['leaf_updates_before_exhausted']}"
    )
    for c in u["per_level"]:
        click.echo(
            f"    update of node {c['node']:>4} ({c['leaves']} leaves): wakes {c['clients']}"
            f" clients, re-signs {c['transactions']} txs ({c['partial_signatures']} partial"
            f" signatures), {c['messages']} messages, {c['channel_moves']} channel moves;"
            f" {c['updates_before_reset']} before the level above moves"
        )


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log the engine's debug messages.")
def cli(verbose: bool) -> None:
    """SuperScalar channel factories: plan shapes and run a local lifecycle."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@shape_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plan(as_json: bool, **kw: Any) -> None:
    """Shape, early warning time and worst-case exit cost of a factory."""
    shape = make_shape(kw, k=4, s=36, margin=36)
    result = plan_factory(shape, shape.params.fee_rate_kvb)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_plan(result)


@cli.command()
@shape_options
@click.option(
    "--advances",
    type=int,
    default=3,
    show_default=True,
    help="DW state updates of the exiting client's leaf.",
)
def demo(advances: int, **kw: Any) -> None:
    """A whole factory lifecycle on an embedded regtest chain (Bitcoin Core's consensus)."""
    from .demo import run_demo

    shape = make_shape(kw, k=3, s=3, margin=6)
    if advances < 0:
        raise InvalidParameter("--advances cannot be negative")
    run_demo(shape.clients, shape.params, shape.channel_sat, advances)


def main() -> None:
    """Entry point: errors are one line on stderr and a non-zero exit code, never a traceback.

    Started by lightningd it runs the plugin instead. lightningd marks every plugin it starts with
    LIGHTNINGD_PLUGIN=1 in the environment and passes arguments of its own (`--developer` in
    developer mode, maybe more in later versions), so the environment decides, never argv."""
    if os.environ.get("LIGHTNINGD_PLUGIN") == "1":
        from .plugin.main import run

        run()
        return
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except SuperscalarError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
