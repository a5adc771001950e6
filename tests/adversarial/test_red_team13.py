"""Red-team attacks, round 13: round 12's fix (a client signs no DW update below a node whose
newer state it signed in an update that never completed: `client_checks.update_phase` on `spent`,
`UpdateClient._check` on `records.held_updates`; no sale while such a state may be held).

Each test asserts the safe outcome; the `xfail(strict=True)` test is an attack that works today.

Holes found, mended since: an UPDATE reusing the withheld update's SESSION id erased it from the
client's record (it reopened round 12 end to end on the kernel chain) and, followed by ABORT,
unfroze the old channels the withheld state voids (an UPDATE naming a session we signed is now
refused); a withheld state that an update above made harmless counted as held for good (`_store`
now drops the superseded updates below the node it stores, `still_superseded`). Open (liveness,
strict xfail): the LSP's planner keeps choosing a node below a stalled ancestor update, which
the clients refuse.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import pytest

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, protocol, store
from superscalar_plugin.engine.ceremony import Coordinator, run_ceremony
from superscalar_plugin.engine.errors import CeremonyError, UnsafeSale, UnsafeToSign
from superscalar_plugin.engine.update import plan_update, signing_phases, updated_factory
from superscalar_plugin.engine.update_store import ClientUpdate
from superscalar_plugin.plugin.lightningd.records import held_updates, txid_of

from adversarial.test_red_team12 import _leaves_under, _sixteen, withheld_update
from adversarial.test_red_team_update import (
    new_scripts,
    publish_path,
    restored,
    signed_signers,
    update_terms,
)
from adversarial.test_red_team_update2 import _client_record, _entry

SESSION_A = "aa" * 32
OLD_CHANNEL = "cc" * 32


# --- stubs: just what `UpdateClient.on_update` / `_check` / `_signer` read -----------------------


class _Cfg:
    max_ewt = 2016
    max_fee_rate_kvb = 50_000
    max_move_fee_sat = 1000
    exit_margin = 6


class _Node:
    def __init__(self, key: bytes, record: store.ClientRecord) -> None:
        self.config = _Cfg()
        self.db = types.SimpleNamespace(bound_channel=lambda *a: None)
        self.payment = None
        self.id = "02" + "33" * 32
        self._key = key
        self._chans = {
            OLD_CHANNEL: {
                "peer_id": record.lsp_node_id,
                "funding_txid": txid_of(record.path[-1].raw),
                "state": "CHANNELD_NORMAL",
                "to_us_msat": 5_000_000,
                "htlcs": [],
            }
        }

    def client_key(self, instance: str) -> bytes:
        return self._key

    def channels(self) -> dict[str, dict[str, Any]]:
        return self._chans


class _Records:
    def __init__(self, record: store.ClientRecord) -> None:
        self.record = record

    def persist(self, record: store.Record) -> None:
        assert isinstance(record, store.ClientRecord)
        self.record = record

    def get(self, instance: str) -> store.Record:
        return self.record

    def all(self) -> list[store.Record]:
        return [self.record]


class _Peers:
    def __init__(self) -> None:
        self.sent: list[protocol.Payload] = []

    def send(self, peer: str, p: protocol.Payload) -> None:
        self.sent.append(p)


def _update_client(record: store.ClientRecord, key: bytes):  # type: ignore[no-untyped-def]
    from superscalar_plugin.plugin.updates.client import UpdateClient

    records, peers = _Records(record), _Peers()
    uc = UpdateClient(
        _Node(key, record),  # type: ignore[arg-type]
        records,  # type: ignore[arg-type]
        peers,  # type: ignore[arg-type]
        types.SimpleNamespace(refresh=lambda: None),  # type: ignore[arg-type]
        types.SimpleNamespace(accepted=lambda *a: None),  # type: ignore[arg-type]
        lambda fn: fn(),
    )
    return uc, records, peers


def _update_msg(record: store.ClientRecord, session: str, node: int, state: int) -> protocol.Update:
    return protocol.Update(
        bytes.fromhex(record.instance_id),
        bytes.fromhex(session),
        node,
        state,
        record.channel_sat,
        5_000_000,
        50_000,
        (bytes.fromhex(OLD_CHANNEL),),
    )


def _withheld_a(chain: KernelChain | None):  # type: ignore[no-untyped-def]
    """Update A moves state node 1 (c0-c7 sign bottom-up); the LSP aggregates node 1 and sends it
    to nobody (ABORT). Returns the factory, keys, signers, A's coordinator and plan, and, per
    client, the `ClientUpdate` the plugin keeps for A (signed, below stored, moved kept)."""
    f, sks, lsp = _sixteen()
    outpoint = (
        chain.fund(f.funding_output.script_pubkey, f.funding_amount) if chain else ("11" * 32, 0)
    )
    signers = signed_signers(f, sks, lsp, outpoint)
    plan_a, new_a, coord_a = withheld_update(f, signers, lsp, outpoint, 1)
    kept = {}
    for c in plan_a.clients:
        s = signers[c]
        utx = next(u for u in s.update_path if u.node == 1)
        kept[c] = ClientUpdate(
            SESSION_A,
            1,
            plan_a.states[1],
            new_a.channels[c][1],
            5_000_000,
            plan_a.stock_of(new_a, new_a.topology.leaf_of_client[c]),
            (OLD_CHANNEL,),
            signed=True,
            below=tuple(_entry(b, plan_a.states[n]) for n, b in sorted(s.below.items())),
            moved=store.PathEntry(
                1,
                plan_a.states[1],
                utx.tx.serialize(include_witness=False).hex(),
                utx.spent_amount,
                utx.spent_script.hex(),
            ),
        )
    assert signers[0].spent == {1: 1} and signers[0].states[1] == 0
    return f, sks, lsp, outpoint, signers, coord_a, plan_a, kept


# --- 1. an UPDATE that reuses the withheld update's session --------------------------------------


def test_an_update_reusing_the_withheld_sessions_id_cannot_erase_it(
    kernel_chain: KernelChain,
) -> None:
    """Hostile LSP. A (node 1 -> state 1) is signed by c0-c7 and withheld: each client keeps A
    as `record.update` (signed). The LSP then sends UPDATE B for node 3 (below node 1) carrying
    A's SESSION id. `UpdateClient._check` lets it in: "another update in flight" is only for an
    unsigned pending update of another session, and the round-12 loop skips held updates
    `u.session == p.session`. `on_update` moves a pending signed update to `superseded` only when
    the session differs: here it simply REPLACES `record.update` with a fresh
    `ClientUpdate(signed=False)`: A is gone from the record (no `superseded`, no `moved`, no
    `below`), `held_updates` is empty, and `_signer` builds `spent` from `superseded` alone, so
    the client's signer counts nothing as spent. B is signed and stored; the LSP publishes the
    root kickoff and A's node 1 (it waits one step less than node 1 at state 0), and B's path,
    the client's new channel with its whole balance, can never confirm (the round-12 loss).
    Safe outcome: the UPDATE is refused, or A stays held (and spent)."""
    chain = kernel_chain
    f, sks, lsp, outpoint, signers, coord_a, _plan_a, kept = _withheld_a(chain)
    plan_b = plan_update(f, dw.initial_states(f.topology), _leaves_under(f, 3), {})
    assert plan_b.node == 3 and plan_b.states[1] == 0

    spent_seen = {}
    records = {}
    refused = {}
    for c in plan_b.clients:
        record = _client_record(signers[c], f, c, update=kept[c])
        assert held_updates(record)  # A is held before the attack
        uc, recs, peers = _update_client(record, sks[c])
        uc.on_update(record.lsp_node_id, record, _update_msg(record, SESSION_A, 3, 1))
        records[c] = recs.record
        refused[c] = any(
            isinstance(p, protocol.Text) and p.type is protocol.PayloadType.REJECT
            for p in peers.sent
        )
        signer = uc._signers.get(record.instance_id)
        spent_seen[c] = dict(signer.spent) if signer is not None else None

    # What the plugin's signers then do with B (their `spent` as `_signer` built it).
    new_b = updated_factory(f, plan_b, new_scripts(f, plan_b, "B"))
    fresh = {}
    for c in plan_b.clients:
        fresh[c] = restored(signers[c], f, c)
        seen = spent_seen[c]
        fresh[c].spent = dict(seen if seen is not None else signers[c].spent)
        fresh[c].agree_update(update_terms(new_b, plan_b, c), node=3, state=plan_b.states[3])
    b_signed = True
    try:
        for nodes in signing_phases(new_b, 3):
            run_ceremony(Coordinator(new_b, lsp, outpoint, plan_b.states, nodes), fresh)
    except (UnsafeToSign, CeremonyError):
        b_signed = False
    voided = False
    if b_signed:  # B stored by c0; the LSP publishes A's node 1 instead: B is a double spend
        assert fresh[0].states[3] == 1  # c0's stored path is B's
        kickoff0 = fresh[0].signed_path[0]
        assert publish_path(chain, [kickoff0, coord_a.signed[1]]) == []
        voided = publish_path(chain, list(fresh[0].signed_path), start=1) != []

    for c in plan_b.clients:
        r = records[c]
        safe = refused[c] or (bool(held_updates(r)) and (spent_seen[c] or {}).get(1, -1) >= 1)
        assert safe, (c, r.update, r.superseded, spent_seen[c], b_signed, voided)
    assert not b_signed


def test_a_resent_update_then_abort_cannot_unfreeze_a_signed_update() -> None:
    """Hostile LSP. After A (node 1 -> 1) is signed and withheld, it sends A's UPDATE again
    (same session, same node and state: what a retry after a lost READY looks like), then
    ABORT. `on_update` replaces the signed pending update with `signed=False` and no `moved`/
    `below`; `on_abort` sees an unsigned update and calls `unsigned_dropped`: `record.update`
    None, the old channels unfrozen (the guards), the swap HTLCs failed back into the old
    channels. The LSP then publishes A: the old leaf (and old channels) can never confirm, and
    the client kept neither A's moved tx nor the txs below it (`on_block` has nothing to adopt):
    its balance, failed back into the old channels, is lost; A's new channel holds only the
    LSP's push. Safe outcome: A still pending and signed, with its moved tx, after both."""
    f, sks, _lsp, _outpoint, signers, _coord_a, plan_a, kept = _withheld_a(None)
    c = 0
    record = _client_record(signers[c], f, c, update=kept[c])
    uc, recs, _peers = _update_client(record, sks[c])
    uc.on_update(record.lsp_node_id, record, _update_msg(record, SESSION_A, 1, plan_a.states[1]))
    uc.on_abort(recs.record, "changed my mind")
    after = recs.record
    held = [u for u in (after.update, *after.superseded) if u is not None]
    assert any(u.session == SESSION_A and u.signed and u.moved is not None for u in held), (
        after.update,
        after.superseded,
    )


