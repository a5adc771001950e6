"""The factory service of one node: LSP of the factories it creates, client of those it joins.

This module only wires the roles together and is what `main` (pyln's handlers) calls. The roles
live in rooms (README, "Developing"): `creation/` (the LSP's ceremony, the client's checks, the
openchannel decision, the funding check), `sales/` (seller, payments, co-signers, buyer),
`updates/` (DW state updates: LSP, client, the balance swap, the chain watch), `lifecycle/`
(migration, close, moves and hand-over), `onchain/` (each block's duties, unroll, fee bumps, sale
chains), `operator/` (status, report, metrics, events) and `lightningd/` (node glue: RPC, records,
options, peers, message routing, the HTLC guards).

Threads. pyln-client runs one dispatch loop: a handler that waited for a peer, or for lightningd
(which may call back into this plugin through the `rpc_command` hook), would deadlock it. So:

- pyln's dispatch thread runs the hooks and notifications and answers at once: `htlc_verdict` and
  `invoice_params` (guards: lookups in a map swapped whole; an HTLC that arrives before start-up
  built them waits for `ready`, bounded), `on_htlc` (the hook is async: an HTLC that pays a sale's
  quote is held, its request handed to the worker, which answers it once the sale is over; every
  other HTLC is answered on the spot, so none queues behind a held one), `on_openchannel` and the
  `channel_in_factory` record (opens: a dictionary under its own lock), `on_disconnect` (peers),
  the height from `block_added` (node); everything else it only queues.
- The worker thread (`runtime.Worker`) runs every queued job in order, start-up included: each
  message (in -> persist -> out), every RPC handler's work but those below, the LSP's
  creations (whose lightningd round trips, e.g. `fundchannel_start`, wait on a peer), what the
  chain thread found (a compromised funding, `fundcheck`), the pruning of never-signed records,
  and, every 0.5 s however busy it is, the ceremony deadlines (a flood of messages cannot starve
  them). Role state (sessions) is touched only there, so it needs no lock.
- The chain thread (a second `Worker`, started once start-up has loaded the records) runs the
  on-chain duties of every factory: each block's scan, exits, CPFP, closes and sweeps,
  `factory-exit`, and the read-only `factory-status`/`-list`. No peer can hold it: it never waits on a peer, so a client that never answers
  a creation's `fundchannel_start` cannot delay another factory's exit or sweep. After each
  block's scan it queues the worker's own block jobs (the LSP's funded check, the guards).
  `OnChain` state (scan height, block hashes) is its own; of a record it writes only the on-chain
  fields (`Records.update_chain`) and the roles only the others (`Records.persist`), each under
  the records' lock on the latest stored record.

Nothing here imports pyln: the lightningd connection is the small `Rpc` protocol, so the service
is exercised by the harness and by a real lightningd alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..engine import store
from ..engine.errors import InvalidParameter
from ..engine.tree import FactoryParams
from .creation.client import ClientRole
from .creation.fundcheck import FundingCheck
from .creation.lsp import LspRole
from .creation.opens import ChannelOpens
from .lifecycle.move import ClientMover
from .lifecycle.winddown import WindDown
from .lightningd.config import MIN_CHANNEL_SAT, Config
from .lightningd.guards import Guards
from .lightningd.node import Node
from .lightningd.nodedb import NodeDb
from .lightningd.peers import Peers
from .lightningd.records import Records
from .lightningd.router import Router
from .lightningd.runtime import Reply, Rpc, Worker, answer_now
from .onchain.duties import OnChain
from .operator.metrics import Metrics
from .operator.report import Report
from .operator.status import StatusView
from .sales.buyer import Buyer
from .sales.cosign import Cosigner
from .sales.payments import Payments
from .sales.seller import SalesRole
from .updates.client import UpdateClient
from .updates.lsp import UpdateLsp

__all__ = ["MIN_CHANNEL_SAT", "Config", "FactoryService"]

log = logging.getLogger("superscalar")

READY_WAIT = 30.0  # seconds an HTLC arriving during start-up waits for the guards
TEMPORARY_NODE_FAILURE = "2002"  # BOLT 4: NODE|2


class FactoryService:
    def __init__(self, rpc: Rpc, config: Config) -> None:
        self.node = Node(rpc, config)
        self.worker = Worker(tick=self._check_deadlines)
        self.chain = Worker(tick=lambda: None, name="superscalar-chain")
        self.records = Records(rpc)
        self.peers = Peers(rpc)
        self.opens = ChannelOpens()
        self.guards = Guards(self.node, self.records)
        self.view = StatusView(self.node, self.records)
        self.lsp = LspRole(
            self.node, self.records, self.peers, self.guards, self.view, self.worker.submit
        )
        self.client = ClientRole(self.node, self.records, self.peers, self.opens, self.guards)
        self.wind_down = WindDown(self.node, self.records, self.peers, self.lsp, self.guards)
        self.mover = ClientMover(
            self.node, self.records, self.peers, self.guards, self.worker.submit
        )
        self.sales = SalesRole(self.node, self.records, self.peers, self.guards)
        self.payments = Payments(self.node, self.records, self.peers, self.worker.submit)
        self.payments.start_sale = self.sales.start
        self.payments.refill_first = self.sales.refill_first
        self.buyer = Buyer(self.node, self.records, self.peers, self.worker.submit)
        self.cosign = Cosigner(
            self.node, self.records, self.peers, self.opens, self.guards, self.buyer
        )
        self.update_lsp = UpdateLsp(self.node, self.records, self.peers, self.guards)
        self.update_client = UpdateClient(
            self.node, self.records, self.peers, self.guards, self.opens, self.worker.submit
        )
        self.router = Router(
            self.peers,
            self.opens,
            self.lsp,
            self.client,
            self.worker.submit,
            (self.records, self.wind_down, self.mover),
            (self.sales, self.payments, self.cosign),
            (self.update_lsp, self.update_client),
        )
        self.sales.refill = self.update_lsp.refill
        self.onchain = OnChain(self.node, self.records)
        self.metrics = Metrics(self.records, self.node)
        self.reports = Report(self.node, self.records)
        self.funding = FundingCheck(self.node, self.records, self.guards, self.worker.submit)
        self.onchain.funding_check = self.funding.on_block
        self.ready = threading.Event()
        self._refresh_lock = threading.Lock()
        self._refresh_queued = False  # a channel change's guards refresh waits on the worker

    @property
    def config(self) -> Config:
        return self.node.config

    def reconfigure(self, config: Config) -> None:
        """`setconfig`: the new configuration, checked whole by the caller, swapped in at once
        (every role reads `node.config` when it acts: a job sees the old or the new, never a
        mix)."""
        self.node.config = config

    # --- lifecycle (worker) -------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; every RPC, start-up included, runs there."""
        self.worker.start()
        self.worker.submit(self._startup)

    def stop(self) -> None:
        self.metrics.stop()
        self.chain.stop()
        self.worker.stop()

    def shutdown(self, timeout: float) -> None:
        """lightningd's `shutdown`: finish the jobs in hand, start no other."""
        self.metrics.stop()
        self.chain.stopping.set()
        self.worker.shutdown(timeout)
        self.chain.shutdown(timeout)

    def _startup(self) -> None:
        info = self.node.rpc.call("getinfo")
        self.node.id = info["id"]
        self.node.raise_height(int(info["blockheight"]))
        self.node.db = NodeDb.located(self.node.rpc)  # our channels' funding keys (nodedb)
        self.records.height = self.node.height
        records = self.records.load()
        # Every record is loaded: on-chain duties may run (queued blocks first), even if what
        # follows fails. Never before: a scan without the records would skip their txs for good.
        self.chain.start()
        for record in records:
            try:
                if isinstance(record, store.LspRecord):
                    self.lsp.resume(record)
                    self.payments.resume(record)
                    self.update_lsp.resume(record)
                else:
                    self.client.resume(record)
                    self.mover.resume(record)
                    self.update_client.resume(record)
            except Exception:  # one factory's trouble must not stop start-up for the others
                log.exception("resuming factory %s failed", record.instance_id[:16])
        self.update_client.swaps.track(records)  # our swaps' HTLCs, replayed at start
        self.funding.recheck()
        self.payments.refresh()
        self.guards.read_configs()
        self.guards.refresh()
        self.ready.set()
        log.info("superscalar ready: node %s, %d factories", self.node.id, len(self.records))
        self.peers.greet_connected()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        self.lsp.check_deadlines(now)
        self.client.check_deadlines(now)
        self.sales.check_deadlines(now)
        self.payments.check_deadlines(now)
        self.cosign.check_deadlines(now)
        self.buyer.check_deadlines(now)
        self.update_lsp.check_deadlines(now)

    # --- RPC commands: queued, answered from the worker ---------------------------------------

    def run_on_worker(self, reply: Reply, job: Callable[[], Any]) -> None:
        self.worker.answer(reply, job)

    def run_on_chain(self, reply: Reply, job: Callable[[], Any]) -> None:
        """Read-only answers (`factory-status`, `-list`): from the chain thread, which no peer
        can hold up, so a hung creation does not hide the state of every factory."""
        self.chain.answer(reply, job)

    def create(
        self, reply: Reply, clients: list[str], channel_sat: list[int], params: FactoryParams
    ) -> None:
        self.worker.submit(lambda: self.lsp.create(reply, clients, channel_sat, params))

    def status(self, instance: str | None) -> dict[str, Any]:
        return self.view.status(instance)

    def report(self, instance: str | None) -> dict[str, Any]:
        if instance is not None and self.records.get(instance) is None:
            raise InvalidParameter(f"instance: no factory {instance}")
        return self.reports.report(instance)

    def migrate(self, reply: Reply, instance: str, extra: list[str], extra_sat: int) -> None:
        self.worker.submit(lambda: self.wind_down.migrate(reply, instance, extra, extra_sat))

    def close(self, reply: Reply, instance: str) -> None:
        """`factory-close`: wind the factory down into ordinary channels."""

        def job() -> dict[str, Any]:
            return self.view.of(self.wind_down.close(instance))

        self.worker.submit(lambda: answer_now(reply, job, "factory-close failed"))

    def update(
        self, reply: Reply, instance: str, client: str | None, stock_sat: int | None
    ) -> None:
        """`factory-update`: a DW state update moving stock towards `client`'s leaf."""
        self.worker.submit(lambda: self.update_lsp.update(reply, instance, client, stock_sat))

    def sell(self, reply: Reply, instance: str, client: str, sold_sat: int) -> None:
        """`factory-sell`: inbound liquidity for a client, given by the LSP."""
        self.worker.submit(lambda: self.sales.sell(reply, instance, client, sold_sat))

    def buy(self, reply: Reply, instance: str, sold_sat: int, max_fee_sat: int | None) -> None:
        """`factory-buy`: ask our LSP for inbound liquidity and pay its price."""
        self.worker.submit(lambda: self.buyer.buy(reply, instance, sold_sat, max_fee_sat))

    def exit(self, reply: Reply, instance: str, client: str | None) -> None:
        """`factory-exit`: start (or show) the unilateral exit of a factory we are in."""

        def job() -> dict[str, Any]:
            self.onchain.request_exit(instance, client)
            record = self.records.get(instance)
            assert record is not None
            return self.view.of(record)

        self.chain.submit(lambda: answer_now(reply, job, "factory-exit failed"))

    # --- hooks and notifications: dispatch thread, never waits --------------------------------

    def on_custommsg(self, peer: str, payload_hex: str) -> None:
        self.router.on_custommsg(peer, payload_hex)

    def on_openchannel(self, peer: str, funding_msat: int, push_msat: int) -> dict[str, Any]:
        decision = self.opens.decide(peer, funding_msat, push_msat)
        if decision.get("mindepth") == 0:
            # A factory slot's zero-conf channel opens now: until a refresh maps it, the hook
            # maps an HTLC on a channel it does not know on the spot (it takes none unbound).
            self.guards.ceremony_started()
        return decision

    def htlc_verdict(self, htlc: dict[str, Any], onion: dict[str, Any]) -> dict[str, Any]:
        """Until start-up has built the guards, an HTLC (lightningd replays them at start) is
        held, up to READY_WAIT seconds, then failed: never let one through unchecked."""
        if not self.ready.wait(READY_WAIT):
            log.warning("failing an HTLC: start-up has not built the factory HTLC rules yet")
            return {"result": "fail", "failure_message": TEMPORARY_NODE_FAILURE}
        return self.guards.htlc_verdict(htlc, onion)

    def on_htlc(self, htlc: dict[str, Any], onion: dict[str, Any], request: Reply) -> None:
        """The async `htlc_accepted` hook: the HTLC rules first; then an HTLC paying one of our
        quotes is held (answered by the worker once its sale is over); any other is answered
        here and now."""
        if self.ready.wait(READY_WAIT) and self.update_client.swaps.hold(htlc, request):
            return  # our own update's payment to ourselves: held until the new state is ours
        verdict = self.htlc_verdict(htlc, onion)
        if verdict.get("result") != "continue" or not self.payments.claim(htlc, onion, request):
            request.set_result(verdict)

    def invoice_params(self, params: Any) -> Any | None:
        self.ready.wait(READY_WAIT)  # the largest EWT is known once start-up built the guards
        return self.guards.invoice_params(params)

    def on_connect(self, peer: str) -> None:
        self.worker.submit(lambda: self.peers.greet(peer))

    def on_disconnect(self, peer: str) -> None:
        self.peers.disconnected(peer)

    def on_channel_change(self) -> None:
        """Dispatch thread. One refresh queued at a time: a creation changes 3 states per
        channel, and each refresh lists every channel (O(n) each, O(n^2) a creation); one that
        starts after the last change sees it."""
        with self._refresh_lock:
            if self._refresh_queued:
                return
            self._refresh_queued = True
        self.worker.submit(self._refresh_guards)

    def _refresh_guards(self) -> None:
        with self._refresh_lock:
            self._refresh_queued = False
        self.guards.refresh()

    def on_block(self, height: int) -> None:
        self.node.raise_height(height)
        self.chain.submit(lambda: self._chain_block(height))

    def _chain_block(self, height: int) -> None:
        """Chain thread: this block's on-chain duties, then the worker's jobs that read what the
        scan found (separate jobs: one failing does not stop the others)."""
        try:
            self.onchain.on_block(height)
        finally:
            self.worker.submit(lambda: self.lsp.on_block(height))
            self.worker.submit(lambda: self.wind_down.on_block(height))
            self.worker.submit(lambda: self.sales.on_block(height))
            self.worker.submit(self.mover.on_block)
            self.worker.submit(lambda: self.update_lsp.on_block(height))
            self.worker.submit(self.update_client.on_block)
            self.worker.submit(self.guards.refresh)
            self.worker.submit(lambda: self.records.prune(height))
