"""A real `bitcoind`: a small JSON-RPC client and a throwaway regtest node.

`BitcoindRPC.call(method, *params)` talks to any bitcoind over HTTP JSON-RPC with the standard
library only. Amounts in results are `decimal.Decimal` (JSON numbers are parsed as Decimal, never
float); `Decimal` parameters are sent as JSON numbers. A refusal by bitcoind raises
`BitcoindRPCError` (a `ChainError`) carrying bitcoind's own error code and message; a node that
cannot be reached raises `BitcoindConnectionError` (also a `ChainError`).

`BitcoindProcess` starts `bitcoind -regtest` on free loopback ports with a temporary datadir and
random RPC credentials, waits until it answers, loads a wallet, and always stops it (`stop` RPC,
then SIGTERM, then SIGKILL), as a context manager or with `start()`/`stop()`.

`find_bitcoind()` locates the binary: `$BITCOIND`, else the bin directory that `make bitcoind`
writes to `.venv/bitcoind-path`, else `PATH`, else the build cache of `contrib/bitcoind/build.sh`;
each candidate must report version 28 or newer.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final
from urllib.parse import quote

from superscalar_plugin.chain.find_bitcoind import (
    MIN_BITCOIND_MAJOR,
    BitcoindNotFound,
    bitcoind_version,
    find_bitcoind,
)
from superscalar_plugin.engine.errors import ChainError

__all__ = [
    "MIN_BITCOIND_MAJOR",
    "BitcoindConnectionError",
    "BitcoindNotFound",
    "BitcoindProcess",
    "BitcoindRPC",
    "BitcoindRPCError",
    "BitcoindStartError",
    "bitcoind_version",
    "find_bitcoind",
    "free_port",
    "kill_leftovers",
    "live_pids",
    "pid_alive",
    "regtest_node",
]

RPC_IN_WARMUP: Final = -28
RPC_WALLET_NOT_FOUND: Final = -18
RPC_WALLET_ALREADY_LOADED: Final = -35
RPC_WALLET_ALREADY_EXISTS: Final = -4


class BitcoindRPCError(ChainError):
    """bitcoind answered a call with an error: `code` and `message` are bitcoind's own."""

    def __init__(self, method: str, code: int, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"bitcoind {method}: {message} (code {code})")


class BitcoindConnectionError(ChainError):
    """bitcoind could not be reached, or answered something that is not JSON-RPC."""


class BitcoindStartError(ChainError):
    """bitcoind exited or did not answer in time while starting; the message has its log tail."""


# --------------------------------------------------------------------------------------------
# JSON-RPC client
# --------------------------------------------------------------------------------------------


def _to_json(value: object) -> object:
    """Decimal -> float for json.dumps (8 decimal places survive the round trip)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot send {type(value).__name__} to bitcoind")


class BitcoindRPC:
    """JSON-RPC over HTTP with basic auth. Thread-safe: every call opens its own connection."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        wallet: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = url.rstrip("/")
        self.user = user
        self.password = password
        self.wallet_name = wallet
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._next_id = 0

    @property
    def url(self) -> str:
        if self.wallet_name is None:
            return self.base_url
        return f"{self.base_url}/wallet/{quote(self.wallet_name, safe='')}"

    def wallet(self, name: str) -> BitcoindRPC:
        """The same node, with calls routed to wallet `name`."""
        return BitcoindRPC(
            self.base_url, self.user, self.password, wallet=name, timeout=self.timeout
        )

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call `method` with positional `params`; returns the result, raises on any error."""
        return self._request(method, list(params), timeout)

    def call_named(self, method: str, timeout: float | None = None, **params: Any) -> Any:
        """Call `method` with named parameters (bitcoind's argument names)."""
        return self._request(method, params, timeout)

    def _request(
        self, method: str, params: list[Any] | dict[str, Any], timeout: float | None
    ) -> Any:
        self._next_id += 1
        body = json.dumps(
            {"jsonrpc": "1.0", "id": self._next_id, "method": method, "params": params},
            default=_to_json,
        ).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": self._auth},
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout if timeout is None else timeout
            ) as response:
                raw: bytes = response.read()
        except urllib.error.HTTPError as exc:
            # bitcoind answers JSON-RPC 1.0 errors with HTTP 404/500 and a JSON body.
            raw = exc.read()
            if exc.code in (401, 403):
                raise BitcoindConnectionError(
                    f"bitcoind {method}: HTTP {exc.code} (wrong RPC user or password?)"
                ) from exc
            if not raw:
                raise BitcoindConnectionError(f"bitcoind {method}: HTTP {exc.code}") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise BitcoindConnectionError(
                f"bitcoind {method}: cannot reach {self.base_url}: {exc}"
            ) from exc
        try:
            reply = json.loads(raw, parse_float=Decimal)
        except ValueError as exc:
            raise BitcoindConnectionError(
                f"bitcoind {method}: reply is not JSON: {raw[:200]!r}"
            ) from exc
        if not isinstance(reply, dict):
            raise BitcoindConnectionError(f"bitcoind {method}: reply is not an object")
        error = reply.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise BitcoindRPCError(
                    method, int(error.get("code", 0)), str(error.get("message", ""))
                )
            raise BitcoindRPCError(method, 0, str(error))
        return reply.get("result")


