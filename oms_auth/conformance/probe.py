"""The probe: a recording client on top of :class:`protocol.client.Client`.

A conformance case needs what a well-behaved client would hide: the answer that came next,
whatever its ``i``; whether ``o`` arrived as a string; the close code. So the probe sends its
frames itself (:meth:`Client.send_raw`) and reads every answer in arrival order
(:meth:`Client.next_unmatched`: with no call pending, every frame lands there). Events (m=3,
such as a ``LogoutEvent`` with i=0) answer no request: they are kept as evidence and passed
over. Every frame in and out is written to the case's evidence, masked (:mod:`.mask`).
"""

from __future__ import annotations

from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed

from protocol.client import Answer, Client

from .kit import Failure, Options, Skip, expect
from .mask import mask

__all__ = ["Probe"]

EVIDENCE_WIDTH = 240
EVENT = 3  # m of a frame the server pushes unasked


class Probe:
    """One connection of a case; ``async with Probe(options, evidence) as p``."""

    def __init__(self, options: Options, evidence: list[str]) -> None:
        self.options = options
        self.evidence = evidence
        self._client: Client | None = None
        self._next_i = 0

    async def __aenter__(self) -> Probe:
        self._client = await Client.connect(self.options.url, open_timeout=self.options.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> Client:
        assert self._client is not None, "use the probe as an async context manager"
        return self._client

    def note(self, line: str) -> None:
        """Add a line to the evidence: masked, and cut to a readable width."""
        line = mask(line, self.options.secrets())
        if len(line) > EVIDENCE_WIDTH:
            line = line[:EVIDENCE_WIDTH] + f"... ({len(line)} chars)"
        self.evidence.append(line)

    def _note_frame(self, direction: str, data: str | bytes) -> None:
        text = data if isinstance(data, str) else f"<binary {len(data)} bytes: {data[:16]!r}>"
        self.note(f"{direction} {text}")

    async def send(self, data: str | bytes | dict[str, Any]) -> None:
        """Send a frame as it is: text, binary, or a dict encoded as JSON text."""
        if isinstance(data, dict):
            data = orjson.dumps(data).decode()
        self._note_frame(">", data)
        await self.client.send_raw(data)

    async def recv(self) -> dict[str, Any]:
        """The next answer (events passed over), as sent: ``o`` parsed when it is a JSON
        string, ``o_raw`` as it arrived."""
        while True:
            answer = await self._next()
            frame = _frame(answer)
            if frame.get("m") != EVENT:
                return frame

    async def event(self) -> dict[str, Any]:
        """The next event (m=3) the server sends, answers passed over."""
        while True:
            frame = _frame(await self._next())
            if frame.get("m") == EVENT:
                return frame

    async def _next(self) -> Answer:
        try:
            answer = await self.client.next_unmatched(self.options.timeout)
        except TimeoutError as exc:
            raise Failure(f"no answer within {self.options.timeout:g} s") from exc
        self._note_frame("<", answer.raw)
        return answer

    async def call(
        self, name: str, payload: Any = None, *, m: int = 0, i: int | None = None
    ) -> dict[str, Any]:
        """Send one request; return the next answer (checked to carry the same i and n)."""
        if i is None:
            i = self._next_i
            self._next_i += 2
        o = orjson.dumps(payload if payload is not None else {}).decode()
        await self.send({"m": m, "i": i, "n": name, "o": o})
        answer = await self.recv()
        expect(answer.get("i") == i, f"answer echoes i={answer.get('i')!r}, sent {i}")
        expect(answer.get("n") == name, f"answer echoes n={answer.get('n')!r}, sent {name!r}")
        return answer

    async def close_code(self) -> int | None:
        """Wait for the server to close; its close code (None when it stays open)."""
        try:
            await self.client.next_unmatched(self.options.timeout)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            self.note(f"x closed by the server with {code}")
            return code
        except TimeoutError:
            return None
        raise Failure("the server answered instead of closing")

    async def login(self, creds: tuple[str, str] | None, role: str) -> dict[str, Any]:
        """Log in as the given user; skip the case when the run was not given one."""
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


def _frame(answer: Answer) -> dict[str, Any]:
    """The answer as the server wrote it, keys missing where it left them out."""
    try:
        frame = orjson.loads(answer.raw)
    except orjson.JSONDecodeError as exc:
        raise Failure("the answer is not JSON") from exc
    if not isinstance(frame, dict):
        raise Failure("the answer is not a JSON object")
    frame["o_raw"] = frame.get("o")
    frame["o"] = answer.o if isinstance(frame["o_raw"], str) else frame["o_raw"]
    return frame
