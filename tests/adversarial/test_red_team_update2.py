"""Red team, round 4: the bottom-up DW state update (`factory-update`), as revised after round 3.

A hostile LSP (then a hostile co-client, or a buyer) attacks the two-ceremony update: every tx
below the moved state node first (clients store those and send BELOW_STORED), then the moved
node alone; `Signer.spent`; superseded updates watched and adoptable; UPDATE_SIG at every block.
Each test asserts that the honest party's money (or its use of it) is safe: a test that FAILS is
an attack that works, described in its docstring; one that passes is a regression test naming the
check that stopped it.

Topology of `four()`: kickoff 0 -> DW state 1 -> kickoff 2 -> leaves 3 (clients 0, 1) and 4
(clients 2, 3); 3 states per layer, so state node 1 can move twice (states 1, 2).

Holes found by this review, each mended and kept as a regression test:
- permanent freeze after a stall on the moved node: the LSP forgot an abandoned update and
  replanned the state its clients counted as spent. Now the LSP records it (`LspRecord.spent`)
  and plans past it, and names the silent client; a client that gave its moved-node signature
  stays frozen with its money safe until its own exit (MuSig2 cannot prove a co-client's stall),
  which the test pins (`test_a_stall_on_the_moved_node_does_not_freeze_co_clients_for_good`);
- free odometer burn by unpaid BUYs: a client's purchases now cause at most one refill per
  `REFILL_EVERY` blocks, after the quote's own checks; `FactoryExhausted` is answered
  (`test_unpaid_buys_cannot_burn_the_factorys_dw_states`);
- STORED withheld: `factory-update` answers once the new state exists, and the LSP finishes a
  signed update `ACK_BLOCKS` after it began, resending the signature to stragglers
  (`test_a_client_withholding_stored_cannot_block_the_factorys_later_updates`);
- the spent state taken from the UPDATE's word: a client signs the moved node only in the state
  its UPDATE named (`test_the_state_a_client_counts_as_spent_is_the_one_it_signed`).

Regressions (passing): phase mixing (`test_a_moved_node_request_for_other_txs_below_is_refused`,
`test_the_moved_node_first_gets_only_the_txs_below_signed`,
`test_phase_one_signatures_replayed_into_phase_two_are_refused`), forged UPDATE_SIG
(`test_update_sig_for_another_session_or_tx_changes_nothing`) and forged adoption
(`test_adoption_needs_the_moved_tx_with_a_valid_signature`).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fuzz_protocol import flows

from superscalar_plugin.chain.kernel import KernelChain
from superscalar_plugin.engine import dw, protocol, store, wire
from superscalar_plugin.engine.ceremony import (
    Coordinator,
    Signer,
    SignerState,
    run_ceremony,
)
from superscalar_plugin.engine.errors import CeremonyError, UnsafeToSign
from superscalar_plugin.engine.update import plan_update, signing_phases, updated_factory
from superscalar_plugin.engine.update_store import ClientUpdate

from adversarial.plugin_hostile import unpig
from adversarial.test_red_team_update import (
    _drop,
    _funded,
    _status,
    _world,
    ceremony_withholding_signatures,
    four,
    new_scripts,
    signed_signers,
    update_terms,
)
from harness.node import FakeNode


def _dw(node: FakeNode, inst: str) -> list[int]:
    return [e["dw_state"] for e in _status(node, inst)["exit_path"]]


def _update(world: Any, inst: str, **kw: Any) -> tuple[Any, str | None]:
    return flows._call(world.lsp, "factory-update", {"instance": inst, **kw})


# === 1. a co-client stalls between the moved node's nonces and its partial signature ===========


def test_a_stall_on_the_moved_node_does_not_freeze_co_clients_for_good(tmp_path: Path) -> None:
    """HOLE (permanent freeze: the LSP does not know the state its clients count as spent).

    c3 (a hostile co-client, or simply one that crashes at the wrong moment) signs the txs below
    the moved node, sends its nonce for the moved node, and then never sends its partial
    signature of it. c0, c1, c2 have sent theirs (each persisted `update.signed`, and their
    signer marks state 1 of node 1 `spent`). The LSP times out and abandons (ABORT); c0-c2 keep
    their old channels frozen "until a later update or their exit" (README) - their money is in
    both states, so that is documented.

    But the later update can never come. The LSP abandoned the update and forgot it entirely
    (`UpdateLsp._abandon`: `update=None`, its tree untouched), so its next `factory-update` plans
    node 1's state from its tree again: state 1 (`states_of`, `plan_update`). Every client that
    signed refuses that state as spent (`client_checks.update_phase`: "we already signed state
    1 in an update that never completed") and REJECTs; the LSP abandons again. Nothing on the
    LSP ever learns that state 1 is used, so every later update of node 1 fails the same way
    (and every refill before a sale). The honest clients' balances stay in channels that take no
    HTLC until each of them exits on chain at its own cost. One stalled message (or one LSP
    restart in that window: `UpdateLsp.resume` abandons the same way) freezes every client below
    the node permanently.

    Mended as far as MuSig2 allows: the LSP now records the state as spent (`LspRecord.spent`)
    and plans the next update past it, and its abandon names the client that went silent. A
    client that gave its moved-node signature cannot tell a co-client's stall from an LSP that
    holds the state and lies; its balance also sits in its held payment to itself. So it stays
    frozen, its money safe in every state (the held swap, the txs below), until its own exit,
    which its chain duties start before that payment's deadline (README, "Moving stock between
    leaves"). The test asserts exactly that: the culprit named, c0's update kept signed with its
    swap held and everything below the moved node stored, and no later update silently
    succeeding over it."""
    world = _world(tmp_path, co=3)
    try:
        inst = _funded(world)
        assert flows.Pay(0)(world) == "paid"
        dropped = _drop(world, "c3", wire.MsgType.PARTIAL_SIGS, node=1)
        res, err = _update(world, inst)
        assert res is None and err is not None, (res, err)
        assert dropped, "c3 was never asked for the moved node's partial signature"
        assert world.clients[3].node_id in err, err  # the silent client is named
        c0 = world.clients[0]
        assert _dw(c0, inst) == [0, 0, 0, 0]
        stored = c0.rpc_call("listdatastore", {"key": ["superscalar", "factories", inst]})
        u = json.loads(stored["datastore"][0]["string"])["update"]
        assert u["signed"] and u["below"] and u["moved"] and u["swap_hashes"], u
        world.net.intercept = world._intercept  # c3 is honest from now on
        time.sleep(0.5)
        res2, err2 = _update(world, inst)
        assert res2 is None and "HTLC" in str(err2), (res2, err2)  # refused, saying why
        lsp_view = _status(world.lsp, inst)
        assert lsp_view.get("update") is None  # the LSP is not stuck on it either
    finally:
        world.net.stop()


# === 2. a buyer burns the factory's DW states with BUYs it never pays ===========================


def test_unpaid_buys_cannot_burn_the_factorys_dw_states(tmp_path: Path) -> None:
    """HOLE (free odometer burn by a buyer; griefing of the LSP and every co-client).

    `factory-buy`: the LSP's `PaymentsRole.quote` runs `refill_first` BEFORE it quotes - before
    the minimum amount, before `MAX_OPEN_QUOTES`, before anything is paid. A BUY for a few sat
    more than the buyer's leaf can sell (but less than the stock below node 1) makes the LSP run
    a full DW update: every client below node 1 woken and frozen, every channel replaced, and one
    state of node 1 used for good. The buyer then refuses the quote (here: `max_fee_sat` 0) and
    pays nothing. With K states per layer, K-1 such BUYs exhaust node 1: no update of the factory
    can ever be made again (no stock can move, the LSP's own `factory-update` fails "every state
    used"), so every later sale that needs another leaf's stock falls back to an on-chain channel
    paid by the LSP, for the rest of the factory's life. There is no limit on how often a client
    may trigger a refill.

    Side finding: once node 1 is exhausted, the LSP's `factory-update` never answers:
    `dw.covering_state` raises `FactoryExhausted`, which `UpdateLsp.update` does not catch
    (only `InvalidParameter`/`CeremonyError`), so the worker logs it and the RPC hangs.

    The test sends such BUYs from c0 and asserts that a BUY nobody pays uses no DW state."""
    world = _world(tmp_path)
    try:
        inst = _funded(world)
        c0 = world.clients[0]
        before = _dw(c0, inst)
        for _ in range(2):
            stock = _status(world.lsp, inst)["stock"]
            left = [s["stock_left_sat"] for s in stock]
            # just more than c0's leaf holds; the sibling leaf still has plenty
            sat = left[0] + 2_000
            res, _err = flows._call(
                c0, "factory-buy", {"instance": inst, "sat": sat, "max_fee_sat": 0}
            )
            assert res is None, res  # the quote is refused: nothing paid
        time.sleep(0.5)
        after = _dw(c0, inst)
        # Fixed as far as it goes: a client's purchases cause at most one refill (one DW state)
        # per REFILL_EVERY (144) blocks, so an unpaid BUY repeated cannot exhaust the node; the
        # first one may move stock (README, "Moving stock between leaves").
        assert after[1] - before[1] <= 1, (
            f"two BUYs c0 never paid moved node 1 from {before} to {after}: once node 1 is"
            " exhausted the factory can move no stock any more"
        )
    finally:
        world.net.stop()


# === 3. a client stores the new state and never says STORED ====================================


def test_a_client_withholding_stored_cannot_block_the_factorys_later_updates(
    tmp_path: Path,
) -> None:
    """HOLE (griefing of the LSP and the co-clients: the update never ends).

    c3 completes the update (it holds the new state and stores it) but never sends STORED. The
    LSP's record keeps `update` at stage SIGNED forever: `check_deadlines` only logs and pushes
    the deadline, `on_block` resends UPDATE_SIG at every block, and `_prepare` refuses every later
    `factory-update` (and every refill before a sale) with "already being updated". The old
    channels are never closed by the LSP. One client can thus stop every later stock move of the
    whole factory, at no cost to itself. The test asserts a later update can be made (the
    factory's states allow it: node 1 is at state 1 of 2)."""
    world = _world(tmp_path, co=3)
    try:
        inst = _funded(world)
        inner = world.net.intercept

        def no_stored(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
            p = unpig(msg_hex)
            if (
                src is world.clients[3]
                and isinstance(p, protocol.UpdateStep)
                and p.kind is protocol.UpdateStepKind.STORED
            ):
                return None
            return inner(src, dst, msg_hex) if inner is not None else msg_hex

        world.net.intercept = no_stored
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(_update(world, inst)), daemon=True)
        t.start()
        c0 = world.clients[0]
        assert flows._wait(lambda: _dw(c0, inst)[1] == 1, 30), "the update never completed"
        assert flows._wait(lambda: _dw(world.clients[3], inst)[1] == 1, 10)
        for _ in range(7):  # past ACK_BLOCKS: the LSP finishes the update without c3's STORED
            world.mine(1)
            time.sleep(0.3)
        time.sleep(2)
        res, err = _update(world, inst)
        assert res is not None, (
            f"c3 never said STORED and the LSP refuses every later update of the factory: {err}"
        )
    finally:
        world.net.stop()


# === 4. the UPDATE names one state, the SIGN_REQUEST signs another ==============================


class _Cfg:
    max_ewt = 2016
    max_fee_rate_kvb = 50_000


class _StubNode:
    """Just what `UpdateClient._signer` reads from lightningd (its key and its config)."""

    def __init__(self, key: bytes) -> None:
        self.config = _Cfg()
        self.db = None
        self._key = key

    def client_key(self, instance: str) -> bytes:
        return self._key


def _client_record(signer: Signer, f: Any, c: int, **kw: Any) -> store.ClientRecord:
    assert signer.header is not None
    return store.ClientRecord(
        instance_id="ab" * 32,
        lsp_node_id="03" + "22" * 32,
        state=store.ClientState.FUNDED,
        client_index=c,
        n_clients=f.n_clients,
        params=f.params,
        timeout_height=f.timeout_height,
        lsp_pubkey=f.lsp_pubkey.hex(),
        pubkey=f.client_pubkeys[c].hex(),
        channel_sat=f.channels[c][1],
        early_warning_time=f.topology.ewt,
        header=signer.header.encode().hex(),
        path=tuple(
            store.PathEntry(
                s.node,
                signer.states[s.node],
                s.raw().hex(),
                s.unsigned.spent_amount,
                s.unsigned.spent_script.hex(),
            )
            for s in signer.signed_path
        ),
        funding_txid=signer.header.funding_txid,
        **kw,
    )


def _client_update(session: str, state: int, sat: int, stock: int, **kw: Any) -> ClientUpdate:
    return ClientUpdate(session, 1, state, sat, 0, stock, ("cc" * 32,), **kw)


def test_the_state_a_client_counts_as_spent_is_the_one_it_signed(
    kernel_chain: KernelChain,
) -> None:
    """HOLE (DW state reuse again, through the UPDATE's word: round 3's hole 2 reopened).

    The client persists the update it agreed to from the UPDATE message (`on_update`:
    `ClientUpdate(state=p.state)`), but its signer never compares the state it is asked to sign
    with it: `check_update_path` only wants the moved node to be `expected` (the UPDATE's node)
    and NEWER than the stored one, and `update_phase` only compares with `spent`. A hostile LSP
    names state 1 of node 1 in UPDATE A and sends SIGN_REQUESTs at state 2 (a shorter lock, all
    outputs honest): the client signs state 2 below and then the moved node, and the LSP
    withholds the moved node's final signature (ABORT). What the client keeps says state 1:
    `UpdateClient._signer` rebuilds `Signer.spent` from the stored updates' `state`
    (`signer.spent[s.node] = max(..., s.state)`), so on the next UPDATE B at state 2 the client
    counts only state 1 as spent and signs state 2 of node 1 a second time, with other outputs
    below it. (The same lie also lands in the stored path when the moved node arrives by
    UPDATE_SIG or from the chain: `_new_path` writes `u.state`, not the tx's.)

    Two versions of node 1 at state 2 then exist. Node 1 itself is the same tx in both, so they
    differ first at kickoff 2, which has no relative lock: whoever publishes first wins. The LSP
    publishes A's (it holds it complete), and the path the client stored and has been using (B)
    is a double spend from kickoff 2 down: whatever it received in B's channel is gone. The test
    asserts B is refused."""
    chain = kernel_chain
    f, sks, lsp = four()
    outpoint = chain.fund(f.funding_output.script_pubkey, f.funding_amount)
    signers = signed_signers(f, sks, lsp, outpoint)
    initial = dw.initial_states(f.topology)

    # A: the UPDATE says state 1; the requests sign state 2 (planned as if node 1 were at 1)
    lied = tuple(1 if n == 1 else s for n, s in enumerate(initial))
    plan_a = plan_update(f, lied, [3, 4], {}, {3: 150_000})
    assert plan_a.states[1] == 2
    new_a = updated_factory(f, plan_a, new_scripts(f, plan_a, "A"))
    for c in plan_a.clients:  # as the plugin agrees: to the node AND the state UPDATE named
        signers[c].agree_update(update_terms(new_a, plan_a, c), node=1, state=1)
    below = signing_phases(new_a, 1)[0]
    with pytest.raises(UnsafeToSign, match="we agreed to 1"):  # fixed: refused at once
        run_ceremony(Coordinator(new_a, lsp, outpoint, plan_a.states, below), signers)
    assert signers[0].spent == {} and signers[0].states[1] == 0  # nothing was given


# === 5. mixing the two ceremonies (regressions) =================================================


def _agreed(f: Any, sks: Any, lsp: bytes, outpoint: tuple[str, int], tag: str) -> Any:
    signers = signed_signers(f, sks, lsp, outpoint)
    plan = plan_update(f, dw.initial_states(f.topology), [3, 4], {}, {3: 150_000})
    new = updated_factory(f, plan, new_scripts(f, plan, tag))
    for c in plan.clients:
        signers[c].agree_update(update_terms(new, plan, c), node=plan.node)
    return signers, plan, new


def test_a_moved_node_request_for_other_txs_below_is_refused() -> None:
    """Phase 1 signs update X's txs below node 1; the phase-2 request comes from update Y (client
    0's leaf-mate on another channel script, so client 0's leaf differs; the same node 1 tx:
    node 1's outputs do not depend on the channels).
    Stopped by `update_phase`: the moved node is signed only for exactly the txs held below."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers, plan, new_x = _agreed(f, sks, lsp, outpoint, "X")
    other = new_scripts(f, plan, "Y")
    new_y = updated_factory(f, plan, {**new_scripts(f, plan, "X"), 1: other[1]})
    below, moved = signing_phases(new_x, plan.node)
    run_ceremony(Coordinator(new_x, lsp, outpoint, plan.states, below), signers)
    assert signers[0].state is SignerState.BELOW_SIGNED
    req = Coordinator(new_y, lsp, outpoint, plan.states, moved).start()
    assert Coordinator(new_x, lsp, outpoint, plan.states, moved).txs[1].txid == (
        Coordinator(new_y, lsp, outpoint, plan.states, moved).txs[1].txid
    )
    with pytest.raises(UnsafeToSign, match="another state than we signed below"):
        signers[0].receive(req[0])
    assert 1 not in signers[0].spent


def test_the_moved_node_first_gets_only_the_txs_below_signed() -> None:
    """The LSP skips phase 1 and asks for the moved node alone: the client answers with nonces
    for the txs below only (never the moved node's), and the coordinator, which asked for node
    1, can complete nothing. Stopped by `update_phase` (nothing held below: phase 1 first)."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers, plan, new = _agreed(f, sks, lsp, outpoint, "X")
    coord = Coordinator(new, lsp, outpoint, plan.states, [plan.node])
    req = coord.start()
    reply = signers[0].receive(req[0])
    assert reply is not None
    decoded = wire.decode(reply)
    assert isinstance(decoded, wire.NodeValues)
    nonced = {n for n, _ in decoded.values}
    assert plan.node not in nonced and nonced == set(f.topology.subtree(plan.node)[1:]) & set(
        f.topology.client_path(0)
    )
    with pytest.raises(CeremonyError):
        coord.receive(0, reply)
    assert 1 not in signers[0].spent


def test_phase_one_signatures_replayed_into_phase_two_are_refused() -> None:
    """Phase 1's SIGNATURES (and AGG_NONCES) replayed while the client signs the moved node:
    another session, refused ("message for another ceremony"); the moved node's partial
    signature never leaves, and nothing of the client's path changes."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers, plan, new = _agreed(f, sks, lsp, outpoint, "X")
    below, moved = signing_phases(new, plan.node)
    c1 = Coordinator(new, lsp, outpoint, plan.states, below)
    seen: list[bytes] = []
    out = c1.start()
    while out:
        replies = {}
        for c, m in out.items():
            if c == 0:
                seen.append(m)
            r = signers[c].receive(m)
            if r is not None:
                replies[c] = r
        out = {}
        for c, r in replies.items():
            out.update(c1.receive(c, r))
    assert signers[0].state is SignerState.BELOW_SIGNED
    old = [s.txid for s in signers[0].signed_path]
    c2 = Coordinator(new, lsp, outpoint, plan.states, moved)
    assert signers[0].receive(c2.start()[0]) is not None
    for m in seen[1:]:  # AGG_NONCES, SIGNATURES of phase 1
        with pytest.raises(CeremonyError):
            signers[0].receive(m)
    assert 1 not in signers[0].spent
    assert [s.txid for s in signers[0].signed_path] == old


# === 6. UPDATE_SIG and adoption from the chain, on forged input (regressions) ===================


class _Records:
    def __init__(self) -> None:
        self.persisted: list[store.Record] = []

    def persist(self, record: store.Record) -> None:
        self.persisted.append(record)


def _entry(s: Any, state: int) -> store.PathEntry:
    return store.PathEntry(
        s.node, state, s.raw().hex(), s.unsigned.spent_amount, s.unsigned.spent_script.hex()
    )


def _half_signed_update() -> tuple[Any, ...]:
    """Client 0 after phase 1 of an update (below stored, the moved node's tx kept unsigned),
    the LSP holding the moved node complete; as the plugin records it."""
    f, sks, lsp = four()
    outpoint = ("11" * 32, 0)
    signers, plan, new = _agreed(f, sks, lsp, outpoint, "X")
    below, moved = signing_phases(new, plan.node)
    run_ceremony(Coordinator(new, lsp, outpoint, plan.states, below), signers)
    s0 = signers[0]
    utx = next(u for u in s0.update_path if u.node == plan.node)
    coord = Coordinator(new, lsp, outpoint, plan.states, moved)
    ceremony_withholding_signatures(coord, signers)
    update = _client_update(
        "aa" * 32,
        1,
        new.channels[0][1],
        plan.stocks[0],
        signed=True,
        below=tuple(_entry(s, plan.states[n]) for n, s in sorted(s0.below.items())),
        moved=store.PathEntry(
            utx.node,
            1,
            utx.tx.serialize(include_witness=False).hex(),
            utx.spent_amount,
            utx.spent_script.hex(),
        ),
    )
    record = _client_record(s0, f, 0, update=update)
    return record, coord.signed[plan.node], s0


def test_update_sig_for_another_session_or_tx_changes_nothing() -> None:
    """UPDATE_SIG naming another session (a superseded update's, or none) is ignored; one for our
    session carrying a valid signature of ANOTHER tx (the old state of node 1, which the LSP
    holds) is refused: `on_update_sig` verifies it against the moved tx we kept. Nothing is
    stored either way."""
    from superscalar_plugin.plugin.updates.client import UpdateClient

    record, moved_signed, s0 = _half_signed_update()
    records = _Records()
    uc = UpdateClient(None, records, None, None, None, None)  # type: ignore[arg-type]
    inst = bytes.fromhex(record.instance_id)
    uc.on_update_sig(record, protocol.UpdateSig(inst, b"\xbb" * 32, 1, moved_signed.signature))
    old_node1 = next(s for s in s0.signed_path if s.node == 1)
    with pytest.raises(CeremonyError, match="invalid"):
        uc.on_update_sig(record, protocol.UpdateSig(inst, b"\xaa" * 32, 1, old_node1.signature))
    assert records.persisted == []


def test_adoption_needs_the_moved_tx_with_a_valid_signature() -> None:
    """The chain shows a tx claimed to be the moved node: with the right txid but a forged
    witness (no valid signature), or another tx (the old state, validly signed), nothing is
    adopted (`adopt_from_chain`: same txid and `verify_final`)."""
    from superscalar_plugin.engine.tx import Tx
    from superscalar_plugin.plugin.updates.client import UpdateClient

    record, moved_signed, s0 = _half_signed_update()
    records = _Records()
    uc = UpdateClient(None, records, None, None, None, None)  # type: ignore[arg-type]
    forged = Tx.deserialize(moved_signed.raw())
    raw = bytearray(moved_signed.raw())
    sig = moved_signed.signature
    at = bytes(raw).find(sig)
    assert at > 0
    raw[at : at + 64] = bytes(64 - 1) + b"\x01"
    assert Tx.deserialize(bytes(raw)).txid == forged.txid  # witness only
    uc.adopt_from_chain(record, bytes(raw))
    old_node1 = next(s for s in s0.signed_path if s.node == 1)
    uc.adopt_from_chain(record, old_node1.raw())
    assert records.persisted == []
    # the real one is adopted: it reaches `_store`, which asks lightningd (absent here)
    with pytest.raises(AttributeError):
        uc.adopt_from_chain(record, moved_signed.raw())
