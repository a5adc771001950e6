"""CPU seconds and resident memory of the processes of a real-node benchmark, from /proc."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, rest = text.rsplit(")", 1)
    fields = rest.split()
    return head.split("(", 1)[1], int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def plugin_pid(lightningd_pid: int) -> int:
    """The superscalar plugin started by this lightningd."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st and st[1] == lightningd_pid and "superscalar" in _cmdline(int(entry.name)):
                return int(entry.name)
    raise LookupError(f"no superscalar plugin under lightningd {lightningd_pid}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_by_kind(lsp_pid: int, client_pids: Sequence[int]) -> dict[str, float]:
    """CPU seconds so far: the LSP's lightningd, its plugin, its other children (channeld,
    connectd, hsmd, built-in plugins...), and the same summed over the client nodes."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    out = dict.fromkeys(
        (
            "lsp_lightningd",
            "lsp_plugin",
            "lsp_subdaemons",
            "clients_lightningd",
            "clients_plugin",
            "clients_subdaemons",
        ),
        0.0,
    )
    roots = {lsp_pid: "lsp", **{p: "clients" for p in client_pids}}
    for pid, (_name, ppid, cpu) in stats.items():
        if pid in roots:
            out[f"{roots[pid]}_lightningd"] += cpu
        elif ppid in roots:
            kind = "plugin" if "superscalar" in _cmdline(pid) else "subdaemons"
            out[f"{roots[ppid]}_{kind}"] += cpu
    return {k: round(v, 2) for k, v in out.items()}


def box_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (every core, every process: what
    the nodes' bitcoind polling takes too)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICK
