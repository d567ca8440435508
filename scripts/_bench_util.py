"""Shared by the benchmark's processes: event loop choice, file limits, /proc readings."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Coroutine
from typing import Any

__all__ = [
    "have_uvloop",
    "run",
    "raise_nofile",
    "cpu_seconds",
    "rss_bytes",
    "status_bytes",
    "machine_cpu",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def have_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def run(coro: Coroutine[Any, Any, Any], loop: str) -> Any:
    """Run ``coro`` on the named event loop: "asyncio" or "uvloop"."""
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        return uvloop.run(coro)
    return asyncio.run(coro)


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/PID/status."""
    return status_bytes(pid, "VmRSS")


def status_bytes(pid: int, field: str) -> int:
    """A size field of /proc/PID/status (VmRSS, VmHWM: the most ever resident, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat: what every
    process used, and what the hypervisor gave to someone else."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK
