"""When the plugin starts an exit: the factory's timeout (clients) or an offered HTLC's deadline."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from superscalar_plugin.engine import store
from superscalar_plugin.engine.tree import FactoryParams, Topology
from superscalar_plugin.plugin.onchain.duties import OnChain

PARAMS = FactoryParams(states_per_layer=2, step_blocks=3)
EWT = Topology.build(2, PARAMS).ewt
KEY = "02" + "11" * 32


def _lsp(channels: tuple[str, str]) -> store.LspRecord:
    return store.LspRecord(
        instance_id="aa" * 32,
        state=store.LspState.FUNDED,
        params=PARAMS,
        timeout_height=1000,
        lsp_pubkey=KEY,
        clients=tuple(
            store.ClientEntry("03" + f"{i:02x}" * 32, 50_000, KEY, None, cid)
            for i, cid in enumerate(channels)
        ),
        created_height=100,
    )


def _client() -> store.ClientRecord:
    return store.ClientRecord(
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
    )


def _onchain(channels: list[dict[str, Any]]) -> OnChain:
    node = SimpleNamespace(
        config=SimpleNamespace(exit_margin=12),
        channels=lambda: {c["channel_id"]: c for c in channels},
    )
    return OnChain(node, records=None)  # type: ignore[arg-type]


def test_a_client_exits_before_the_timeout_the_lsp_does_not() -> None:
    oc = _onchain([])
    limit = 1000 - EWT - 12
    assert oc._exit_reason(_client(), limit - 1) is None
    reason = oc._exit_reason(_client(), limit)
    assert reason is not None and "times out at 1000" in reason[0] and reason[1] is None
    assert oc._exit_reason(_lsp(("c1", "c2")), 999) is None  # the LSP waits for T and sweeps


def test_an_offered_htlc_near_its_expiry_exits_only_that_clients_path() -> None:
    htlc = {"direction": "out", "expiry": 700, "id": 0}
    incoming = {"direction": "in", "expiry": 650, "id": 1}
    chans = [
        {"channel_id": "c1", "htlcs": [incoming]},
        {"channel_id": "c2", "htlcs": [htlc]},
        {"channel_id": "other", "htlcs": [{"direction": "out", "expiry": 500}]},
    ]
    oc = _onchain(chans)
    lsp = _lsp(("c1", "c2"))
    assert oc._exit_reason(lsp, 700 - EWT - 13) is None
    reason = oc._exit_reason(lsp, 700 - EWT - 12)
    assert reason == ("an offered HTLC expires at 700: exit to enforce it", 1)


def test_a_later_htlc_deadline_on_another_channel_adds_that_client_to_the_exit() -> None:
    """Issue 9 item 12: client 0 is exiting; an offered HTLC on client 1's channel nearing its
    deadline must still trigger (its path is added), while client 0's own HTLCs trigger nothing
    new."""
    chans = [
        {"channel_id": "c1", "htlcs": [{"direction": "out", "expiry": 600, "id": 0}]},
        {"channel_id": "c2", "htlcs": [{"direction": "out", "expiry": 700, "id": 1}]},
    ]
    oc = _onchain(chans)
    exiting = _lsp(("c1", "c2")).replace(
        exit=store.ExitState(
            reason="an offered HTLC expires at 600", started_height=500, clients=(0,)
        )
    )
    assert oc._exit_reason(exiting, 700 - EWT - 13) is None  # client 0's HTLC: already exiting
    reason = oc._exit_reason(exiting, 700 - EWT - 12)
    assert reason == ("an offered HTLC expires at 700: exit to enforce it", 1)
    client = _client().replace(exit=store.ExitState(reason="x", started_height=1, clients=(0,)))
    assert oc._exit_reason(client, 999) is None  # a client's only path is already on its way
