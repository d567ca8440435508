"""Flood benchmark: self-service ResetPassword from many connections against a default server,
measuring the server's memory and how long a legitimate login waits meanwhile (issue 12).

    python -m scripts.bench_flood [--seconds 10] [--connections 8] [--rate 500]
                                  [--loop asyncio|uvloop]

All on 127.0.0.1: ``oms-auth demo`` fills a fresh temporary SQLite store, the real ``oms-auth
serve`` runs with default settings (its limits included), and the load generator
(``scripts.bench_load``, its own process) sends unauthenticated ResetPassword, paced at
``--rate`` per connection (the per-connection limit is 500/s), cycling through the demo users'
names and unknown ones. Meanwhile this process samples the server's VmRSS every 0.5 s and
times one AuthenticateUser (trader1, on a fresh connection) every second. Prints figures only;
nothing is asserted. Bounded in time: the flood, at most 60 s for the server to go idle after
it, and timeouts on every step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from oms_auth.config import Settings

from ._bench_util import have_uvloop, rss_bytes, status_bytes
from .bench_procs import (
    LIMITS,
    Server,
    load,
    log,
    run_module,
    start_oms,
    stop_everything,
    wait_idle,
)

__all__ = ["main"]

USERNAME, PASSWORD = "trader1", "Heron-Trade-3141"  # from oms-auth demo
MB = 1024 * 1024
COUNTERS = ("self_service_dropped", "resets_throttled", "resets_refused", "resets_requested")


def default_limits() -> dict[str, str]:
    """The main bench raises every limit (``LIMITS``); a flood must meet the defaults."""
    defaults = Settings()
    return {k: str(getattr(defaults, k.removeprefix("OMS_AUTH_").lower())) for k in LIMITS}


def demo(db: Path) -> None:
    """A fresh store with the demo users (``oms-auth demo``)."""
    run_module("oms_auth.cli", "demo", "--db", str(db), what="oms-auth demo", timeout=120)


def peak_rss(pid: int) -> int:
    """VmHWM: the most the process ever held resident."""
    return status_bytes(pid, "VmHWM")


def metrics(server: Server) -> dict[str, int]:
    with urllib.request.urlopen(server.http + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = {name: 0 for name in COUNTERS}
    for name, value in re.findall(r"^oms_auth_(\w+) (\d+)$", text, re.MULTILINE):
        if name in found:
            found[name] = int(value)
    codes = re.findall(
        r'^oms_auth_requests_total\{function="ResetPassword",errorcode="(\d+)"\} (\d+)$',
        text,
        re.MULTILINE,
    )
    for code, n in codes:
        found[f"ResetPassword errorcode {code}"] = int(n)
    return found


async def login_once(url: str) -> tuple[float, float]:
    """(connect + AuthenticateUser, AuthenticateUser alone) in seconds, on a fresh connection."""
    from protocol.client import Client

    started = time.perf_counter()
    c = await asyncio.wait_for(Client.connect(url), 60)
    try:
        called = time.perf_counter()
        answer = await c.call(
            "AuthenticateUser", {"UserName": USERNAME, "Password": PASSWORD}, timeout=60
        )
        done = time.perf_counter()
    finally:
        await c.close()
    if not answer.o.get("Authenticated"):
        raise RuntimeError(f"{USERNAME} could not log in: {answer.o}")
    return done - started, done - called


async def idle_logins(server: Server, count: int) -> tuple[list[float], int]:
    """Logins with no flood, one after another: their latencies, and the RSS peak sampled
    every 10 ms meanwhile (one Argon2id verification holds ``argon2_memory_kib`` of memory)."""
    peak = [0]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        latencies = [(await login_once(server.url))[0] for _ in range(count)]
    finally:
        stop.set()
        await sampler
    return latencies, peak[0]


async def flood(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    names = ["trader1", "trader2", "operator", "master"] + [f"nobody{k}" for k in range(996)]
    spec = {
        "url": server.url,
        "conns": args.connections,
        "warmup": 0,
        "duration": args.seconds,
        "server_pid": server.pid,
        "name": "ResetPassword",
        "payloads": [{"UserName": n} for n in names],
        "mode": "cycle",
        "marker": '\\"result\\":true',
        "rate": args.rate * args.connections,
    }
    samples: list[tuple[float, int, bool]] = []  # (time, rss, a login was in flight)
    in_flight = [0]
    stop = asyncio.Event()

    async def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss_bytes(server.pid), in_flight[0] > 0))
            await asyncio.sleep(0.5)

    latencies: list[tuple[float, float]] = []
    failed: list[str] = []

    async def login_every_second() -> None:
        """One login at a time, started a second after the last one started (or at once when
        it took longer), so at most one Argon2id verification of ours is in flight."""
        await asyncio.sleep(0.5)  # the loader's connections are open and sending
        deadline = time.perf_counter() + args.seconds - 0.5
        while time.perf_counter() < deadline and not loader.done():
            started = time.perf_counter()
            in_flight[0] += 1
            try:
                latencies.append(await login_once(server.url))
            except Exception as exc:  # a timeout is a figure too
                failed.append(repr(exc))
            finally:
                in_flight[0] -= 1
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))

    sampler = asyncio.create_task(sample())
    loader = asyncio.create_task(asyncio.to_thread(load, spec, args.seconds + 120))
    await login_every_second()
    result = await loader
    flood_end_rss = rss_bytes(server.pid)
    stop.set()
    await sampler
    return {
        "load": result,
        "samples": samples,
        "logins": latencies,
        "logins_unanswered": len(failed),
        "flood_end_rss": flood_end_rss,
    }


def ms(values: list[float], q: str) -> str:
    """The largest (``max``) or median of ``values`` seconds, in ms."""
    if not values:
        return "n/a"
    return f"{1000 * (max(values) if q == 'max' else statistics.median(values)):.0f} ms"


def report(
    args: argparse.Namespace,
    idle: int,
    quiet: tuple[list[float], int],
    run: dict[str, Any],
    after: dict[str, Any],
) -> None:
    load_result, samples = run["load"], run["samples"]
    peak = max(rss for _, rss, _ in samples)
    no_login = [rss for _, rss, login in samples if not login] or [idle]
    quiet_logins, login_peak = quiet
    total = sorted(t for t, _ in run["logins"])
    call = sorted(c for _, c in run["logins"])

    sent = load_result["used"]
    print(
        f"Flood: {args.connections} connections x {args.rate:g}/s paced, {args.seconds:g} s, "
        "self-service ResetPassword, default settings, SQLite"
    )
    print(
        f"  requests sent          {sent} ({sent / args.seconds:.0f}/s); answered in window "
        f"{load_result['count']} ({load_result['rps']:.0f}/s), not success "
        f"{load_result['errors']}; p50 {load_result['p50_ms']:.2f} ms, "
        f"p99 {load_result['p99_ms']:.2f} ms"
    )
    print(
        f"  CPU over the flood     server {load_result['server_cpu_s']:.1f} s, load generator "
        f"{load_result['gen_cpu_s']:.1f} s, whole machine {load_result['machine_busy_s']:.1f} s "
        f"of {os.cpu_count()} cores x {args.seconds:g} s (steal {load_result['steal_s']:.1f} s)"
    )
    print(f"  idle RSS               {idle / MB:.1f} MB (after one warm-up login)")
    print(
        f"  idle login, no flood   peak RSS {login_peak / MB:.1f} MB (delta "
        f"{(login_peak - idle) / MB:+.1f} MB: the Argon2id buffer); latency max "
        f"{ms(quiet_logins, 'max')}, median {ms(quiet_logins, 'median')}"
    )
    print(f"  peak RSS (0.5 s)       {peak / MB:.1f} MB, delta {(peak - idle) / MB:+.1f} MB")
    print(
        f"  peak RSS, no login     {max(no_login) / MB:.1f} MB, delta "
        f"{(max(no_login) - idle) / MB:+.1f} MB (samples with no login in flight)"
    )
    print(f"  VmHWM after the flood  {after['hwm'] / MB:.1f} MB")
    print(
        f"  RSS at flood end       {run['flood_end_rss'] / MB:.1f} MB; after idle "
        f"{after['rss'] / MB:.1f} MB"
    )
    print(f"  server busy after      {after['busy_s']:.1f} s until idle")
    print(
        f"  logins (connect+auth)  {len(total)} answered, {run['logins_unanswered']} not; "
        f"max {ms(total, 'max')}, median {ms(total, 'median')}"
    )
    print(f"  AuthenticateUser alone max {ms(call, 'max')}, median {ms(call, 'median')}")
    for name, value in after["metrics"].items():
        print(f"  /metrics {name:<24} {value}")
    print(
        "  RSS samples (s: MB, * = a login in flight): "
        + " ".join(f"{t:.1f}:{rss / MB:.0f}{'*' if login else ''}" for t, rss, login in samples)
    )


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="oms-flood-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "oms-auth.sqlite3"
        log("creating the demo users")
        demo(db)
        server = start_oms(args.loop, tmp, db, default_limits())
        try:
            log(f"oms-auth pid {server.pid} at {server.url}")
            await login_once(server.url)  # warm up: imports, the hash pool, a session write
            wait_idle(server, 30)
            await asyncio.sleep(1)
            idle = rss_bytes(server.pid)
            quiet_logins, login_peak = await idle_logins(server, 3)
            wait_idle(server, 30)
            log(f"idle RSS {idle / MB:.1f} MB; flooding for {args.seconds:g} s")
            run = await flood(server, args)
            busy = await asyncio.to_thread(wait_idle, server, 60)
            after = {
                "rss": rss_bytes(server.pid),
                "hwm": peak_rss(server.pid),
                "busy_s": busy,
                "metrics": await asyncio.to_thread(metrics, server),
            }
        finally:
            server.stop()
        report(args, idle, (quiet_logins, login_peak), run, after)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="flood length (default 10)")
    parser.add_argument("--connections", type=int, default=8, help="flooding connections (8)")
    parser.add_argument(
        "--rate", type=float, default=500.0, help="requests/s per connection (default 500)"
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], help="server event loop")
    args = parser.parse_args(argv)
    if args.loop is None:
        args.loop = "uvloop" if have_uvloop() else "asyncio"
    with stop_everything():
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
