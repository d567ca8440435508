"""The runner: independent cases, each on its own connections, each frame kept as evidence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..logs import redact

__all__ = ["Options", "Result", "Probe", "Skip", "Failure", "case", "CASES", "run_suite"]

EVIDENCE_WIDTH = 240


@dataclass
class Options:
    url: str
    operator: tuple[str, str] | None = None
    trader: tuple[str, str] | None = None
    target: str | None = None
    maildir: Path | None = None
    timeout: float = 10.0
    # Shared across the cases of one run: the target's latest mailed link. The server allows
    # few reset requests per user and hour, so cases reuse a link rather than ask again.
    latest_link: tuple[int, str, str] | None = None


@dataclass
class Result:
    case: str
    title: str
    verdict: str  # pass | fail | skip
    reason: str = ""
    evidence: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Skip(Exception):
    """The case cannot run with what was given; the message says what it needs."""


class Failure(AssertionError):
    """The server departed from the contract; the message says how."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


class Probe:
    """A recording client: every frame in and out is kept (secrets masked) as evidence."""

    def __init__(self, options: Options, evidence: list[str]) -> None:
        self.options = options
        self.evidence = evidence
        self.ws: ClientConnection | None = None
        self._next_i = 0

    async def __aenter__(self) -> Probe:
        self.ws = await connect(self.options.url, max_size=None, open_timeout=self.options.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _note(self, direction: str, data: str | bytes) -> None:
        text = data if isinstance(data, str) else f"<binary {len(data)} bytes: {data[:16]!r}>"
        text = redact(text)
        if len(text) > EVIDENCE_WIDTH:
            text = text[:EVIDENCE_WIDTH] + f"... ({len(text)} chars)"
        self.evidence.append(f"{direction} {text}")

    async def send(self, data: str | bytes | dict[str, Any]) -> None:
        assert self.ws is not None
        if isinstance(data, dict):
            data = orjson.dumps(data).decode()
        self._note(">", data)
        await self.ws.send(data)

    async def recv(self) -> dict[str, Any]:
        """The next frame, with ``o`` parsed when it is a JSON string (``o_raw`` keeps it)."""
        assert self.ws is not None
        try:
            data = await asyncio.wait_for(self.ws.recv(), self.options.timeout)
        except TimeoutError as exc:
            raise Failure(f"no answer within {self.options.timeout:g} s") from exc
        self._note("<", data)
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise Failure("the answer is not JSON") from exc
        if not isinstance(frame, dict):
            raise Failure("the answer is not a JSON object")
        frame["o_raw"] = frame.get("o")
        if isinstance(frame.get("o"), str):
            try:
                frame["o"] = orjson.loads(frame["o"])
            except orjson.JSONDecodeError:
                pass
        return frame

    async def call(
        self, name: str, payload: Any = None, *, m: int = 0, i: int | None = None
    ) -> dict[str, Any]:
        """Send one request; return its answer (checked to carry the same i and n)."""
        if i is None:
            i = self._next_i
            self._next_i += 2
        await self.send(
            {
                "m": m,
                "i": i,
                "n": name,
                "o": orjson.dumps(payload if payload is not None else {}).decode(),
            }
        )
        answer = await self.recv()
        expect(answer.get("i") == i, f"answer echoes i={answer.get('i')!r}, sent {i}")
        expect(answer.get("n") == name, f"answer echoes n={answer.get('n')!r}, sent {name!r}")
        return answer

    async def close_code(self) -> int | None:
        """Wait for the server to close; its close code."""
        assert self.ws is not None
        try:
            await asyncio.wait_for(self.ws.recv(), self.options.timeout)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            self.evidence.append(f"x closed by the server with {code}")
            return code
        except TimeoutError:
            return None
        raise Failure("the server answered instead of closing")

    async def login(self, creds: tuple[str, str] | None, role: str) -> dict[str, Any]:
        if creds is None:
            raise Skip(f"needs --{role} USER:PASS")
        answer = await self.call("AuthenticateUser", {"UserName": creds[0], "Password": creds[1]})
        o = answer.get("o")
        expect(
            isinstance(o, dict) and o.get("Authenticated") is True,
            f"could not log in as the {role} given",
        )
        assert isinstance(o, dict)
        return o


CASES: list[tuple[str, str, Callable[[Options, list[str]], Awaitable[None]]]] = []


def case(
    name: str, title: str
) -> Callable[
    [Callable[[Options, list[str]], Awaitable[None]]],
    Callable[[Options, list[str]], Awaitable[None]],
]:
    """Register a case: an async function of (options, evidence) that raises Failure or Skip."""

    def register(
        fn: Callable[[Options, list[str]], Awaitable[None]],
    ) -> Callable[[Options, list[str]], Awaitable[None]]:
        CASES.append((name, title, fn))
        return fn

    return register


async def run_suite(options: Options, only: list[str] | None = None) -> list[Result]:
    """Run every case (or those named), one after another, each independent of the others."""
    from . import cases  # noqa: F401  (registers the cases)

    results = []
    for name, title, fn in CASES:
        if only and name not in only:
            continue
        evidence: list[str] = []
        started = time.monotonic()
        try:
            await fn(options, evidence)
        except Skip as skip:
            results.append(Result(name, title, "skip", str(skip), evidence))
        except (Failure, AssertionError) as failure:
            results.append(Result(name, title, "fail", str(failure), evidence))
        except (OSError, ConnectionClosed) as exc:
            results.append(Result(name, title, "fail", f"connection problem: {exc}", evidence))
        else:
            results.append(Result(name, title, "pass", "", evidence))
        results[-1].seconds = time.monotonic() - started
    return results