# --- 2. the refusal strands an honest client -----------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="HOLE (liveness): after a stalled node-1 update the LSP's planner (`leaves_for`/"
    "`covering_state`) picks node 3, which every client below node 1 refuses: their old"
    " channels stay frozen and their sales refused until they exit on chain",
)
def test_a_stalled_ancestor_update_leaves_a_way_to_move_past_it() -> None:
    """Hostile co-client (or a crash). In A (node 1 -> 1) one client of c0-c7 never sends its
    moved-node partial signature: nobody holds A, but every honest client gave its own and
    keeps A signed (`record.update`, old channels frozen "until a later update"), and the LSP
    records (1, 1) in `LspRecord.spent`. The honest LSP then refills c0: `leaves_for` walks up
    c0's path and stops at the lowest state node covering two leaves with a state left, node 3
    (state 0 < 2), and `covering_state` picks node 3 too. Round 12's `_check` refuses every
    UPDATE of node 3 (node 1 above it may be held), and nothing in the LSP plans node 1 instead:
    every retry is the same refused node-3 update. c0-c7's old channels stay frozen
    (`guards`: `r.update is not None`) and their sales refused (`held_updates`) for the
    factory's life: the only way out is a unilateral exit of the tree. Safe outcome: the LSP's
    next update for c0 is one c0 accepts (of node 1 or above)."""
    from superscalar_plugin.plugin.updates import plan as plan_mod
    from superscalar_plugin.plugin.updates.client import UpdateRefused

    f, sks, _lsp, _outpoint, signers, _coord_a, _plan_a, kept = _withheld_a(None)
    record = _client_record(signers[0], f, 0, update=kept[0])
    uc, _recs, _peers = _update_client(record, sks[0])

    lsp_record = types.SimpleNamespace(
        tree=tuple(store.PathEntry(n, 0, "", 0, "") for n in range(len(f.topology.nodes))),
        spent=((1, 1),),
        params=f.params,
    )
    orig = plan_mod.topology
    plan_mod.topology = lambda r: f.topology  # type: ignore[assignment]
    try:
        leaves = plan_mod.leaves_for(lsp_record, 0)  # type: ignore[arg-type]
        states = plan_mod.planning_states(lsp_record)  # type: ignore[arg-type]
    finally:
        plan_mod.topology = orig  # type: ignore[assignment]
    node = dw.covering_state(f.topology, states, leaves)
    accepted = True
    try:
        uc._check(record, _update_msg(record, "bb" * 32, node, states[node] + 1))
    except UpdateRefused:
        accepted = False
    assert accepted, f"the LSP plans node {node}, which c0 refuses"


