"""The benchmark's load generator: its own process, so it never shares a core's time slice with
the server it measures. Reads one JSON spec line on stdin, prints one JSON result line.

Closed loop: each connection has exactly one request in flight; it sends the next as soon as
the answer to the last has arrived (or, with ``rate``, at its next slot of a fixed schedule).
Latency is send-to-answer, from ``time.perf_counter_ns``. Only requests sent inside the measured
window (after ``warmup``) count; the server's CPU time (utime + stime of every thread, from
/proc/PID/stat) is read at both ends of the window.

Spec keys: url, conns, warmup, duration, server_pid, name (the function), payloads (list of
objects), mode ("same": payloads[0] for all; "per_conn": payloads[k % len] on connection k;
"cycle": shared round robin; "once": each payload used once, then that connection stops),
marker (a substring every good answer holds, or null), token (WebAuthenticateUser first),
rate (total requests/s, paced; null for back-to-back), loop ("asyncio"|"uvloop"); optional:
urls (several nodes: connection k goes to urls[k % len]), server_pids (their CPU summed), pg
(``{"dsn", "database"}``: the CPU of the PostgreSQL processes serving that database, by
``pg_stat_activity``, over the same window, as ``db_cpu_s``).

``idle`` mode (``{"idle": true, "url", "conns", "batch", "token"}``): opens and authenticates
``conns`` connections in batches, prints ``{"ready": ...}``, then holds them open until a line
arrives on stdin.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ._bench_util import (
    cpu_delta,
    cpu_seconds,
    have_uvloop,
    machine_cpu,
    pg_backend_pids,
    pids_cpu,
    raise_nofile,
    run,
)

__all__ = ["main"]

_OPEN_TIMEOUT = 60


def _quoted(payload: Any) -> str:
    """``o`` as the frame carries it: a JSON document inside a JSON string."""
    return json.dumps(json.dumps(payload, separators=(",", ":")))


async def _open(url: str, token: str | None) -> ClientConnection:
    ws = await connect(url, open_timeout=_OPEN_TIMEOUT, max_size=None)
    if token is not None:
        o = _quoted({"SessionToken": token})
        await ws.send('{"m":0,"i":1,"n":"WebAuthenticateUser","o":' + o + "}")
        answer = await ws.recv()
        if '\\"Authenticated\\":true' not in answer:
            await ws.close()
            raise RuntimeError(f"WebAuthenticateUser refused: {str(answer)[:200]}")
    return ws


async def _open_many(
    url: str | list[str], count: int, batch: int, token: str | None
) -> list[ClientConnection]:
    urls = [url] if isinstance(url, str) else url
    conns: list[ClientConnection] = []
    try:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            conns += await asyncio.gather(
                *(_open(urls[(start + k) % len(urls)], token) for k in range(size))
            )
    except BaseException:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        raise
    return conns


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
    return ordered[rank] / 1e6


NAN = float("nan")
_NO_CPU = dict.fromkeys(("server_cpu_s", "gen_cpu_s", "machine_busy_s", "steal_s"), 0.0)


class _Tails:
    """What each frame carries after its id, by the spec's ``mode``: ``same`` (the first
    payload), ``per_conn`` (connection k's), ``cycle`` (the next in turn, shared), ``once`` (each
    payload once, then None: the connection stops)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        name: str = spec["name"]
        quoted = [_quoted(p) for p in spec.get("payloads") or [{}]]
        self.tails = [',"n":"' + name + '","o":' + q + "}" for q in quoted]
        self.mode: str = spec.get("mode", "same")
        self.cursor = 0

    def next(self, k: int) -> str | None:
        if self.mode == "same":
            return self.tails[0]
        if self.mode == "per_conn":
            return self.tails[k % len(self.tails)]
        index = self.cursor
        self.cursor += 1
        if self.mode == "cycle":
            return self.tails[index % len(self.tails)]
        return self.tails[index] if index < len(self.tails) else None  # once

    @property
    def exhausted(self) -> bool:
        return self.mode == "once" and self.cursor > len(self.tails)


