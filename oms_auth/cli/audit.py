"""``oms-auth audit``: the audit trail on a terminal (one safe line a row), verified, or exported
as JSON lines."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..engine import names
from ..engine.deps import Deps

__all__ = ["audit"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _printable(text: str) -> str:
    """Audit text as one line a terminal shows as is: what is not printable (C0, DEL, C1, format
    characters such as U+202E, line and paragraph separators, ...) and the backslash itself
    are escaped, Python-style (``\\n``, ``\\x1b``, ``\\u202e``), so nothing in a row written
    by a client can break the line, recolour the terminal or reorder what follows."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape_char(ch) for ch in text)


def _json_line(record: dict[str, Any]) -> str:
    """One JSON object on one line. JSON escapes C0 and quotes; DEL, C1, U+2028/U+2029 and
    format characters would pass raw (and split the line for some readers), so they are
    written as ``\\uXXXX`` too (only strings can hold them: the text decodes the same)."""
    text = msgspec.json.encode(record).decode()
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        else:
            data = ch.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{int.from_bytes(data[i : i + 2]):04x}" for i in range(0, len(data), 2))
    return "".join(out)


async def audit(deps: Deps, args: argparse.Namespace) -> int:
    if args.action == "verify":
        check = await deps.store.verify_audit()
        if check.ok:
            print(f"audit trail intact: {check.rows} rows, last hash {check.last_hash or '-'}")
            return 0
        print(
            f"audit trail BROKEN at row {check.bad_id}: {check.reason} "
            f"({check.rows} rows before it are intact)"
        )
        return 1
    oldest_first = args.action == "export"
    recorded_as = None
    if args.user is not None and await deps.store.user_by_name(args.user) is None:
        recorded_as = names.unknown_name(deps.names_key, args.user)  # how it is recorded
    rows = await deps.store.audit_rows(
        user=args.user,
        recorded_as=recorded_as,
        since=args.since,
        until=args.until,
        limit=None if oldest_first else args.limit,
        oldest_first=oldest_first,
    )
    if oldest_first:
        for row in rows:
            record = msgspec.structs.asdict(row)
            record["time"] = _iso(row.at)
            sys.stdout.write(_json_line(record) + "\n")
        return 0
    for row in rows:
        at = datetime.fromtimestamp(row.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts = [at, _printable(row.action)]
        for label, value in (
            ("actor", row.actor_id),
            ("target", row.target_id),
            ("name", row.target_name),
            ("source", row.source),
            ("detail", row.detail),
        ):
            if value is not None:
                shown = _printable(value) if isinstance(value, str) else value
                parts.append(f"{label}={shown}")
        print(" ".join(parts))
    return 0
