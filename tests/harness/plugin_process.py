"""One plugin process, driven the way lightningd drives it: JSON-RPC 2.0 objects on its stdin,
responses and notifications read from its stdout by a reader thread, stderr captured line by line.

Requests return a `concurrent.futures.Future` resolved with the whole response object
(`{"jsonrpc", "id", "result"|"error"}`); when the process goes away every pending future fails with
`PluginDied`, as lightningd answers pending requests with "Plugin terminated before replying".
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import PluginDied
from .jsonstream import JsonObjectSplitter, JsonStreamError

LIGHTNINGD_VERSION = "v26.06.6"
# lightningd's log_level_parse (plus the aliases pyln-client uses: "warn", "error").
PLUGIN_LOG_LEVELS = {"trace", "debug", "info", "unusual", "warn", "broken", "error"}

# Every process this module started, so an interpreter exit never leaves one behind.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def kill_leftovers(pids: Sequence[int] | None = None) -> list[int]:
    """SIGKILL every plugin process still running (of `pids` only, when given); returns their
    pids."""
    with _LIVE_LOCK:
        procs = [(pid, p) for pid, p in _LIVE.items() if pids is None or pid in pids]
    killed = []
    for pid, proc in procs:
        if proc.poll() is None:
            proc.kill()
            killed.append(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        with _LIVE_LOCK:
            _LIVE.pop(pid, None)
    return killed


atexit.register(kill_leftovers)


@dataclass(frozen=True)
class LogLine:
    time: float
    source: str  # "plugin" (log notification), "stderr", or "harness"
    level: str
    message: str

    def __str__(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{stamp}.{int(self.time * 1000) % 1000:03d} {self.source:7s} {self.level:7s} {self.message}"


class ProtocolViolation(Exception):
    """What lightningd would kill the plugin for."""


class PluginProcess:
    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str,
        cwd: Path,
        env: Mapping[str, str],
        on_log: Callable[[LogLine], None],
        on_notification: Callable[[str, Any], None],
        on_exit: Callable[[int | None, str | None], None],
    ) -> None:
        self.cmd = list(cmd)
        self.name = name
        self.cwd = cwd
        self.env = dict(env)
        self._on_log = on_log
        self._on_notification = on_notification
        self._on_exit = on_exit
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[str, Future[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self.exited = threading.Event()
        self.protocol_error: str | None = None
        # request id -> list of "message"/"progress" notifications the plugin sent about it
        self.request_notifications: dict[str, list[dict[str, Any]]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["LIGHTNINGD_PLUGIN"] = "1"
        env["LIGHTNINGD_VERSION"] = LIGHTNINGD_VERSION
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=env,
            start_new_session=True,  # a Ctrl-C of pytest reaches us, not the plugin directly
        )
        with _LIVE_LOCK:
            _LIVE[self.proc.pid] = self.proc
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for target, stream, tag in (
            (self._read_stdout, self.proc.stdout, "stdout"),
            (self._read_stderr, self.proc.stderr, "stderr"),
            (self._write_stdin, self.proc.stdin, "stdin"),
        ):
            t = threading.Thread(
                target=target, args=(stream,), name=f"{self.name}-{tag}", daemon=True
            )
            t.start()
            self._threads.append(t)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.exited.is_set() and self.proc.poll() is None

    def close_stdin(self) -> None:
        """Close the plugin's stdin once everything queued before has been written."""
        self._out.put(None)

    def send_signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        """Wait for the process and the reader threads; returns the exit code (None if still
        running after `timeout`)."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        with _LIVE_LOCK:
            _LIVE.pop(self.proc.pid, None)
        return code

    # -- sending ---------------------------------------------------------------------------
    def _write(self, obj: dict[str, Any]) -> None:
        """Queue for the writer thread: a caller never blocks on a full pipe (lightningd's io
        loop does not either), so a plugin busy in an RPC call cannot deadlock the harness."""
        self._write_bytes((json.dumps(obj, ensure_ascii=False) + "\n\n").encode())

    def _write_bytes(self, data: bytes) -> None:
        if self.proc is None:
            raise PluginDied("plugin not started", node=self.name)
        if self.exited.is_set():
            raise PluginDied("plugin is not running", node=self.name)
        self._out.put(data)

    def _write_stdin(self, stream: BinaryIO) -> None:
        broken = False
        while True:
            data = self._out.get()
            if data is None or self.exited.is_set():
                break
            if broken:
                continue
            try:
                stream.write(data)
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                broken = True  # the stdout reader will see the process go
        with contextlib.suppress(OSError):
            stream.close()

    def request(
        self, method: str, params: Any, *, req_id: str | None = None
    ) -> Future[dict[str, Any]]:
        """Send a request; the future resolves with the response object."""
        req_id = req_id or f"cln:{method}#{next(self._ids)}"
        data = (
            json.dumps(
                {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params},
                ensure_ascii=False,
            )
            + "\n\n"
        ).encode()
        return self._send_request(method, req_id, data)

    def request_raw(self, method: str, params_text: str) -> Future[dict[str, Any]]:
        """A request whose params are sent as given, not as JSON: lightningd copies the tokens
        it read (which need not be JSON) into some hook payloads, `rpc_command` among them."""
        req_id = f"cln:{method}#{next(self._ids)}"
        head = json.dumps({"jsonrpc": "2.0", "method": method, "id": req_id})[:-1]
        return self._send_request(
            method, req_id, (head + ', "params": ' + params_text + "}\n\n").encode()
        )

    def _send_request(self, method: str, req_id: str, data: bytes) -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            if self.exited.is_set():
                fut.set_exception(PluginDied(f"plugin is not running ({method})", node=self.name))
                return fut
            self._pending[req_id] = (method, fut)
        try:
            self._write_bytes(data)
        except PluginDied as e:
            with self._lock:
                self._pending.pop(req_id, None)
            if not fut.done():
                fut.set_exception(e)
        return fut

    def notify(self, method: str, params: Any) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    # -- reading ---------------------------------------------------------------------------
    def _read_stdout(self, stream: BinaryIO) -> None:
        splitter = JsonObjectSplitter()
        reason: str | None = None
        try:
            while True:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                try:
                    objs = splitter.feed(chunk)
                except JsonStreamError as e:
                    raise ProtocolViolation(str(e)) from e
                for obj in objs:
                    self._handle(obj)
        except ProtocolViolation as e:
            reason = f"protocol violation: {e}"
            self.protocol_error = str(e)
            self.kill()
        except OSError as e:
            reason = f"stdout read failed: {e}"
        finally:
            self._finish(reason)

    def _handle(self, obj: dict[str, Any]) -> None:
        if obj.get("jsonrpc") != "2.0":
            raise ProtocolViolation(
                f'JSON-RPC message does not contain "jsonrpc": "2.0": {obj!r:.300}'
            )
        if "id" in obj:
            if "method" in obj:
                raise ProtocolViolation(f"plugin sent a request on stdout: {obj!r:.300}")
            req_id = obj["id"]
            with self._lock:
                entry = (
                    self._pending.pop(str(req_id), None) if isinstance(req_id, (str, int)) else None
                )
            if entry is None:
                self._on_log(
                    LogLine(
                        time.time(),
                        "harness",
                        "unusual",
                        f"response to unknown request id {req_id!r}",
                    )
                )
                return
            _, fut = entry
            if not fut.done():
                fut.set_result(obj)
            return
        method = obj.get("method")
        params = obj.get("params")
        if not isinstance(method, str) or "params" not in obj:
            raise ProtocolViolation(f'notification missing "method" or "params": {obj!r:.300}')
        if method == "log":
            if not isinstance(params, dict) or not isinstance(params.get("message"), str):
                raise ProtocolViolation('log notification without a string "message"')
            level = params.get("level", "info")
            if level not in PLUGIN_LOG_LEVELS:
                raise ProtocolViolation(f"Unknown log-level {level!r}")
            self._on_log(LogLine(time.time(), "plugin", str(level), params["message"]))
            return
        if method in ("message", "progress"):
            if not isinstance(params, dict) or "id" not in params:
                raise ProtocolViolation(f'JSON-RPC notify "id"-field is not present: {obj!r:.300}')
            with self._lock:
                self.request_notifications.setdefault(str(params["id"]), []).append(obj)
            return
        self._on_notification(method, params)

    def _read_stderr(self, stream: BinaryIO) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                self._on_log(LogLine(time.time(), "stderr", "stderr", line))
        except (OSError, ValueError):
            pass

    def _finish(self, reason: str | None) -> None:
        code: int | None = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
        # let stderr drain so the death report can include the traceback
        for t in self._threads:
            if t is not threading.current_thread() and t.name.endswith("stderr"):
                t.join(timeout=2)
        with self._lock:
            self.exited.set()
            pending = list(self._pending.items())
            self._pending.clear()
        self._out.put(None)  # release the writer thread
        # the owner learns of the exit before any waiter does
        self._on_exit(code, reason)
        for req_id, (method, fut) in pending:
            if not fut.done():
                fut.set_exception(
                    PluginDied(
                        f"Plugin terminated before replying to RPC call ({method}, id {req_id}); "
                        f"exit code {code}",
                        node=self.name,
                    )
                )
