"""Routing, without I/O: a frame's bytes in, either an answer to send at once or a call to run.

Every transport (the WebSocket gateway, the HTTP gateway to come) routes through this one
function over the one function table, so "what does this frame get" is decided in one place
and tested without a socket, as websockets tests its protocol core.

    bytes ──decode──> FrameError ────────────────────────────> Immediate(m=5, 100/106)
                      Frame ──name──> unknown ──────────────> Immediate(m=5, 104)
                                      known, m != 0 ────────> Immediate(m=5, 106)
                                      known, m == 0 ──o──> bad key type ──> Immediate(m=1, 100)
                                                           unreadable o ──> Immediate(m=5, 100)
                                                           payload ──────> Call
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import ErrorCode, StandardResponse
from protocol.frame import Frame, FrameError, MessageType, decode, encode_error, encode_reply
from protocol.messages import PayloadError

from .functions import Function

__all__ = ["Immediate", "Call", "route"]

_MAX_NAME_IN_DETAIL = 80


class Immediate(msgspec.Struct, frozen=True):
    """An answer decided by routing alone: send ``data``; count it as ``function``/``code``."""

    data: bytes
    function: str
    code: int


class Call(msgspec.Struct, frozen=True):
    """A request to run: ``function``'s handler with the decoded ``payload``."""

    frame: Frame
    function: Function
    payload: Any


def route(table: dict[str, Function], data: str | bytes) -> Immediate | Call:
    """Decide what one incoming frame gets (docs/protocol.md, "Frames")."""
    frame = decode(data)
    if isinstance(frame, FrameError):
        return Immediate(encode_error(frame), "", int(frame.code))
    function = table.get(frame.n.lower())
    if function is None:
        name = frame.n if len(frame.n) <= _MAX_NAME_IN_DETAIL else frame.n[:80] + "..."
        return _refuse(frame, ErrorCode.NOT_FOUND, f"Unknown function {name!r}")
    if frame.m != MessageType.REQUEST:
        detail = f"{function.name} does not support message type m={frame.m}"
        return _refuse(frame, ErrorCode.NOT_SUPPORTED, detail)
    payload = function.payload.decode(frame.o)
    if isinstance(payload, PayloadError):
        if payload.routable:
            reply = StandardResponse.failure(payload.code, payload.detail)
            return Immediate(encode_reply(frame.i, frame.n, reply), function.name, payload.code)
        return _refuse(frame, payload.code, payload.detail)
    return Call(frame, function, payload)


def _refuse(frame: Frame, code: ErrorCode, detail: str) -> Immediate:
    return Immediate(encode_error(FrameError(code, detail, frame.i, frame.n)), "", int(code))
