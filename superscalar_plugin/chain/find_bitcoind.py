"""Finding a `bitcoind` v28+ for the tests: `$BITCOIND`, else the bin directory that `make bitcoind`
writes to `.venv/bitcoind-path`, else `PATH`, else the build cache of `contrib/bitcoind/build.sh`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from superscalar_plugin.engine.errors import ChainError

MIN_BITCOIND_MAJOR: Final = 28
"""Oldest Bitcoin Core major version accepted (TRUC, package relay and P2A anchors)."""

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
PATH_FILE: Final = REPO_ROOT / ".venv" / "bitcoind-path"
"""Written by `make bitcoind`: one line, the directory holding bitcoind and bitcoin-cli."""

HOW_TO_GET: Final = (
    "run `make bitcoind` (builds Bitcoin Core once into ~/.cache/superscalar, 13-20 minutes on 2 "
    f"cores), put bitcoind v{MIN_BITCOIND_MAJOR}+ on PATH, or set BITCOIND=/path/to/bitcoind"
)


class BitcoindNotFound(ChainError):
    """No usable bitcoind (v28+) was found; the message says where it looked and what to do."""


def bitcoind_version(binary: str | os.PathLike[str]) -> tuple[int, str]:
    """(major version, first line of `-version`) of a bitcoind or bitcoin-cli binary."""
    try:
        out = subprocess.run(
            [os.fspath(binary), "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BitcoindNotFound(f"{binary}: cannot run `-version`: {exc}") from exc
    first = out.splitlines()[0] if out else ""
    match = re.search(r"version v?(\d+)\.", first)
    if match is None:
        raise BitcoindNotFound(f"{binary}: unrecognised `-version` output {first!r}")
    return int(match.group(1)), first


def _cache_candidates() -> list[Path]:
    root = os.environ.get("SUPERSCALAR_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = os.path.join(xdg, "superscalar")
    return sorted(Path(root).glob("bitcoind-*/bin/bitcoind"), reverse=True)


def find_bitcoind() -> Path:
    """Path of a bitcoind v28+: $BITCOIND, `make bitcoind`'s path file, PATH, then the build cache.

    Raises BitcoindNotFound saying what was tried and how to get one. An explicit $BITCOIND that
    is missing or too old is an error, never silently replaced by another binary.
    """
    explicit = os.environ.get("BITCOIND")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BitcoindNotFound(f"BITCOIND={explicit} is not an executable file; {HOW_TO_GET}")
        major, line = bitcoind_version(path)
        if major < MIN_BITCOIND_MAJOR:
            raise BitcoindNotFound(
                f"BITCOIND={explicit} is {line!r}; version {MIN_BITCOIND_MAJOR}+ is needed; "
                f"{HOW_TO_GET}"
            )
        return path

    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if PATH_FILE.is_file():
        bindir = PATH_FILE.read_text().strip()
        if bindir:
            candidates.append((f"{PATH_FILE} ({bindir})", Path(bindir) / "bitcoind"))
    else:
        tried.append(f"{PATH_FILE}: absent")
    on_path = shutil.which("bitcoind")
    if on_path:
        candidates.append(("PATH", Path(on_path)))
    else:
        tried.append("PATH: no bitcoind")
    candidates.extend(("build cache", p) for p in _cache_candidates())

    for origin, path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            tried.append(f"{origin}: {path} is not an executable file")
            continue
        try:
            major, line = bitcoind_version(path)
        except BitcoindNotFound as exc:
            tried.append(f"{origin}: {exc}")
            continue
        if major >= MIN_BITCOIND_MAJOR:
            return path
        tried.append(f"{origin}: {path} is {line!r}, older than v{MIN_BITCOIND_MAJOR}")
    raise BitcoindNotFound(
        f"no bitcoind v{MIN_BITCOIND_MAJOR}+ found ({'; '.join(tried)}); {HOW_TO_GET}"
    )
