"""Red team round 7: a hostile co-client against the ladder's "leave out the culprits of the last
failed successor" (`winddown.culprits`, `_left_out`), through the real plugin processes in the
fake lightningd (tests/harness).

The culprits are read from the start of the LSP's abort reason. Two reasons the LSP writes do not
start with the peer at fault: a `PeerUnreachable` ("cannot send to <id>: ...") raised while the
SIGN_REQUESTs go out (`_complete_channels`: nobody named) or while the final SIGNATURES go out
(`on_payload` -> router: "client <the LAST SENDER>: cannot send to <id>", an honest client named).
A co-client that hangs up at the right moment is therefore never left out, and can get an honest
co-client left out instead.

A test marked `xfail(strict=True, reason="HOLE: ...")` demonstrates the hole against the current
code (it asserts the defence that is missing); every other test asserts a defence that holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from test_plugin_harness import _create, _setup
from test_plugin_migration import MIN_DEPTH, _status

from superscalar_plugin.engine import protocol, wire
from superscalar_plugin.plugin.lifecycle.winddown import culprits

from adversarial.plugin_hostile import pig, unpig, wait
from adversarial.test_red_team_create5 import _failures, _funded_ladder
from harness.errors import RpcCallError
from harness.lightningd_rpcs import HANDLERS
from harness.network import Network
from harness.node import FakeNode


def _create_in_background(lsp: FakeNode, clients: list[FakeNode]) -> tuple[threading.Thread, list]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(_create(lsp, clients))
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _abort_reason(result: list[Any]) -> str:
    assert result and isinstance(result[0], RpcCallError), f"the creation did not fail: {result}"
    return str(result[0].error.get("message", ""))


def _hang_up_after_funding_signed(
    net: Network, lsp: FakeNode, griefer: FakeNode, back_after: float | None = None
) -> list[str]:
    """The griefer answers its channel's funding_created (the LSP's fundchannel_complete returns)
    and drops the connection at once: the SIGN_REQUEST to it cannot be sent. With `back_after`,
    it connects again that many seconds later (a mover again at the next ladder block)."""
    calls: list[str] = []

    def back() -> None:
        time.sleep(back_after or 0)
        net.connect(lsp, griefer)

    def complete(me: FakeNode, p: dict[str, Any]) -> Any:
        res = HANDLERS["fundchannel_complete"](me, p)
        if p.get("id") == griefer.node_id:
            calls.append(str(res.get("channel_id")))
            net.disconnect(lsp, griefer)
            if back_after is not None:
                threading.Thread(target=back, daemon=True).start()
        return res

    lsp.overrides["fundchannel_complete"] = complete
    return calls


# --- 1. a co-client that hangs up before its SIGN_REQUEST: nobody is named ---------------------


def test_a_co_client_hanging_up_before_its_sign_request_is_named(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, 3, timeout=8)
    griefer = clients[2]
    hung_up = _hang_up_after_funding_signed(net, lsp, griefer)
    worker, result = _create_in_background(lsp, clients)
    worker.join(60)
    reason = _abort_reason(result)
    assert hung_up, "the griefer's channel was never completed"
    assert "cannot send to" in reason and griefer.node_id in reason, reason
    # The defence that is missing: the peer the LSP could not reach is the abort's culprit.
    assert griefer.node_id in culprits(reason), f"nobody left out after: {reason}"


# --- 2. a co-client that hangs up after its partial signatures: the last sender is named --------


def test_a_co_client_hanging_up_after_its_partial_signatures_frames_no_honest_client(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients = _setup(network_factory, 3, timeout=8)
    griefer, honest = clients[2], clients[:2]
    held: list[tuple[FakeNode, str]] = []
    griefer_signed = threading.Event()
    release = threading.Event()

    def order(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        # The griefer skips every check and answers first; the honest clients' partial
        # signatures (their nodes' checks take longer) arrive after it hung up. Held here only
        # to make that natural order deterministic.
        if dst is lsp and isinstance(unpig(msg_hex), protocol.Ceremony):
            if src is griefer:
                griefer_signed.set()
            elif not release.is_set():
                held.append((src, msg_hex))
                return None
        return msg_hex

    net.intercept = order
    worker, result = _create_in_background(lsp, clients)
    wait(lambda: griefer_signed.is_set() and len(held) == 2, timeout=40, what="partial sigs")
    time.sleep(0.5)  # the LSP has the griefer's partial signatures
    net.disconnect(lsp, griefer)
    release.set()
    for src, m in held:
        lsp.deliver_custommsg(src, m)
    worker.join(60)
    reason = _abort_reason(result)
    named = culprits(reason)
    assert "cannot send to" in reason, reason
    # The defence that is missing: no honest client is blamed for the griefer's hang-up.
    assert not named & {c.node_id for c in honest}, f"honest client left out after: {reason}"
    assert named == {griefer.node_id}, reason


# --- 3. the ladder: the same hang-up on every successor stalls it for good ---------------------


def test_a_co_client_hanging_up_on_every_successor_does_not_stop_the_ladder(
    network_factory: Callable[..., Network],
) -> None:
    net, lsp, clients, f1 = _funded_ladder(network_factory)
    griefer = clients[2]
    hung_up = _hang_up_after_funding_signed(net, lsp, griefer, back_after=0.1)
    view = _status(lsp, f1)
    dying, last_move = view["dying_from_height"], view["last_move_height"]
    while net.blockheight < dying:
        net.mine(1)
    failed = 0
    # Until a successor exists, the ladder tries at every block of the dying period: one block
    # at a time (blocks are ten minutes apart; the griefer is back within a second of each).
    for _ in range(8):
        wait(lambda: lsp.connected_peer(griefer.node_id) is not None, what="griefer back")
        time.sleep(1.5)  # its handshake: it speaks superscalar again, so it is a mover
        net.mine(1)

        def attempted(seen: int = failed) -> bool:
            return _status(lsp, f1)["successors"] != [] or _failures(lsp) > seen

        wait(attempted, timeout=40, what="a ladder attempt")
        failed = _failures(lsp)
        if _status(lsp, f1)["successors"]:
            break
    net.mine(MIN_DEPTH)
    time.sleep(3.0)
    view = _status(lsp, f1)
    moved = [c for c in view["clients"] if c["handed_over"]]
    reasons = [str(x) for x in lsp.logs if "successor not created" in str(x)]
    left_out = [str(x) for x in lsp.logs if "leaves out" in str(x)]
    assert net.blockheight < last_move
    assert hung_up and all("cannot send to" in r for r in reasons), reasons
    # The defence: the attempt after its hang-up goes without the griefer.
    assert left_out and all(griefer.node_id in line for line in left_out), left_out
    assert view["successors"] and len(moved) == 2, (
        f"no client moved after {len(reasons)} failed successors: {reasons[-1:]}"
    )


# --- 4. what resists ---------------------------------------------------------------------------


def test_a_co_clients_ceremony_abort_naming_an_honest_client_blames_only_itself(
    network_factory: Callable[..., Network],
) -> None:
    """The griefer answers its SIGN_REQUEST with a ceremony ABORT whose text starts like an
    abort reason naming an honest co-client: the LSP's reason starts with the griefer."""
    net, lsp, clients = _setup(network_factory, 3, timeout=8)
    griefer, victim = clients[2], clients[0]

    def forge(src: FakeNode, dst: FakeNode, msg_hex: str) -> str | None:
        p = unpig(msg_hex)
        if src is griefer and dst is lsp and isinstance(p, protocol.Ceremony):
            session = wire.decode(p.message).session
            text = f"client {victim.node_id} refused: bad"
            return pig(protocol.Ceremony(p.instance_id, wire.Abort(session, text).encode()))
        return msg_hex

    net.intercept = forge
    worker, result = _create_in_background(lsp, clients)
    worker.join(60)
    reason = _abort_reason(result)
    assert culprits(reason) == {griefer.node_id}, reason


