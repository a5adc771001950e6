"""The `lightning-rpc` unix socket of a fake node.

pyln's `LightningRpc` opens a connection per call, writes one JSON request with no terminator
(optionally preceded by a `notifications` opt-in), and reads JSON objects each followed by a blank
line. The server parses the stream incrementally and answers each request on the connection it
came on; every connection is served by its own thread, so an RPC that blocks (waitblockheight,
fundchannel_start waiting for the peer) never blocks another.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .jsonstream import JsonObjectSplitter, JsonStreamError

Dispatch = Callable[[dict[str, Any]], dict[str, Any] | None]


def _bind_unix(sock: socket.socket, path: Path) -> None:
    """Bind, working around the ~108-byte sun_path limit through /proc/self/fd."""
    if len(os.fsencode(str(path))) < 100:
        sock.bind(str(path))
        return
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        sock.bind(f"/proc/self/fd/{dirfd}/{path.name}")
    finally:
        os.close(dirfd)


class RpcServer:
    def __init__(self, path: Path, dispatch: Dispatch, *, name: str) -> None:
        self.path = path
        self.dispatch = dispatch
        self.name = name
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _bind_unix(sock, self.path)
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-rpc", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock:
            self._sock.close()
            self._sock = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"{self.name}-rpc-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        splitter = JsonObjectSplitter()
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                try:
                    requests = splitter.feed(data)
                except JsonStreamError as e:
                    self._send(
                        conn,
                        {
                            "jsonrpc": "2.0",
                            "id": None,
                            "error": {"code": -32700, "message": f"Parse error: {e}"},
                        },
                    )
                    break
                for req in requests:
                    resp = self.dispatch(req)
                    if resp is not None:
                        self._send(conn, resp)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    @staticmethod
    def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps(obj, ensure_ascii=False) + "\n\n").encode())
