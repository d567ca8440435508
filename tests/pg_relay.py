"""A TCP relay in front of the test database: tests put it between a client and PostgreSQL to
cut the link, slow it, or stop what the client sends at a chosen message. Subclasses change
how bytes go up (client to server) or down (server to client)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from .helpers import PG_URL


class Relay:
    """Passes everything through until :meth:`cut`: to a client, a cut looks like the database
    stopping (connections reset, new ones refused)."""

    def __init__(self) -> None:
        target = urlsplit(PG_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen (on the port of an earlier start, if any); the port."""
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def _keep(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _link(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._keep(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            down_w.transport.abort()
            return
        self.links |= {down_w, up_w}
        # One side ends as the client or the server goes (or a subclass stops it): its end is
        # the relay's business, not an error of the test's.
        await asyncio.gather(
            self._up(down_r, up_w), self._down(up_r, down_w), return_exceptions=True
        )
        self.links -= {down_w, up_w}

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._pipe(r, w)

    async def _down(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._pipe(r, w)

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.transport.abort()

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.links):
            w.transport.abort()
        await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