def test_a_co_clients_refusal_text_cannot_name_others() -> None:
    g, h = "02" + "aa" * 32, "03" + "bb" * 32
    assert culprits(f"factory creation failed: client {g}: client 1 aborted: client {h}") == {g}
    assert culprits(f"client {g} refused: \nclient {h}: x") == {g}
    assert culprits(f" client {h}: leading space") == set()


# --- 5. a slow complete does not get every client named by the deadline ----------------------


def test_a_co_client_slow_to_complete_gets_nobody_named_by_the_deadline(
    network_factory: Callable[..., Network],
) -> None:
    """Round 7's suspected case: the griefer answers funding_created late, but inside the
    complete's own timeout, so the completes end after the session deadline set at the last
    start. The worker's next tick must not abort naming every client (all of them would be left
    out of the ladder's next successor): the SIGN_REQUESTs going out are progress."""
    timeout = 4
    _net, lsp, clients = _setup(network_factory, 3, timeout=timeout)
    griefer = clients[2]

    def slow_output(me: FakeNode, p: dict[str, Any]) -> Any:
        time.sleep(0.5 * timeout)  # the LSP's own wallet step, between the starts and completes
        return HANDLERS["addpsbtoutput"](me, p)

    def slow_complete(me: FakeNode, p: dict[str, Any]) -> Any:
        if p.get("id") == griefer.node_id:
            time.sleep(0.7 * timeout)  # inside the complete's timeout, past the session's
        return HANDLERS["fundchannel_complete"](me, p)

    lsp.overrides["addpsbtoutput"] = slow_output
    lsp.overrides["fundchannel_complete"] = slow_complete
    worker, result = _create_in_background(lsp, clients)
    worker.join(60)
    assert result and not isinstance(result[0], Exception), f"aborted: {result}"
    assert result[0]["state"] == "funded"
