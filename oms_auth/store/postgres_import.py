"""``Store.import_users`` on PostgreSQL: a batch in a handful of statements, not a round trip
per row (docs/import.md, "Speed").

Each statement takes the batch's values as arrays and unnests them: one statement finds the
names already taken, one the look-alikes, one inserts the users and returns their ids, one each
the accounts, their links, the permissions, the questions and the sealed TOTP secrets. The
caller holds the transaction and the skeletons' advisory locks (as ``create_user`` takes them),
so no other node adds a clashing name meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import import_plan as plan
from . import sql as q
from .import_plan import Written
from .postgres_tx import ADVISORY_LOCK, lock_key
from .records import ImportItem, NewUser, username_key

__all__ = ["import_batch", "LOCK_ALL", "user_texts"]

Conn = Any  # an asyncpg connection inside a transaction

LOCK_ALL = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
_TAKEN = "SELECT username_key, email FROM users WHERE username_key = ANY($1::text[])"
_LOOKS = "SELECT name_skeleton, username_key FROM users WHERE name_skeleton = ANY($1::text[])"
_USERS = (
    "INSERT INTO users (username, username_key, email, email_verified, oms_id, account_id,"
    " password_hash, auth_source, active, master, locale, name_skeleton)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::bigint[],"
    " $6::bigint[], $7::text[], $8::text[], $9::boolean[], $10::boolean[], $11::text[],"
    " $12::text[]) RETURNING id, username_key"
)
_ACCOUNTS = (
    "INSERT INTO accounts (oms_id, id) SELECT * FROM unnest($1::bigint[], $2::bigint[])"
    " ON CONFLICT (oms_id, id) DO NOTHING"
)
_LINKS = (
    "INSERT INTO user_accounts (user_id, oms_id, account_id)"
    " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING"
)
_PERMISSIONS = (
    "INSERT INTO user_permissions (user_id, permission)"
    " SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING"
)
_QUESTIONS = (
    "INSERT INTO security_questions (user_id, question, answer_hash)"
    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])"
)
_HIGHEST = plan.HIGHEST_ACCOUNT.replace("?", "$1")
_TOTP = (
    "UPDATE users SET totp_sealed = t.sealed"
    " FROM unnest($1::bytea[], $2::bigint[]) AS t(sealed, id) WHERE users.id = t.id"
)


def _columns(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    return [[row[n] for row in rows] for n in range(width)]


async def import_batch(conn: Conn, schema: str, batch: Sequence[ImportItem]) -> Written:
    """Write the batch's fresh users (:mod:`.import_plan` decides)."""
    of = plan.names(batch)
    taken = [tuple(r) for r in await conn.fetch(_TAKEN, of.keys)]
    looks = [tuple(r) for r in await conn.fetch(_LOOKS, of.skeletons)]
    found = plan.conflicts(batch, of, taken, looks)
    fresh = [item.user for item, clash in zip(batch, found, strict=True) if clash is None]
    highest = {}
    for oms in plan.needing_accounts(fresh):  # held until commit: no other import takes it
        await conn.execute(ADVISORY_LOCK, lock_key(schema, f"accounts:{oms}"))
        highest[oms] = int(await conn.fetchval(_HIGHEST, oms))
    fresh = plan.with_new_accounts(fresh, highest)
    ids: dict[str, int] = {}
    if fresh:
        rows = [q.user_args(user) for user in fresh]
        ids = {key: int(uid) for uid, key in await conn.fetch(_USERS, *_columns(rows, 12))}
        ordered = [ids[username_key(user.username)] for user in fresh]
        statements = (_ACCOUNTS, _LINKS, _PERMISSIONS, _QUESTIONS)
        for statement, values in zip(statements, plan.dependents(ordered, fresh), strict=True):
            if values:
                await conn.execute(statement, *_columns(values, len(values[0])))
    result = plan.written(batch, found, ids, of)
    if result.sealed:
        await conn.execute(_TOTP, *_columns(result.sealed, 2))
    return result


def user_texts(user: NewUser) -> list[str]:
    """A new user's texts (PostgreSQL's text holds no NUL)."""
    return [
        user.username,
        user.email,
        *user.permissions,
        *(question for question, _ in user.questions),
    ]
