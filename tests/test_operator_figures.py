"""The operator's figures and exit costs computed from records (no lightningd, no pyln), the
settings' checks, the events' delivery, and the rule that an uneconomic client defers an HTLC
exit while a migration can still take it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from superscalar_plugin.engine import store
from superscalar_plugin.engine.errors import InvalidParameter
from superscalar_plugin.engine.sale_store import JitChannel, Order, OrderState
from superscalar_plugin.engine.tree import FactoryParams, Topology
from superscalar_plugin.engine.tx import Tx, TxIn, TxOut
from superscalar_plugin.plugin.lightningd import ratelimit, settings
from superscalar_plugin.plugin.onchain.duties import OnChain
from superscalar_plugin.plugin.operator import events
from superscalar_plugin.plugin.operator.exitcost import ExitCost, can_migrate, defer_exit, exit_cost
from superscalar_plugin.plugin.operator.figures import Figure, figures, reason_label

PARAMS = FactoryParams(states_per_layer=2, step_blocks=3)
EWT = Topology.build(2, PARAMS).ewt
KEY = "02" + "11" * 32


def _raw(n_outputs: int = 2) -> str:
    tx = Tx(
        version=2,
        inputs=(TxIn("11" * 32, 0, 0xFFFFFFFD),),
        outputs=tuple(TxOut(10_000, b"\x51\x20" + b"\x22" * 32) for _ in range(n_outputs)),
        locktime=0,
        witnesses=((b"\x33" * 64,),),
    )
    return tx.serialize().hex()


def _lsp(**changes: Any) -> store.LspRecord:
    topo = Topology.build(2, PARAMS)
    tree = tuple(store.PathEntry(n.index, 0, _raw(), 20_000, "51") for n in topo.nodes)
    record = store.LspRecord(
        instance_id="aa" * 32,
        state=store.LspState.FUNDED,
        params=PARAMS,
        timeout_height=1000,
        lsp_pubkey=KEY,
        clients=tuple(
            store.ClientEntry("03" + f"{i:02x}" * 32, 50_000, KEY, None, f"c{i}") for i in range(2)
        ),
        created_height=100,
        tree=tree,
    )
    return dataclasses.replace(record, **changes)


def _client(**changes: Any) -> store.ClientRecord:
    topo = Topology.build(2, PARAMS)
    path = tuple(store.PathEntry(n, 0, _raw(), 20_000, "51") for n in topo.client_path(0))
    record = store.ClientRecord(
        instance_id="bb" * 32,
        lsp_node_id=KEY,
        state=store.ClientState.FUNDED,
        client_index=0,
        n_clients=2,
        params=PARAMS,
        timeout_height=1000,
        lsp_pubkey=KEY,
        pubkey=KEY,
        channel_sat=50_000,
        early_warning_time=EWT,
        path=path,
    )
    return dataclasses.replace(record, **changes)


def _by_name(figs: list[Figure]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {f.name: {s.labels: s.value for s in f.samples} for f in figs}


def test_figures_count_factories_clients_sats_and_stock() -> None:
    lsp = _lsp(clients=(_lsp().clients[0], dataclasses.replace(_lsp().clients[1], handed_key="k")))
    figs = _by_name(figures([lsp, _client()], height=500, dying_blocks=432))
    assert figs["superscalar_factories"] == {
        (("role", "lsp"), ("phase", "active")): 1,
        (("role", "client"), ("phase", "active")): 1,
    }
    inst = (("instance", "aa" * 32),)
    assert figs["superscalar_factory_clients_inside"] == {inst: 1}  # one handed over
    assert figs["superscalar_factory_channel_sat"] == {inst: 50_000}
    assert figs["superscalar_factory_stock_sat"] == {inst: PARAMS.stock_sat}
    # In the dying period the phase moves; an exit in flight is counted with its fees.
    exiting = store.ExitState("test", 600, (0,), bump_fees=(("t1", 700), ("t2", 300)))
    figs = _by_name(figures([_lsp(exit=exiting)], height=600, dying_blocks=432))
    assert figs["superscalar_factories"] == {(("role", "lsp"), ("phase", "exiting")): 1}
    assert figs["superscalar_exits_in_flight"][(("role", "lsp"),)] == 1
    assert figs["superscalar_exit_fees_sat"][(("role", "lsp"),)] == 1000


def test_figures_count_sales_fallbacks_sweeps_and_refusals() -> None:
    order = Order("11" * 32, "l", 0, 30_000, 1300, OrderState.DELIVERED, 1, "00", 0, "onchain x")
    failed = Order("22" * 32, "l", 1, 30_000, 1300, OrderState.FAILED, 1, "00", 0, None, "boom 7")
    lsp = _lsp(
        jit=(JitChannel(0, "cid", 30_000, "leaf-mate 3 offline"),),
        orders=(order, failed),
        sweeps=(("x:0", _raw(1)),),
        confirmed=((Tx.deserialize(bytes.fromhex(_raw(1))).txid, 1001),),
        clients=(
            dataclasses.replace(_lsp().clients[0], refusal="fee 250 above 100"),
            *_lsp().clients[1:],
        ),
    )
    aborted = _lsp(instance_id="cc" * 32, state=store.LspState.ABORTED, error="client 7 refused")
    figs = _by_name(figures([lsp, aborted], height=1001, dying_blocks=432))
    assert figs["superscalar_sales"][(("kind", "onchain"),)] == 1
    assert figs["superscalar_sales"][(("kind", "factory"),)] == 0
    assert figs["superscalar_sales_fees_sat"][(("kind", "onchain"),)] == 1300
    assert figs["superscalar_onchain_fallbacks"] == {(("reason", "leaf-mate N offline"),): 1}
    assert figs["superscalar_sweeps"][(("status", "confirmed"),)] == 1
    refusals = figs["superscalar_refusals"]
    assert refusals[(("kind", "move"), ("reason", "fee N above N"))] == 1
    assert refusals[(("kind", "order"), ("reason", "boom N"))] == 1
    assert refusals[(("kind", "creation"), ("reason", "client N refused"))] == 1
    assert reason_label("client " + "ab" * 33 + " refused: x") == "client <id> refused: x"


def test_exit_cost_against_the_balance() -> None:
    record = _client()
    vsize = Tx.deserialize(bytes.fromhex(_raw())).vsize
    cost = exit_cost(record, 0, 10_000, balance_sat=5_000)
    assert cost.vbytes == vsize * len(record.path) and cost.txs == len(record.path)
    assert cost.cost_sat == -(-cost.vbytes * 10_000 // 1000)
    assert not cost.uneconomic
    assert exit_cost(record, 0, 100_000, balance_sat=5_000).uneconomic
    # The LSP computes the same path from its tree.
    assert exit_cost(_lsp(), 0, 10_000, 5_000).vbytes == cost.vbytes


def test_an_uneconomic_client_defers_only_while_a_migration_can_take_it() -> None:
    cheap, dear = ExitCost(300, 2, 100, 5_000), ExitCost(300, 2, 9_000, 5_000)
    assert not defer_exit(cheap, True) and not defer_exit(dear, False) and defer_exit(dear, True)
    record = _client()
    assert can_migrate(record, 600, 12)
    assert not can_migrate(record, 1000 - EWT - 12, 12)
    assert can_migrate(dataclasses.replace(record, moving_to="cid"), 1000 - EWT - 12, 12)


def _onchain(record: store.ClientRecord, to_us_msat: int, rate_kvb: int) -> OnChain:
    leaf = Tx.deserialize(bytes.fromhex(record.path[-1].raw)).txid
    chans = [
        {
            "channel_id": "c0",
            "funding_txid": leaf,
            "to_us_msat": to_us_msat,
            "htlcs": [{"direction": "out", "expiry": 700, "id": 0}],
        }
    ]
    rpc = SimpleNamespace(
        call=lambda method, params=None: {"perkb": {"unilateral_close": rate_kvb}}
    )
    node = SimpleNamespace(
        config=SimpleNamespace(exit_margin=12),
        channels=lambda: {c["channel_id"]: c for c in chans},
        rpc=rpc,
    )
    return OnChain(node, records=None)  # type: ignore[arg-type]


def test_the_htlc_trigger_waits_for_the_migration_when_the_exit_costs_more_than_we_hold() -> None:
    record = _client()
    height = 700 - EWT - 12
    assert can_migrate(record, height, 12)
    economic = _onchain(record, to_us_msat=40_000_000, rate_kvb=2_000)
    reason = economic._exit_reason(record, height)
    assert reason is not None and "HTLC expires at 700" in reason[0]
    dear = _onchain(record, to_us_msat=1_000_000, rate_kvb=200_000)  # 1000 sat, fees high
    assert dear._exit_reason(record, height) is None
    # The last moment (the factory's timeout) is never deferred.
    last = 1000 - EWT - 12
    reason = dear._exit_reason(record, last)
    assert reason is not None and "times out" in reason[0]


def test_settings_are_checked_as_at_start_and_static_ones_refused() -> None:
    options = {o.name: o.default for o in settings.OPTIONS}
    base = settings.config_from(options)
    assert base.sale_fee_ppm == 10_000
    assert settings.changed(options, "superscalar-sale-fee-ppm", "5").sale_fee_ppm == 5
    new = settings.changed(options, "superscalar-arity", "2,4")
    assert new.params.arity == (2, 4)
    for name, value, words in [
        ("superscalar-sale-fee-ppm", "-1", "at least 0"),
        ("superscalar-feerate", "x", "expected an integer"),
        ("superscalar-min-feerate", "60", "above superscalar-max-feerate"),
        ("superscalar-exit-margin", "3", "cannot change while running"),
        ("superscalar-nope", "3", "not an option"),
    ]:
        with pytest.raises(InvalidParameter, match=words):
            settings.changed(options, name, value)
    assert settings.metrics_endpoint(options) is None
    assert settings.metrics_endpoint({**options, "superscalar-metrics-port": 9750}) == (
        "127.0.0.1",
        9750,
    )
    with pytest.raises(InvalidParameter, match="not a TCP port"):
        settings.metrics_endpoint({**options, "superscalar-metrics-port": 70000})
    static = {o.name for o in settings.OPTIONS if not o.dynamic}
    assert static == set(settings.STATIC_WHY)


def test_events_reach_the_sink_and_listeners_and_never_raise() -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    def broken(topic: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("down")

    events.set_sink(broken)
    events.listen(lambda t, f: got.append((t, f)))
    try:
        events.sweep("aa" * 32, "x:0", "bb" * 32, 1001)
    finally:
        events.set_sink(None)
        events._listeners.clear()
    assert got == [
        (
            events.SWEEP,
            {"instance": "aa" * 32, "outpoint": "x:0", "txid": "bb" * 32, "height": 1001},
        )
    ]
    with pytest.raises(ValueError, match="undeclared"):
        events.emit("superscalar_nope", {})


def test_rate_limited_sources_are_counted() -> None:
    import logging

    clock = [0.0]
    limiter = ratelimit.LogLimiter(logging.getLogger("t"), clock=lambda: clock[0])
    before = ratelimit.stats()
    limiter.warning("peer1", "x")
    limiter.warning("peer1", "x")
    limiter.warning("peer1", "x")
    assert limiter.counts() == (1, 2)
    assert ratelimit.stats()[1] - before[1] == 2


def test_retired_channels_are_closed_ones_whose_funding_never_confirmed() -> None:
    """factory-report's `retired_channels`: CLOSINGD_COMPLETE without a short_channel_id (the
    funding never confirmed: lightningd keeps it for good); a confirmed channel that is closing,
    a live one and a forgotten one do not count. `from_factories`: the LSP's by channel id, a
    client's by its leaf's txid."""
    from superscalar_plugin.plugin.lightningd.records import txid_of
    from superscalar_plugin.plugin.operator.report import retired_channels

    lsp, client = _lsp(), _client()
    leaf = txid_of(client.path[-1].raw)
    channels = {
        "c0": {"state": "CLOSINGD_COMPLETE", "funding_txid": "ee" * 32},  # the LSP's, retired
        "c1": {"state": "CHANNELD_NORMAL", "funding_txid": "ee" * 32},  # the LSP's, live
        "x": {"state": "CLOSINGD_COMPLETE", "funding_txid": leaf},  # the client's, retired
        "y": {"state": "CLOSINGD_COMPLETE", "funding_txid": "dd" * 32},  # not a factory's
        "z": {"state": "CLOSINGD_COMPLETE", "short_channel_id": "101x1x0"},  # will confirm
        "w": {"state": "ONCHAIN", "funding_txid": leaf},
    }
    assert retired_channels(channels, [lsp, client]) == {"count": 3, "from_factories": 2}
    assert retired_channels(channels, []) == {"count": 3, "from_factories": 0}
    assert retired_channels({}, [lsp]) == {"count": 0, "from_factories": 0}
    # A channel a DW update replaced (its id in the record's `retired`) is ours too.
    updated = dataclasses.replace(lsp, retired=("y",))
    assert retired_channels(channels, [updated, client]) == {"count": 3, "from_factories": 3}
