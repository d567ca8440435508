"""The ``keepalive`` case: ``/AP/Ping`` over one kept-alive HTTP/1.1 connection against Ping
over one WebSocket, each a closed loop (one request in flight) for the same time, from this
process; the figure is the ratio of their rates (HTTP per WebSocket).

Both clients are the standard library's or websockets' synchronous ones, so each side pays a
client of like weight; what differs is the server's work per request: an HTTP head parsed and
written by h11 against a frame parsed and written by websockets.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from urllib.parse import urlsplit

from websockets.sync.client import connect

from .bench_procs import log, start_oms
from .bench_report import Row, ratio

__all__ = ["CASE", "keepalive_case"]

CASE = "/AP/Ping kept alive / WebSocket Ping"
_PING = b'{"m":0,"i":%d,"n":"Ping","o":"{}"}'


def http_pings(url: str, seconds: float) -> float:
    """Requests per second of ``POST /AP/Ping`` on one connection (it must stay open)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    n, started = 0, time.perf_counter()
    try:
        conn.connect()
        sock = conn.sock
        while (elapsed := time.perf_counter() - started) < seconds:
            conn.request("POST", "/AP/Ping", body=b"{}")
            answer = conn.getresponse()
            assert answer.status == 200 and b"PONG" in answer.read(), answer.status
            n += 1
        assert conn.sock is sock, "the connection was not kept"
    finally:
        conn.close()
    return n / elapsed


def ws_pings(url: str, seconds: float) -> float:
    """Pings per second on one WebSocket."""
    n, started = 0, time.perf_counter()
    with connect(url, compression=None) as ws:
        while (elapsed := time.perf_counter() - started) < seconds:
            ws.send((_PING % n).decode())
            assert "PONG" in str(ws.recv(timeout=10))
            n += 1
    return n / elapsed


def keepalive_case(loop: str, tmp: Path, duration: float, env: dict[str, str]) -> Row:
    tmp.mkdir(parents=True)
    server = start_oms(loop, tmp, tmp / "keepalive.sqlite3", env)
    try:
        ws_pings(server.url, min(duration, 1.0))  # warm-up
        http_rate = http_pings(server.url, duration)
        ws_rate = ws_pings(server.url, duration)
    finally:
        server.stop()
    times = ratio(http_rate, ws_rate)
    log(
        f"[{loop}] /AP/Ping over one kept-alive connection {http_rate:,.0f}/s, WebSocket Ping "
        f"{ws_rate:,.0f}/s: ratio {times:.2f}"
    )
    return Row(
        loop,
        CASE,
        "1",
        target=f"HTTP {http_rate:,.0f}/s, WebSocket {ws_rate:,.0f}/s: {times:.2f}x",
        fixed={"ratio": f"{times:.2f}"},
    )
