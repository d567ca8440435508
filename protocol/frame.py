"""Frames ``{"m", "i", "n", "o"}``: decoding, with a typed failure for every malformed shape.

The hot path is one msgspec decode into :class:`Frame`. Only when that fails does the slow path
parse the text generically to say exactly what is wrong, so well-formed traffic never pays for
diagnosis and malformed traffic always gets a detail that names the problem.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeGuard

import msgspec
import orjson

from .errors import ErrorCode, StandardResponse

__all__ = [
    "MAX_SEQUENCE",
    "MessageType",
    "Frame",
    "FrameError",
    "decode",
    "encode",
    "encode_reply",
    "encode_event",
    "encode_error",
]

MAX_SEQUENCE = 2**63 - 1


class MessageType(IntEnum):
    REQUEST = 0
    REPLY = 1
    SUBSCRIBE = 2
    EVENT = 3
    UNSUBSCRIBE = 4
    ERROR = 5


class Frame(msgspec.Struct, frozen=True):
    """One frame. ``o`` is the payload as the client sent it: a JSON string, or an object."""

    m: int
    i: int
    n: str
    o: str | dict[str, Any] = "{}"


class FrameError(msgspec.Struct, frozen=True):
    """A frame that cannot be routed: answered with m=5, echoing what could be read of i and n."""

    code: ErrorCode
    detail: str
    i: int = 0
    n: str = ""


_frame_decoder = msgspec.json.Decoder(Frame)
_encoder = msgspec.json.Encoder()


def decode(data: str | bytes) -> Frame | FrameError:
    """Decode one WebSocket message into a Frame, or say why it is not one."""
    if not isinstance(data, str):
        return FrameError(
            ErrorCode.INVALID_REQUEST, "Binary frames are not accepted: send JSON text"
        )
    try:
        frame = _frame_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _diagnose(data)
    return _checked(frame)


def _checked(frame: Frame) -> Frame | FrameError:
    if not 0 <= frame.i <= MAX_SEQUENCE:
        return FrameError(
            ErrorCode.INVALID_REQUEST, "Key i must be an integer from 0 to 2^63-1", 0, frame.n
        )
    if not 0 <= frame.m <= 5:
        return FrameError(
            ErrorCode.NOT_SUPPORTED,
            f"Message type m={frame.m} is not one of 0..5",
            frame.i,
            frame.n,
        )
    return frame


def _diagnose(data: str) -> Frame | FrameError:
    """Parse generically to name the first problem; a frame msgspec refused for no reason we can
    name (it happens with odd escapes) is rebuilt from the generic parse."""
    bad = ErrorCode.INVALID_REQUEST
    try:
        doc = orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        # orjson's message gives the reason and position, never the input itself.
        reason = exc.msg if isinstance(exc, orjson.JSONDecodeError) else "nesting too deep"
        return FrameError(bad, f"Frame is not valid JSON: {reason}")
    if not isinstance(doc, dict):
        return FrameError(bad, f"Frame must be a JSON object, not {_json_type(doc)}")
    n = doc.get("n")
    n_echo = n if isinstance(n, str) else ""
    raw_i = doc.get("i")
    i = raw_i if _is_int(raw_i) and 0 <= raw_i <= MAX_SEQUENCE else 0
    i_ok = _is_int(raw_i) and i == raw_i
    for key in ("m", "i", "n"):
        if key not in doc:
            return FrameError(bad, f"Frame is missing key {key}", i, n_echo)
    if not _is_int(doc["m"]):
        return FrameError(bad, f"Key m must be an integer, not {_json_type(doc['m'])}", i, n_echo)
    if not i_ok:
        return FrameError(bad, "Key i must be an integer from 0 to 2^63-1", 0, n_echo)
    if not isinstance(n, str):
        return FrameError(bad, f"Key n must be a string, not {_json_type(n)}", i, n_echo)
    o = doc.get("o", "{}")
    if not isinstance(o, (str, dict)):
        return FrameError(
            bad,
            f"Key o must be a JSON object or a string holding one, not {_json_type(o)}",
            i,
            n_echo,
        )
    return _checked(Frame(m=doc["m"], i=i, n=n, o=o))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def encode(m: int, i: int, n: str, o: bytes | str) -> bytes:
    """Encode a frame; ``o`` is the already-encoded payload JSON, carried as a string."""
    if isinstance(o, bytes):
        o = o.decode()
    try:
        return _encoder.encode(Frame(m=m, i=i, n=n, o=o))
    except (msgspec.EncodeError, UnicodeEncodeError):
        # A function name with a lone surrogate cannot be echoed as UTF-8: escape it instead.
        safe = n.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        return _encoder.encode(Frame(m=m, i=i, n=safe, o=o))


def encode_reply(i: int, n: str, payload: object) -> bytes:
    """An m=1 reply carrying ``payload`` (a Struct, or a list for the functions answering one)."""
    return encode(MessageType.REPLY, i, n, _encoder.encode(payload))


def encode_event(n: str, payload: msgspec.Struct) -> bytes:
    """An m=3 event pushed by the server (``i`` is 0)."""
    return encode(MessageType.EVENT, 0, n, _encoder.encode(payload))


def encode_error(error: FrameError) -> bytes:
    """The m=5 answer to a frame that could not be routed."""
    response = StandardResponse.failure(error.code, error.detail)
    return encode(MessageType.ERROR, error.i, error.n, _encoder.encode(response))