# --------------------------------------------------------------------------------------------
# A throwaway regtest node
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


_LIVE: dict[int, subprocess.Popen[bytes]] = {}
"""Every bitcoind this module started and has not yet reaped, by pid."""


def live_pids() -> list[int]:
    """Pids of bitcoind processes started here that have not been stopped yet."""
    return [pid for pid, proc in _LIVE.items() if proc.poll() is None]


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies included only until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def kill_leftovers() -> None:
    """Kill every bitcoind started here that is still running (also run at interpreter exit)."""
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to bitcoind if the Python process dies (even -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass(frozen=True)
class _Ports:
    rpc: int
    p2p: int


class BitcoindProcess:
    """`bitcoind -regtest` on free loopback ports, a temporary datadir and one loaded wallet.

    Use as `with BitcoindProcess() as node:` or call `start()` and (always) `stop()`.
    `node.rpc` talks to the node, `node.wallet` to the wallet (when `wallet` is not None).
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        datadir: str | os.PathLike[str] | None = None,
        wallet: str | None = "superscalar",
        txindex: bool = False,
        fallbackfee: Decimal | str = "0.0002",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        keep_datadir: bool = False,
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_bitcoind()
        self.wallet_name = wallet
        self.txindex = txindex
        self.fallbackfee = str(fallbackfee)
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.keep_datadir = keep_datadir
        self._own_datadir = datadir is None
        self._datadir = Path(datadir) if datadir is not None else None
        self.rpc_user = "superscalar"
        self.rpc_password = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: _Ports | None = None
        self._rpc: BitcoindRPC | None = None
        self._wallet: BitcoindRPC | None = None
        self._stderr_file: IO[bytes] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        if self._datadir is None:
            raise ChainError("bitcoind has no datadir before start()")
        return self._datadir

    @property
    def debug_log(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ChainError("bitcoind is not running")
        return self._proc.pid

    @property
    def rpc_port(self) -> int:
        if self._ports is None:
            raise ChainError("bitcoind is not running")
        return self._ports.rpc

    @property
    def p2p_port(self) -> int:
        if self._ports is None:
            raise ChainError("bitcoind is not running")
        return self._ports.p2p

    @property
    def rpc(self) -> BitcoindRPC:
        """Node-level RPC (no wallet in the URL)."""
        if self._rpc is None:
            raise ChainError("bitcoind is not running")
        return self._rpc

    @property
    def wallet(self) -> BitcoindRPC:
        """RPC routed to the loaded wallet."""
        if self._wallet is None:
            raise ChainError("bitcoind has no wallet loaded")
        return self._wallet

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def bitcoin_cli(self) -> Path:
        """bitcoin-cli next to the bitcoind binary."""
        return self.binary.with_name("bitcoin-cli")

    def cli_args(self) -> list[str]:
        """bitcoin-cli arguments that reach this node (append a method and its params)."""
        return [
            str(self.bitcoin_cli),
            "-regtest",
            f"-datadir={self.datadir}",
            f"-rpcport={self.rpc_port}",
            "-rpcconnect=127.0.0.1",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def _args(self, ports: _Ports) -> list[str]:
        args = [
            str(self.binary),
            "-regtest",
            f"-datadir={self.datadir}",
            "-server=1",
            "-daemon=0",
            "-printtoconsole=0",
            f"-rpcport={ports.rpc}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
            f"-port={ports.p2p}",
            f"-bind=127.0.0.1:{ports.p2p}",
            "-listen=1",
            "-listenonion=0",
            "-discover=0",
            "-dnsseed=0",
            "-fixedseeds=0",
            "-natpmp=0",
            "-acceptnonstdtxn=0",  # relay policy as on mainnet: what these tests are for
            f"-fallbackfee={self.fallbackfee}",
            f"-txindex={int(self.txindex)}",
            "-debug=mempool",
            "-debug=rpc",
        ]
        return args + self.extra_args

    def start(self) -> BitcoindProcess:
        """Start bitcoind, wait until it answers RPC, create/load the wallet. Idempotent."""
        if self.running:
            return self
        if self._datadir is None:
            self._datadir = Path(tempfile.mkdtemp(prefix="superscalar-bitcoind-"))
        self.datadir.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(3):
                ports = _Ports(rpc=free_port(), p2p=free_port())
                if self._launch(ports, last_attempt=attempt == 2):
                    break
            if self.wallet_name is not None:
                self._wallet = self._load_wallet(self.wallet_name)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, ports: _Ports, *, last_attempt: bool) -> bool:
        """Spawn bitcoind and wait for RPC. False if it lost a port race (retry with new ports)."""
        stderr_path = self.datadir / "stderr.log"
        self._stderr_file = stderr_path.open("ab")
        proc = subprocess.Popen(
            self._args(ports),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _LIVE[proc.pid] = proc
        self._proc = proc
        self._ports = ports
        self._rpc = BitcoindRPC(
            f"http://127.0.0.1:{ports.rpc}", self.rpc_user, self.rpc_password, timeout=30.0
        )
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while True:
            if proc.poll() is not None:
                stderr = _tail(stderr_path, 20)
                self._reap()
                if not last_attempt and "bind" in stderr.lower():
                    return False  # another process took a port between free_port() and bind
                raise BitcoindStartError(
                    f"bitcoind exited with code {proc.returncode} while starting "
                    f"({' '.join(self._args(ports))})\n"
                    f"--- stderr ---\n{stderr}\n--- tail of {self.debug_log} ---\n"
                    f"{_tail(self.debug_log)}"
                )
            try:
                self._rpc.call("getblockchaininfo", timeout=5.0)
                return True
            except BitcoindRPCError as exc:
                if exc.code != RPC_IN_WARMUP:
                    raise
            except BitcoindConnectionError:
                pass
            if time.monotonic() > deadline:
                raise BitcoindStartError(
                    f"bitcoind (pid {proc.pid}) did not answer RPC on port {ports.rpc} within "
                    f"{self.startup_timeout:.0f}s\n--- tail of {self.debug_log} ---\n"
                    f"{_tail(self.debug_log)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _load_wallet(self, name: str) -> BitcoindRPC:
        try:
            self.rpc.call("loadwallet", name)
        except BitcoindRPCError as exc:
            if exc.code == RPC_WALLET_NOT_FOUND:
                self.rpc.call("createwallet", name)
            elif exc.code != RPC_WALLET_ALREADY_LOADED:
                raise
        return self.rpc.wallet(name)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            _LIVE.pop(self._proc.pid, None)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def stop(self) -> None:
        """Stop bitcoind: `stop` RPC, then SIGTERM, then SIGKILL. Never raises; idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None and self._rpc is not None:
                with contextlib.suppress(ChainError):
                    self._rpc.call("stop", timeout=10.0)
            for escalate in (None, proc.terminate, proc.kill):
                if escalate is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        escalate()
                try:
                    proc.wait(timeout=self.stop_timeout if escalate is None else 10.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self._reap()
        self._rpc = None
        self._wallet = None
        self._ports = None
        if self._own_datadir and not self.keep_datadir and self._datadir is not None:
            shutil.rmtree(self._datadir, ignore_errors=True)
            self._datadir = None

    def __enter__(self) -> BitcoindProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers for tests and demos -----------------------------------------------------------

    def new_address(self, address_type: str = "bech32m") -> str:
        """A fresh address of the loaded wallet."""
        return str(self.wallet.call("getnewaddress", "", address_type))

    def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        """Mine `blocks` blocks paying `address` (default: a new wallet address); their hashes."""
        target = address if address is not None else self.new_address()
        hashes = self.rpc.call("generatetoaddress", blocks, target)
        return [str(h) for h in hashes]

    def height(self) -> int:
        return int(self.rpc.call("getblockcount"))


@contextlib.contextmanager
def regtest_node(**kwargs: Any) -> Iterator[BitcoindProcess]:
    """`with regtest_node(txindex=True) as node:` — a started BitcoindProcess, always stopped."""
    node = BitcoindProcess(**kwargs)
    try:
        yield node.start()
    finally:
        node.stop()
