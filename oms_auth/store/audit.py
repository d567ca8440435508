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
- Every row names the key that chained it (``key_id``, docs/operations.md, "Rotating the
  service key"): rows are chained with the key ring's current key, and checked with the key
  they name, so the chain holds across rotations. A row without one (written before key ids)
  is checked with the ring's legacy key. The id is not part of the link: naming another key
  makes the row fail, since its hash was made with the one it named.

It sits above :mod:`.records` (it reads their fields; records know nothing of the chain).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .records import AuditEntry, AuditRow

__all__ = [
    "AuditCheck",
    "ChainKeys",
    "chain_hash",
    "chain_hasher",
    "check_chain",
    "expected_hash",
    "checked_audit_key",
    "chain_keys",
    "link_entries",
    "link_made",
    "rechain",
]

_canonical = msgspec.json.Encoder()


def chain_hash(key: bytes, prev_hash: str, *fields: object) -> str:
    """One link of the audit chain: HMAC-SHA256 under ``key`` (``crypto.audit_key``, derived
    from the service key) over the canonical JSON of the previous hash and the row's fields."""
    return chain_hasher(key)(prev_hash, *fields)


@functools.lru_cache(maxsize=8)  # a ring's few keys
def chain_hasher(key: bytes) -> Callable[..., str]:
    """:func:`chain_hash` under ``key``: the key's HMAC state is made once and copied for each
    row (an import links a row per user, a check walks the chain; making the state each time
    was a third of a link's cost)."""
    keyed = hmac.new(key, digestmod="sha256")
    encode = _canonical.encode

    def link(prev_hash: str, *fields: object) -> str:
        mac = keyed.copy()
        mac.update(encode([prev_hash, *fields]))
        return mac.hexdigest()

    return link


class ChainKeys(msgspec.Struct, frozen=True, kw_only=True):
    """The audit keys of a key ring (``crypto.audit_key`` of each key, retired ones kept):
    ``current`` chains new rows; ``by_id`` checks rows by the id they name; ``legacy`` checks
    rows that name none. Its repr names ids only."""

    current_id: str | None
    by_id: dict[str, bytes]
    legacy: bytes

    @property
    def current(self) -> bytes:
        return self.legacy if self.current_id is None else self.by_id[self.current_id]

    def for_row(self, key_id: str | None) -> bytes | None:
        """The key a row naming ``key_id`` was chained with (keys made from one bare key, with
        no ids, check every row with it); None when the ring does not hold it."""
        if key_id is None or not self.by_id:
            return self.legacy
        return self.by_id.get(key_id)

    def __repr__(self) -> str:
        return f"ChainKeys(current_id={self.current_id!r}, ids={sorted(self.by_id)})"


def chain_keys(key: bytes | ChainKeys) -> ChainKeys:
    """Audit keys as given, or one key alone (it checks and chains every row)."""
    return key if isinstance(key, ChainKeys) else ChainKeys(current_id=None, by_id={}, legacy=key)


def checked_audit_key(key: bytes | ChainKeys) -> ChainKeys:
    """A store's audit keys (:func:`chain_keys`), refused when a key cannot be one (e.g.
    empty)."""
    keys = chain_keys(key)
    for k in (keys.legacy, *keys.by_id.values()):
        if not isinstance(k, bytes) or len(k) != 32:
            raise ValueError("an audit key must be 32 bytes (crypto.audit_key of the service key)")
    if keys.current_id is not None and keys.current_id not in keys.by_id:
        raise ValueError("the current audit key is not among the audit keys")
    return keys


def link_entries(
    keys: bytes | ChainKeys, tail: Iterable[Any] | None, entries: Iterable[AuditEntry], now: float
) -> list[tuple[object, ...]]:
    """The rows that append ``entries``, all made at ``now``, after the chain's ``tail`` (its
    last ``(id, hash)``, None when empty), each ``(id, at, action, actor_id, target_id,
    target_name, source, detail, prev_hash, hash, key_id)``: what ``INSERT INTO audit``
    takes."""
    return link_made(keys, tail, ((now, e) for e in entries))


def link_made(
    keys: bytes | ChainKeys, tail: Iterable[Any] | None, made: Iterable[tuple[float, AuditEntry]]
) -> list[tuple[object, ...]]:
    """As :func:`link_entries`, each entry with the time it was made (rows written unlinked
    and linked later, as PostgreSQL's linker does: :mod:`.postgres_audit`)."""
    key, key_id = chain_keys(keys).current, chain_keys(keys).current_id
    last_id, prev = 0, ""
    if tail is not None:
        last, last_hash = tail
        last_id, prev = int(last), str(last_hash)
    rows: list[tuple[object, ...]] = []
    link = chain_hasher(key)
    for n, (at, e) in enumerate(made, start=last_id + 1):
        fields = (n, at, e.action, e.actor_id, e.target_id, e.target_name, e.source, e.detail)
        digest = link(prev, *fields)
        rows.append((*fields, prev, digest, key_id))
        prev = digest
    return rows


def rechain(keys: bytes | ChainKeys, rows: Iterable[Iterable[Any]]) -> list[tuple[str, str, int]]:
    """``(prev_hash, hash, id)`` for every row (audit columns, in id order), chained afresh
    under the legacy key (these rows name none): what a migration that (re-)chains an
    existing trail, before key ids, writes back."""
    link, prev, links = chain_hasher(chain_keys(keys).legacy), "", []
    for row in rows:
        fields = tuple(row)[:8]
        digest = link(prev, *fields)
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


def check_chain(rows: Iterable[AuditRow], keys: bytes | ChainKeys) -> AuditCheck:
    """Walk rows in id order; the first row whose link or hash (under the key it names) does
    not hold is reported."""
    prev, count, last_id = "", 0, 0
    keys = chain_keys(keys)
    for row in rows:
        if row.prev_hash != prev:
            reason = (
                "a row before it was deleted or edited"
                if row.id != last_id + 1
                else ("its link to the previous row does not match")
            )
            return AuditCheck(rows=count, last_hash=prev, bad_id=row.id, reason=reason)
        key = keys.for_row(row.key_id)
        if key is None:
            return AuditCheck(
                rows=count,
                last_hash=prev,
                bad_id=row.id,
                reason=f"it names key {row.key_id}, which the key ring does not hold",
            )
        if row.hash != expected_hash(row, key):
            return AuditCheck(
                rows=count,
                last_hash=prev,
                bad_id=row.id,
                reason="its content was changed after it was written",
            )
        prev, count, last_id = row.hash, count + 1, row.id
    return AuditCheck(rows=count, last_hash=prev)
