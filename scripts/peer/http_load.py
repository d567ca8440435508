"""The peer's load generator: its own process (the project's venv, asyncio + uvloop), HTTP/1.1
keep-alive over asyncio streams. ``python -m scripts.peer.http_load JOB`` with JOB one JSON
object: host, port, path, conns, warmup, duration, server_pid, targets, email (a format with
``{k}``). Bodies are ``{"email": email.format(k=k)}`` for k < targets, sent in one shared round
robin. Prints one JSON result line.

Closed loop, as ``scripts.bench_load``: each connection has one request in flight. Latency is
send-to-answer from ``time.perf_counter_ns``; only requests sent after the warm-up count, and
only 202 answers are timed (anything else, or a broken connection, is an error). The server's
CPU time is read at both ends of the measured window.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from .._bench_util import cpu_seconds, have_uvloop, machine_cpu, raise_nofile, run
from ..bench_load import _own_cpu, _percentile

__all__ = ["main"]

_TIMEOUT_S = 60  # one answer; a request waiting longer counts as an error
_GOOD = 202


def _requests(spec: dict[str, Any]) -> list[bytes]:
    head = (
        f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
        "Content-Type: application/json\r\n"
    )
    out = []
    for k in range(spec["targets"]):
        data = json.dumps({"email": spec["email"].format(k=k)}).encode()
        out.append(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send one request, read its whole answer; the status code."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked answers are not expected from this route")
    await reader.readexactly(length)
    return status


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    requests = _requests(spec)
    conns = [await asyncio.open_connection(host, port) for _ in range(spec["conns"])]
    t0 = time.perf_counter_ns() + int(spec["warmup"] * 1e9)
    t1 = t0 + int(spec["duration"] * 1e9)
    latencies: list[int] = []
    errors: dict[str, int] = {}
    cursor = [0]

    async def drive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (start := time.perf_counter_ns()) < t1:
            req = requests[cursor[0] % len(requests)]
            cursor[0] += 1
            try:
                status = await asyncio.wait_for(_exchange(reader, writer, req), _TIMEOUT_S)
                failure = None if status == _GOOD else f"HTTP {status}"
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                failure = type(exc).__name__
                writer.close()  # the connection's state is unknown: start a new one
                reader, writer = await asyncio.open_connection(host, port)
            end = time.perf_counter_ns()
            if start < t0:
                continue
            if failure is None:
                latencies.append(end - start)
            else:
                errors[failure] = errors.get(failure, 0) + 1
        writer.close()

    cpu: dict[str, float] = {}

    async def sample_cpu() -> None:
        pid = spec["server_pid"]
        await asyncio.sleep(max(0.0, (t0 - time.perf_counter_ns()) / 1e9))
        cpu["server0"], cpu["gen0"] = cpu_seconds(pid), _own_cpu()
        cpu["busy0"], cpu["steal0"] = machine_cpu()
        await asyncio.sleep(max(0.0, (t1 - time.perf_counter_ns()) / 1e9))
        cpu["server1"], cpu["gen1"] = cpu_seconds(pid), _own_cpu()
        cpu["busy1"], cpu["steal1"] = machine_cpu()

    await asyncio.gather(sample_cpu(), *(drive(r, w) for r, w in conns))
    latencies.sort()
    return {
        "n": len(latencies),
        "rps": len(latencies) / spec["duration"],
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "server_cpu_s": cpu["server1"] - cpu["server0"],
        "gen_cpu_s": cpu["gen1"] - cpu["gen0"],
        "machine_busy_s": cpu["busy1"] - cpu["busy0"],
        "steal_s": cpu["steal1"] - cpu["steal0"],
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    raise_nofile()
    print(json.dumps(run(_load(spec), "uvloop" if have_uvloop() else "asyncio")), flush=True)


if __name__ == "__main__":
    main()
