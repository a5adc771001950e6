"""The worker thread and the small contracts with lightningd (`Rpc`, `Reply`).

Owns: a job queue and the thread that runs its jobs in order (the service has two: the worker
and the chain thread). May call: nothing of
the plugin; roles hand it closures. pyln's dispatch thread only ever calls `submit` (and the
hook-side methods the roles mark as such); see `service` for which thread runs what.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ...engine.errors import CeremonyError, ChainError, SuperscalarError

log = logging.getLogger("superscalar")

IDLE_SECONDS = 0.5  # how often the worker runs its tick (ceremony deadlines), busy or idle


class RpcFailed(SuperscalarError):
    """lightningd refused an RPC the service made."""

    rpc_code = 1410


class PeerUnreachable(CeremonyError):
    """A message could not be handed to a peer (disconnected, unknown)."""


class Rpc(Protocol):
    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any: ...


class Reply(Protocol):
    """An RPC request still waiting for its answer (pyln's Request)."""

    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exc: Exception) -> None: ...


class Worker:
    """One thread, one queue: message in -> persist -> messages out, strictly in order."""

    def __init__(self, tick: Callable[[], None], name: str = "superscalar-worker") -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stopping = threading.Event()

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)

    def shutdown(self, timeout: float) -> None:
        """lightningd is stopping: let the job in hand finish (a failure now is expected, the RPC
        is closing), run no other, and wait for the thread up to `timeout` seconds."""
        self.stopping.set()
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def answer(self, reply: Reply, job: Callable[[], Any]) -> None:
        """Answer an RPC from the worker (it may call lightningd; the dispatch thread may not)."""
        self.submit(lambda: answer_now(reply, job, "RPC failed"))

    def _run(self) -> None:
        next_tick = time.monotonic() + IDLE_SECONDS
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                job = self._tick
            if job is None or self.stopping.is_set():
                return
            self._run_job(job)
            # The tick (ceremony deadlines) is due every IDLE_SECONDS whatever arrives: a peer
            # sending a message faster than that must not hold a creation forever.
            if job is self._tick or time.monotonic() >= next_tick:
                if job is not self._tick and not self.stopping.is_set():
                    self._run_job(self._tick)
                next_tick = time.monotonic() + IDLE_SECONDS

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
        except ChainError as e:  # lightningd could not answer: nothing decided, tried again
            log.warning("superscalar worker job waits: %s", e)
        except Exception:  # the worker must survive anything a peer or lightningd does
            if self.stopping.is_set():
                log.debug("job interrupted by shutdown", exc_info=True)
            else:
                log.exception("superscalar worker job failed")


def answer_now(reply: Reply, job: Callable[[], Any], what: str) -> None:
    """Run `job` and answer `reply` with its result or its error (ours keep their RPC code)."""
    try:
        result = job()
    except Exception as e:
        fail(reply, e, what)
        return
    reply.set_result(result)


def fail(reply: Reply, e: Exception, what: str) -> None:
    """Answer with our error and its RPC code; anything else is our bug: logged, then answered."""
    if not isinstance(e, SuperscalarError):
        log.exception(what)
        e = SuperscalarError(f"internal error: {e!r}")
    reply.set_exception(rpc_exception(e))


def why(e: Exception) -> str:
    """lightningd's own message for a failed RPC, else the exception's text."""
    err = getattr(e, "error", None)
    if isinstance(err, dict) and "message" in err:
        return str(err["message"])
    return str(e)


def rpc_exception(e: SuperscalarError) -> Exception:
    from .rpcerror import make_rpc_exception

    return make_rpc_exception(str(e), e.rpc_code)
