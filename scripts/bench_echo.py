"""The ceiling: a bare ``websockets`` server that answers every frame with a fixed standard
response, doing only what any router must (decode the frame to read ``i`` and ``n``).

    python -m scripts.bench_echo [--port 0] [--loop asyncio|uvloop]

Prints ``ceiling listening on ws://127.0.0.1:PORT/`` once bound; stops on SIGTERM/SIGINT.
Same websockets settings as oms-auth: compression on (the default), 64 KiB frames.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ._bench_util import have_uvloop, raise_nofile, run

__all__ = ["main"]


class _Head(msgspec.Struct):
    """The routing part of a frame; other keys are skipped unread."""

    i: int
    n: str


class _Reply(msgspec.Struct):
    m: int
    i: int
    n: str
    o: str


_decode = msgspec.json.Decoder(_Head).decode
_encode = msgspec.json.Encoder().encode
_STANDARD = '{"result":true,"errormsg":null,"errorcode":0,"detail":null}'


async def _handler(ws: ServerConnection) -> None:
    try:
        async for data in ws:
            try:
                head = _decode(data)
            except msgspec.MsgspecError:
                head = _Head(i=0, n="")
            await ws.send(_encode(_Reply(1, head.i, head.n, _STANDARD)), text=True)
    except ConnectionClosed:
        pass  # a load generator that drops its connections is not an error


async def _main(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_handler, "127.0.0.1", port, max_size=65536, server_header=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"ceiling listening on ws://127.0.0.1:{bound}/", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default=None)
    args = parser.parse_args()
    raise_nofile()
    loop = args.loop or ("uvloop" if have_uvloop() else "asyncio")
    run(_main(args.port), loop)


if __name__ == "__main__":
    main()
