"""A small asyncio client for OMS frames: numbers requests, matches answers by ``i``.

Used by the tests, the scripts and the conformance kit. Only an m=1 or m=5 frame answers a pending
call (so an m=3 event, whatever its ``i``, never does). Frames that answer no pending call (an
m=5 to a raw frame, an event) are queued and read with :meth:`Client.next_unmatched`; so is a
message that is not a JSON object (as ``m=-1``), since a server under test may send anything.
Every answer keeps the message as it arrived in ``raw``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["Answer", "Client"]

_encode = msgspec.json.Encoder().encode


class Answer(msgspec.Struct, frozen=True):
    """One answer frame with its payload parsed."""

    m: int
    i: int
    n: str
    o: Any
    raw: str | bytes = ""  # the message as it arrived

    @property
    def ok(self) -> bool:
        """True for an m=1 reply that is not a standard response with result false."""
        return self.m == 1 and not (isinstance(self.o, dict) and self.o.get("result") is False)


class Client:
    """An OMS frame client over one WebSocket connection."""

    def __init__(self, ws: ClientConnection, *, first: int = 0, step: int = 2) -> None:
        self.ws = ws
        self._next = first
        self._step = step
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._unmatched: asyncio.Queue[Answer | BaseException] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("max_size", None)
        return cls(await connect(url, **kwargs))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def call(
        self, name: str, payload: Any = None, *, m: int = 0, timeout: float | None = 30
    ) -> Answer:
        """Send one request and wait for the answer with the same ``i``."""
        i = self._next
        self._next += self._step
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[i] = future
        # msgspec, not orjson: tests send integers beyond 64 bits on purpose.
        body = _encode(payload if payload is not None else {}).decode()
        try:
            await self.ws.send(_encode({"m": m, "i": i, "n": name, "o": body}).decode())
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(i, None)

    async def send_raw(self, data: str | bytes) -> None:
        """Send a message as it is (a text frame for str, a binary frame for bytes)."""
        await self.ws.send(data)

    async def next_unmatched(self, timeout: float = 10) -> Answer:
        """The next frame that answered no pending call."""
        item = await asyncio.wait_for(self._unmatched.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def raw(self, data: str | bytes, timeout: float = 10) -> Answer:
        """Send a raw message and return the answer to it."""
        await self.send_raw(data)
        return await self.next_unmatched(timeout)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                answer = _parse(message)
                future = self._pending.get(answer.i) if isinstance(answer.i, int) else None
                if future is not None and not future.done() and answer.m in (1, 5):
                    future.set_result(answer)
                else:
                    self._unmatched.put_nowait(answer)
        except ConnectionClosed as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
            raise
        else:
            # A clean close ends the iteration quietly; hand on its code and reason.
            self._fail(self.ws.protocol.close_exc)

    def _fail(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._unmatched.put_nowait(exc)


def _parse(message: str | bytes) -> Answer:
    """One received message as an Answer, ``o`` parsed when it is a JSON string."""
    try:
        doc = orjson.loads(message)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return Answer(m=-1, i=-1, n="", o=None, raw=message)
    o = doc.get("o")
    if isinstance(o, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            o = orjson.loads(o)
    return Answer(m=doc.get("m", -1), i=doc.get("i", -1), n=doc.get("n", ""), o=o, raw=message)