def test_a_withheld_state_made_harmless_by_an_update_above_is_no_longer_held() -> None:
    """A (node 3 -> 1, c0-c3) is signed and withheld; A goes to `superseded` when the LSP's
    next UPDATE comes. B moves node 1 (above node 3: allowed, `_check` and `update_phase` look
    above the moved node only) and is stored: c0's path has node 1 at 1, node 3 reset to 0.
    A's node 3 spends kickoff 2 of node 1 at state 0, which node 1 at state 1 beats: A can
    never confirm. Yet `held_updates` says `states[3] (0) < A.state (1)`: A is "held" again, so
    c0 co-signs no sale for the factory's life, and every UPDATE of c0's leaf (below node 3) is
    refused; `Signer.spent[3] = 1` also burns node 3's state 1 in the new tree. `_store` never
    prunes `superseded` but by session. Safe outcome: A is no longer held after B."""
    from superscalar_plugin.plugin.sales.cosign import Cosigner

    f, sks, lsp = _sixteen()
    outpoint = ("11" * 32, 0)
    signers = signed_signers(f, sks, lsp, outpoint)
    initial = dw.initial_states(f.topology)
    withheld_update(f, signers, lsp, outpoint, 3)
    a = ClientUpdate(SESSION_A, 3, 1, f.channels[0][1], 0, 10_000, (OLD_CHANNEL,), signed=True)

    plan_b = plan_update(f, initial, _leaves_under(f, 1), {})
    assert plan_b.node == 1
    new_b = updated_factory(f, plan_b, new_scripts(f, plan_b, "B"))
    fresh = {c: restored(signers[c], f, c) for c in plan_b.clients}
    for c in plan_b.clients:
        fresh[c].agree_update(update_terms(new_b, plan_b, c), node=1, state=1)
    for nodes in signing_phases(new_b, 1):
        run_ceremony(Coordinator(new_b, lsp, outpoint, plan_b.states, nodes), fresh)
    assert fresh[0].states[1] == 1 and fresh[0].states[3] == 0  # B stored by c0

    # B stored: what `_store` keeps of the superseded updates (A hangs below B's node 1).
    from superscalar_plugin.plugin.updates.held import still_superseded

    b = ClientUpdate("bb" * 32, 1, 1, f.channels[0][1], 0, 10_000, (OLD_CHANNEL,), signed=True)
    kept = still_superseded(_client_record(signers[0], f, 0, superseded=(a,)), b)
    assert kept == ()
    record = _client_record(fresh[0], f, 0, superseded=kept)
    sale_ok = True
    try:
        Cosigner._check_live(object(), record)  # type: ignore[arg-type]
    except UnsafeSale:
        sale_ok = False
    assert not held_updates(record) and sale_ok, held_updates(record)