async def _cpu_window(spec: dict[str, Any], t0: int, t1: int) -> dict[str, float]:
    """The servers', this generator's, the machine's and the database's CPU seconds between
    ``t0`` and ``t1`` (``perf_counter_ns``), each read at both ends."""
    loop = asyncio.get_running_loop()
    pids = spec.get("server_pids") or ([spec["server_pid"]] if spec.get("server_pid") else [])
    pg = spec.get("pg")

    async def read() -> tuple[float, float, float, float, dict[int, float] | None]:
        server, gen = sum(cpu_seconds(pid) for pid in pids), _own_cpu()
        busy, steal = machine_cpu()
        db = None
        if pg:
            found = await loop.run_in_executor(None, pg_backend_pids, pg["dsn"], pg["database"])
            db = pids_cpu(found)
        return server, gen, busy, steal, db

    await asyncio.sleep(max(0.0, (t0 - time.perf_counter_ns()) / 1e9))
    a = await read()
    await asyncio.sleep(max(0.0, (t1 - time.perf_counter_ns()) / 1e9))
    b = await read()
    return {
        "server_cpu_s": b[0] - a[0],
        "gen_cpu_s": b[1] - a[1],
        "machine_busy_s": b[2] - a[2],
        "steal_s": b[3] - a[3],
        "db_cpu_s": cpu_delta(a[4], b[4]) if a[4] is not None and b[4] is not None else NAN,
    }


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    tails = _Tails(spec)
    marker: bytes | None = spec["marker"].encode() if spec.get("marker") else None
    rate = spec.get("rate")
    interval = spec["conns"] / rate if rate else 0.0
    head = '{"m":0,"i":'
    conns = await _open_many(spec.get("urls") or spec["url"], spec["conns"], 256, spec.get("token"))
    t0 = time.perf_counter_ns() + int(spec["warmup"] * 1e9)
    t1 = t0 + int(spec["duration"] * 1e9)
    latencies: list[int] = []
    errors: list[str] = []  # the first answers without the marker (their count matters)
    sent = [0]

    async def drive(k: int, ws: ClientConnection) -> None:
        i = 0
        due = time.perf_counter_ns() + int(random.random() * interval * 1e9)
        while True:
            if interval:
                wait = due - time.perf_counter_ns()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                due += int(interval * 1e9)
            tail = tails.next(k)
            if tail is None:
                return
            i += 2
            start = time.perf_counter_ns()
            if start >= t1:
                return
            sent[0] += 1
            await ws.send(head + str(i) + tail)
            answer = await ws.recv(decode=False)
            if start >= t0:
                latencies.append(time.perf_counter_ns() - start)
                if marker is not None and marker not in answer:
                    errors.append(answer[:300].decode("utf-8", "replace") if not errors else "")

    sampler = asyncio.get_running_loop().create_task(_cpu_window(spec, t0, t1))
    cpu = {**_NO_CPU, "db_cpu_s": NAN}
    try:
        await asyncio.gather(*(drive(k, ws) for k, ws in enumerate(conns)))
        cpu = await sampler
    finally:
        sampler.cancel()
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return {
        **_latency_summary(latencies, spec["duration"]),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **cpu,
        "used": sent[0],
        "exhausted": tails.exhausted,
    }


def _latency_summary(latencies: list[int], window: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "count": len(latencies),
        "window_s": window,
        "rps": len(latencies) / window,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999),
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _idle(spec: dict[str, Any]) -> None:
    started = time.perf_counter()
    conns = await _open_many(spec["url"], spec["conns"], spec.get("batch", 100), spec.get("token"))
    ready = {"ready": len(conns), "open_s": time.perf_counter() - started}
    print(json.dumps(ready), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for ws in conns:
        ws.transport.abort()  # the parent is done: drop them without 5,000 closing handshakes


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    raise_nofile()
    loop = spec.get("loop") or ("uvloop" if have_uvloop() else "asyncio")
    if spec.get("idle"):
        run(_idle(spec), loop)
        return
    print(json.dumps(run(_load(spec), loop)), flush=True)


if __name__ == "__main__":
    main()
