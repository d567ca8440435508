"""Raw abusive clients for the transport tests: a real WebSocket handshake on a plain socket
(websockets' sans-I/O client), then frames sent as fast as the socket takes them by a client
that never reads what the server answers."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["KINDS", "MB", "Flood", "flood", "many", "open_ws", "rss_bytes"]

MB = 1 << 20


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid`` (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_ws(
    port: int,
    *,
    local: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    rcvbuf: int = 4096,
) -> tuple[socket.socket, ClientProtocol]:
    """A socket with a small receive buffer that completed a real opening handshake."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.bind((local, 0))
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    sock: socket.socket = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
    scheme = "wss" if tls else "ws"
    protocol = ClientProtocol(parse_uri(f"{scheme}://127.0.0.1:{port}/WSGateway/"))
    protocol.send_request(protocol.connect())
    sock.sendall(b"".join(protocol.data_to_send()))
    while protocol.state is State.CONNECTING:
        data = sock.recv(4096)
        assert data, "closed during the handshake"
        protocol.receive_data(data)
        for event in protocol.events_received():
            assert isinstance(event, Response) and event.status_code == 101, event
    return sock, protocol


def ping_frames(protocol: ClientProtocol, count: int) -> tuple[bytes, bytes]:
    """``count`` masked ping frames with 125-byte payloads, again and again."""
    protocol.send_ping(b"p" * 125)
    batch = b"".join(protocol.data_to_send()) * count
    return batch, batch


def request_frames(protocol: ClientProtocol, count: int) -> tuple[bytes, bytes]:
    """``count`` Ping requests (text frames) of the OMS protocol, again and again."""
    protocol.send_text(b'{"m":0,"i":1,"n":"Ping","o":"{}"}')
    batch = b"".join(protocol.data_to_send()) * count
    return batch, batch


def fragment_frames(protocol: ClientProtocol, count: int) -> tuple[bytes, bytes]:
    """The start of a text message, then empty fragments of it, never the last."""
    protocol.send_text(b"", fin=False)
    start = b"".join(protocol.data_to_send())
    protocol.send_continuation(b"", fin=False)
    return start, b"".join(protocol.data_to_send()) * count


# Each kind: (what is sent first, what is sent after it again and again).
KINDS = {"pings": ping_frames, "requests": request_frames, "fragments": fragment_frames}


@dataclass
class Flood:
    closed: int = 0  # connections the server ended under the flood
    sent: int = 0  # bytes the server took
    growth: int = 0  # the largest RSS growth of the server seen meanwhile
    seconds: float = 0.0


def flood(
    port: int,
    pid: int,
    frames: str,
    *,
    seconds: float = 20,
    tls: ssl.SSLContext | None = None,
    give_up_growth: int = 100 * MB,
    reconnect: bool = True,
) -> Flood:
    """Send ``frames`` (a key of KINDS) without ever reading, for ``seconds``; a
    connection the server ends is counted and (with ``reconnect``) replaced. Stops early when
    the server grew by ``give_up_growth`` (the machine is shared: a failing run stays small)."""
    base = rss_bytes(pid)
    result = Flood()
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and result.growth < give_up_growth:
        sock, protocol = open_ws(port, tls=tls)
        first, batch = KINDS[frames](protocol, 4000)
        sock.settimeout(0.5)
        pending = memoryview(first)
        try:
            while time.monotonic() < deadline and result.growth < give_up_growth:
                result.growth = max(result.growth, rss_bytes(pid) - base)
                try:
                    # A send that timed out is retried with the same bytes (as TLS needs).
                    taken = sock.send(pending)
                except (TimeoutError, ssl.SSLWantWriteError):
                    continue  # the server is not reading (yet): not closed
                except OSError:
                    result.closed += 1
                    break
                result.sent += taken
                pending = pending[taken:] or memoryview(batch)
        finally:
            sock.close()
        if not reconnect:
            break
    result.growth = max(result.growth, rss_bytes(pid) - base)
    result.seconds = time.monotonic() - started
    return result


def many(port: int, pid: int, frames: str, connections: int, each: int = 2 * MB) -> int:
    """``connections`` clients at once, each sending about ``each`` bytes of ``frames`` and
    never reading: the largest RSS growth of the server while they are all open."""
    base = rss_bytes(pid)
    socks = []
    try:
        for _ in range(connections):
            sock, protocol = open_ws(port, rcvbuf=1 << 20)
            first, batch = KINDS[frames](protocol, 4000)
            sock.settimeout(0.2)
            try:
                sock.sendall(first + batch * (each // len(batch)))
            except OSError:
                pass  # closed, or no longer read: either way it sent what it could
            socks.append(sock)
        peak = 0
        for _ in range(10):
            peak = max(peak, rss_bytes(pid) - base)
            time.sleep(0.1)
        return peak
    finally:
        for sock in socks:
            sock.close()
