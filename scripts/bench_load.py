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


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    url, n_conns = spec["url"], spec["conns"]
    name: str = spec["name"]
    mode: str = spec.get("mode", "same")
    quoted = [_quoted(p) for p in spec.get("payloads") or [{}]]
    marker: bytes | None = spec["marker"].encode() if spec.get("marker") else None
    rate = spec.get("rate")
    interval = n_conns / rate if rate else 0.0
    head = '{"m":0,"i":'
    tails = [',"n":"' + name + '","o":' + q + "}" for q in quoted]
    cursor = [0]
    conns = await _open_many(spec.get("urls") or url, n_conns, 256, spec.get("token"))

    loop = asyncio.get_running_loop()
    now = time.perf_counter_ns()
    t0 = now + int(spec["warmup"] * 1e9)
    t1 = t0 + int(spec["duration"] * 1e9)
    latencies: list[int] = []
    errors = [0]
    first_error: list[str] = []
    sent = [0]

    def next_tail(k: int) -> str | None:
        if mode == "same":
            return tails[0]
        if mode == "per_conn":
            return tails[k % len(tails)]
        index = cursor[0]
        cursor[0] += 1
        if mode == "cycle":
            return tails[index % len(tails)]
        return tails[index] if index < len(tails) else None  # once

    async def drive(k: int, ws: ClientConnection) -> None:
        i = 0
        due = time.perf_counter_ns() + int(random.random() * interval * 1e9)
        while True:
            if interval:
                wait = due - time.perf_counter_ns()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                due += int(interval * 1e9)
            tail = next_tail(k)
            if tail is None:
                return
            i += 2
            frame = head + str(i) + tail
            start = time.perf_counter_ns()
            if start >= t1:
                return
            sent[0] += 1
            await ws.send(frame)
            answer = await ws.recv(decode=False)
            end = time.perf_counter_ns()
            if start >= t0:
                latencies.append(end - start)
                if marker is not None and marker not in answer:
                    errors[0] += 1
                    if not first_error:
                        first_error.append(answer[:300].decode("utf-8", "replace"))

    cpu: dict[str, float] = {}

    pids = spec.get("server_pids") or ([spec["server_pid"]] if spec.get("server_pid") else [])
    pg = spec.get("pg")
    db_cpu: list[dict[int, float]] = []

    async def read_db() -> None:
        if pg:
            found = await loop.run_in_executor(None, pg_backend_pids, pg["dsn"], pg["database"])
            db_cpu.append(pids_cpu(found))

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, (t0 - time.perf_counter_ns()) / 1e9))
        cpu["server0"] = sum(cpu_seconds(pid) for pid in pids)
        cpu["gen0"] = _own_cpu()
        cpu["busy0"], cpu["steal0"] = machine_cpu()
        await read_db()
        await asyncio.sleep(max(0.0, (t1 - time.perf_counter_ns()) / 1e9))
        cpu["server1"] = sum(cpu_seconds(pid) for pid in pids)
        cpu["gen1"] = _own_cpu()
        cpu["busy1"], cpu["steal1"] = machine_cpu()
        await read_db()

    sampler = loop.create_task(sample_cpu())
    try:
        await asyncio.gather(*(drive(k, ws) for k, ws in enumerate(conns)))
        await sampler
    finally:
        sampler.cancel()
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    window = spec["duration"]
    latencies.sort()
    return {
        "count": len(latencies),
        "window_s": window,
        "rps": len(latencies) / window,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999),
        "errors": errors[0],
        "first_error": first_error[0] if first_error else None,
        "server_cpu_s": cpu.get("server1", 0.0) - cpu.get("server0", 0.0),
        "gen_cpu_s": cpu.get("gen1", 0.0) - cpu.get("gen0", 0.0),
        "machine_busy_s": cpu.get("busy1", 0.0) - cpu.get("busy0", 0.0),
        "steal_s": cpu.get("steal1", 0.0) - cpu.get("steal0", 0.0),
        "db_cpu_s": cpu_delta(*db_cpu) if len(db_cpu) == 2 else float("nan"),
        "used": sent[0],
        "exhausted": mode == "once" and cursor[0] > len(tails),
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
