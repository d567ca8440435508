"""Logging: what may reach a log line, and in what shape.

Three layers keep secrets out:

1. Library loggers that would log frames (websockets) or SQL parameters (aiosqlite, asyncpg) are
   pinned above DEBUG, so turning on debug logging for oms-auth never turns on theirs.
2. Every request runs in a context that knows its own secrets (the password, code, answer, TOTP
   code and token it carries); any of them found in a line, a traceback included, is replaced.
3. Patterns catch the shapes of secrets from anywhere else: GUID codes, long tokens, base32 TOTP
   secrets, Argon2 hashes, and values of secret-named keys.

The redaction runs as a filter on our handler, so it covers every logger that reaches it.
Lines are text, or one JSON object each (``log_format = "json"``), with the request's
correlation id.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from secrets import token_hex
from typing import IO, Any

import msgspec

__all__ = [
    "pin_library_loggers",
    "setup_logging",
    "request_context",
    "redact",
    "RedactingFilter",
    "JsonFormatter",
    "correlation_id",
]

_PINNED = {"websockets": logging.INFO, "aiosqlite": logging.WARNING, "asyncpg": logging.WARNING}


class _Context(msgspec.Struct):
    cid: str
    secrets: tuple[str, ...]


_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "oms_auth_request", default=None
)

_SECRET_KEYS = r"password|pendingcode|securityquestionanswer|answer|sessiontoken|token|secret|code"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\$argon2(?:id|i|d)\$[^\s'\"]+"), "[hash]"),
    # A secret-named key and its value, also inside JSON carried in a string (\" quotes).
    (
        re.compile(
            rf"(?i)(\b(?:{_SECRET_KEYS})(?:\\?[\"'])?\s*[:=]\s*)"
            r"(?:\\?\"(?:[^\"\\]|\\.)*?\\?\"|'[^']*'|[^\s,;}&]+)"
        ),
        r"\1[redacted]",
    ),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
        "[code]",
    ),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])"), "[token]"),
    (re.compile(r"\b[A-Z2-7]{16,}={0,6}(?![A-Za-z0-9])"), "[secret]"),
]


def pin_library_loggers() -> None:
    for name, level in _PINNED.items():
        logging.getLogger(name).setLevel(level)


def correlation_id() -> str | None:
    ctx = _current.get()
    return ctx.cid if ctx else None


# Correlation ids: a random prefix per process and a counter, unique without a uuid4 per request.
_CID_PREFIX = token_hex(4)
_cid_counter = itertools.count(1)


def new_cid() -> str:
    return f"{_CID_PREFIX}{next(_cid_counter):x}"


@contextmanager
def request_context(secrets: Iterable[object] = (), cid: str | None = None) -> Iterator[str]:
    """Run a request: its correlation id, and the secrets no log line may show."""
    values = tuple(_strings(secrets))
    ctx = _Context(cid=cid or new_cid(), secrets=values)
    token = _current.set(ctx)
    try:
        yield ctx.cid
    finally:
        _current.reset(token)


def _strings(value: object) -> Iterator[str]:
    """Every non-empty string in a value (a payload's Questions hold their answers nested)."""
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    ctx = _current.get()
    known = [*secrets, *(ctx.secrets if ctx else ())]
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(set(known), key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "[secret]")
        folded = secret.strip().casefold()
        if len(folded) >= 3 and folded in text.casefold():
            text = re.sub(re.escape(folded), "[secret]", text, flags=re.IGNORECASE)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Renders each record's message and traceback once, redacted, before any formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        if not hasattr(record, "cid"):
            record.cid = correlation_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    _encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "cid", None)
        if cid:
            doc["cid"] = cid
        if record.exc_text:
            doc["exception"] = record.exc_text
        return self._encode(doc).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        cid = getattr(record, "cid", None)
        return line.replace(" | ", f" [{cid}] ", 1) if cid else line.replace(" | ", " ", 1)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Install the one handler: redacted, text or JSON lines, to stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s | %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    pin_library_loggers()
