"""Where the store holds values sealed with the service key ring: one row of :data:`SEALED` per
column, so the re-seal pass and ``key retire``'s count cover a new sealed column by a new row
here (and its context in ``engine.reseal``) - docs/operations.md, "Rotating the service key".

A sealed value starts with the id of the key that sealed it (``keyring.sealed_prefix``), or
with none (sealed before ids, by the ring's legacy key). The statements here compare those
first bytes; ``substr`` on a BLOB (SQLite) or a BYTEA (PostgreSQL) counts bytes on both, so
each statement is one text.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["SealedColumn", "SEALED", "batch_sql", "count_sql", "reseal_sql"]


class SealedColumn(NamedTuple):
    name: str  # how /metrics and messages name it
    table: str
    column: str
    pk: str  # the row's key column
    first: int | str  # a value below every key (where a pass starts)
    fields: str  # the columns the seal's context is made of, in the engine's order


SEALED: Final = (
    SealedColumn("totp_secrets", "users", "totp_sealed", "id", 0, "id"),
    SealedColumn("api_secrets", "api_keys", "secret_sealed", "key", "", "user_id, key"),
    SealedColumn("queued_mail", "outbox", "sealed", "id", 0, "user_id, kind"),
)


def batch_sql(c: SealedColumn) -> str:
    """Up to ``?4`` rows after key ``?3`` whose value does not start with ``?2`` (``?1`` bytes
    long): ``pk, fields..., value``."""
    return (
        f"SELECT {c.pk}, {c.fields}, {c.column} FROM {c.table}"
        f" WHERE {c.column} IS NOT NULL AND substr({c.column}, 1, ?1) <> ?2 AND {c.pk} > ?3"
        f" ORDER BY {c.pk} LIMIT ?4"
    )


def count_sql(c: SealedColumn, *, legacy: bool) -> str:
    """How many values start with ``?2`` (``?1`` bytes long); with ``legacy``, also those
    that start with no key id at all (``?4``, ``?3`` bytes long: the ring's magic)."""
    named = f"substr({c.column}, 1, ?1) = ?2"
    if legacy:
        named = f"({named} OR substr({c.column}, 1, ?3) <> ?4)"
    return f"SELECT count(*) FROM {c.table} WHERE {c.column} IS NOT NULL AND {named}"


def reseal_sql(c: SealedColumn) -> str:
    """Replace value ``?2`` of row ``?3`` by ``?1``, only if it still holds ``?2``."""
    return f"UPDATE {c.table} SET {c.column} = ?1 WHERE {c.pk} = ?3 AND {c.column} = ?2"