# --- 3. the ways round 12 meant (regressions, passing) ---------------------------------------------


def test_a_held_update_of_a_node_above_is_still_refused_with_a_fresh_session() -> None:
    """The plain round-12 attack through the plugin: A (node 1) signed and pending, UPDATE B of
    node 3 with a NEW session: refused at once (`_check`), nothing persisted, A still held."""
    f, sks, _lsp, _outpoint, signers, _coord_a, _plan_a, kept = _withheld_a(None)
    record = _client_record(signers[0], f, 0, update=kept[0])
    uc, recs, peers = _update_client(record, sks[0])
    uc.on_update(record.lsp_node_id, record, _update_msg(record, "bb" * 32, 3, 1))
    assert any(
        isinstance(p, protocol.Text) and "could be voided" in p.reason for p in peers.sent
    ), peers.sent
    assert recs.record.update == kept[0] and held_updates(recs.record)


def test_an_update_of_the_held_node_itself_moves_past_it() -> None:
    """The way out round 12 leaves: an UPDATE of node 1 at a newer state (2) is let in, A goes to
    `superseded`, and the signer counts node 1's state 1 as spent (a state 1 is refused)."""
    f, sks, _lsp, _outpoint, signers, _coord_a, _plan_a, kept = _withheld_a(None)
    record = _client_record(signers[0], f, 0, update=kept[0])
    uc, recs, peers = _update_client(record, sks[0])
    uc.on_update(record.lsp_node_id, record, _update_msg(record, "bb" * 32, 1, 2))
    assert not any(isinstance(p, protocol.Text) for p in peers.sent), peers.sent
    after = recs.record
    assert after.update is not None and after.update.session == "bb" * 32
    assert [u.session for u in after.superseded] == [SESSION_A]
    assert uc._signers[after.instance_id].spent.get(1) == 1


