"""The audit trail's keyed hash chain: computing links, linking new rows, walking the chain.

Pure computation, no SQL and no I/O; both stores call it inside the transaction that reads the
chain's tail (how they keep the tail from moving meanwhile is theirs: the SQLite writer, a
PostgreSQL advisory lock).

Rules:

- A row's ``hash`` is HMAC-SHA256 under the audit key (``crypto.audit_key``, derived from the
  service key) over the canonical JSON of ``[prev_hash, id, at, action, actor_id, target_id,
  target_name, source, detail]``; ``prev_hash`` is the previous row's ``hash`` ("" for the
  first). An edited row, or a deleted one before it, breaks the chain from there on, and without
  the key nobody can re-hash it.
- Ids are consecutive from 1, so a deleted row shows as a gap.

It sits above :mod:`.records` (it reads their fields; records know nothing of the chain).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import msgspec

from .records import AuditEntry, AuditRow

__all__ = [
    "AuditCheck",
    "chain_hash",
    "check_chain",
    "expected_hash",
    "checked_audit_key",
    "link_entries",
    "rechain",
]

_canonical = msgspec.json.Encoder()


def chain_hash(key: bytes, prev_hash: str, *fields: object) -> str:
    """One link of the audit chain: HMAC-SHA256 under ``key`` (``crypto.audit_key``, derived
    from the service key) over the canonical JSON of the previous hash and the row's fields."""
    return hmac.new(key, _canonical.encode([prev_hash, *fields]), hashlib.sha256).hexdigest()


def checked_audit_key(key: bytes) -> bytes:
    """A store's audit key, refused when it cannot be one (e.g. empty)."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("the audit key must be 32 bytes (crypto.audit_key of the service key)")
    return key


def link_entries(
    key: bytes, tail: Iterable[Any] | None, entries: Iterable[AuditEntry], now: float
) -> list[tuple[object, ...]]:
    """The rows that append ``entries`` after the chain's ``tail`` (its last ``(id, hash)``,
    None when empty), each ``(id, at, action, actor_id, target_id, target_name, source,
    detail, prev_hash, hash)``: what ``INSERT INTO audit`` takes."""
    last_id, prev = 0, ""
    if tail is not None:
        last, last_hash = tail
        last_id, prev = int(last), str(last_hash)
    rows: list[tuple[object, ...]] = []
    for n, e in enumerate(entries, start=last_id + 1):
        fields = (n, now, e.action, e.actor_id, e.target_id, e.target_name, e.source, e.detail)
        digest = chain_hash(key, prev, *fields)
        rows.append((*fields, prev, digest))
        prev = digest
    return rows


def rechain(key: bytes, rows: Iterable[Iterable[Any]]) -> list[tuple[str, str, int]]:
    """``(prev_hash, hash, id)`` for every row (audit columns, in id order), chained afresh
    under ``key``: what a migration that (re-)chains an existing trail writes back."""
    prev, links = "", []
    for row in rows:
        fields = tuple(row)[:8]
        digest = chain_hash(key, prev, *fields)
        links.append((prev, digest, int(fields[0])))
        prev = digest
    return links


class AuditCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of walking the audit chain."""

    rows: int
    last_hash: str
    bad_id: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.bad_id is None


def expected_hash(row: AuditRow, key: bytes) -> str:
    """What a row's ``hash`` must be: its link over the previous row's hash and its fields."""
    return chain_hash(
        key,
        row.prev_hash,
        row.id,
        row.at,
        row.action,
        row.actor_id,
        row.target_id,
        row.target_name,
        row.source,
        row.detail,
    )


def check_chain(rows: Iterable[AuditRow], key: bytes) -> AuditCheck:
    """Walk rows in id order; the first row whose link or hash (under ``key``) does not hold
    is reported."""
    prev, count, last_id = "", 0, 0
    for row in rows:
        if row.prev_hash != prev:
            reason = (
                "a row before it was deleted or edited"
                if row.id != last_id + 1
                else ("its link to the previous row does not match")
            )
            return AuditCheck(rows=count, last_hash=prev, bad_id=row.id, reason=reason)
        if row.hash != expected_hash(row, key):
            return AuditCheck(
                rows=count,
                last_hash=prev,
                bad_id=row.id,
                reason="its content was changed after it was written",
            )
        prev, count, last_id = row.hash, count + 1, row.id
    return AuditCheck(rows=count, last_hash=prev)
