"""Shared by the benchmark's processes: event loop choice, file limits, /proc readings."""

from __future__ import annotations

import asyncio
import os
import resource
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

__all__ = [
    "have_uvloop",
    "run",
    "raise_nofile",
    "cpu_seconds",
    "rss_bytes",
    "status_bytes",
    "machine_cpu",
    "pg_backend_pids",
    "pids_cpu",
    "cpu_delta",
    "create_cost",
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


def pg_backend_pids(dsn: str, database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` now (pg_stat_activity), read over a
    connection of its own (which is left out)."""
    import asyncpg

    async def read() -> list[int]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await conn.close()
        return [int(r[0]) for r in rows]

    return list(asyncio.run(read()))


def pids_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still alive, by pid (see :func:`cpu_seconds`)."""
    found: dict[int, float] = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone (a pooled connection closed), or not readable
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings of :func:`pids_cpu`: a process born in between counts
    whole, one that ended in between is lost (rare: the pool keeps its connections)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def create_cost(folder: Path, files: int = 200) -> float:
    """Kernel CPU, in us, this thread spends creating and writing one small file in a new
    folder under ``folder`` (the files are left there). A Maildir delivery creates one file per
    message, and what that costs depends on the file system's state: ext4 without a journal
    passes over each inode freed in the last minute (six while its inode table block is
    unwritten) one by one, so after thousands of files were deleted nearby a file costs ten
    times as much (docs/performance.md, "SQLite's reset with its mail")."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=folder))
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    for k in range(files):
        fd = os.open(probe / str(k), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 3000)  # about a reset mail's size
        finally:
            os.close(fd)
    return (resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before) / files * 1e6