def test_the_held_update_survives_a_restart_through_the_store() -> None:
    """A restart: the record read back from its JSON keeps A signed with its moved tx, in
    `update` and in `superseded` alike, so `held_updates` and `_signer` still see it; `resume`
    leaves a signed update alone."""
    f, sks, _lsp, _outpoint, signers, _coord_a, _plan_a, kept = _withheld_a(None)
    for kw in ({"update": kept[0]}, {"superseded": (kept[0],)}):
        record = _client_record(signers[0], f, 0, **kw)
        back = store.from_json(store.to_json(record))
        assert back == record and held_updates(back)
        uc, recs, peers = _update_client(back, sks[0])
        uc.resume(back)
        assert recs.record == back and not peers.sent


def test_a_stale_update_sig_or_chain_adoption_keeps_the_same_guard() -> None:
    """Adoption of a superseded update (`on_block` -> `adopt_from_chain` -> `_store`) only happens
    when its moved tx is itself on chain: then it IS the chain's state. `held_updates` of a
    record whose path carries a node at or past the held state is empty (moved past)."""
    f, _sks, _lsp, _outpoint, signers, _coord_a, _plan_a, kept = _withheld_a(None)
    past = dataclasses.replace(kept[0], state=0)
    record = _client_record(signers[0], f, 0, superseded=(past,))
    assert held_updates(record) == []
