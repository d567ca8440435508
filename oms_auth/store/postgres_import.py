"""``Store.import_users`` on PostgreSQL: a batch in a handful of statements, not a round trip
per row (docs/import.md, "Speed").

Each statement takes the batch's values in one parameter (a JSON text, or arrays for the rare
permissions, questions and sealed secrets): one statement finds the names already taken, one
the look-alikes, one inserts the users and returns their ids, one each the accounts, their
links, the permissions, the questions and the sealed TOTP secrets. The
caller holds the transaction and the skeletons' advisory locks (as ``create_user`` takes them),
so no other node adds a clashing name meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from . import import_plan as plan
from . import sql as q
from .import_plan import Written
from .postgres_tx import ADVISORY_LOCK, lock_key
from .records import ImportItem, NewUser, username_key

__all__ = ["import_batch", "LOCK_ALL", "user_texts"]

Conn = Any  # an asyncpg connection inside a transaction
_encoder = msgspec.json.Encoder()

# Each statement takes the batch as one JSON text (msgspec encodes it; the server unpacks it),
# not as arrays: asyncpg checks every element of an array parameter in Python, which cost the
# import a quarter of its CPU (docs/performance.md, "Importing users").
_ANY = "ANY(ARRAY(SELECT json_array_elements_text($1::json)))"
LOCK_ALL = (
    "SELECT pg_advisory_xact_lock(k) FROM"
    " (SELECT json_array_elements_text($1::json)::bigint AS k) AS locks ORDER BY k"
)
_TAKEN = "SELECT username_key, email FROM users WHERE username_key = " + _ANY
_LOOKS = "SELECT name_skeleton, username_key FROM users WHERE name_skeleton = " + _ANY
_USER_COLUMNS = (
    "username text, username_key text, email text, email_verified boolean, oms_id bigint,"
    " account_id bigint, password_hash text, auth_source text, active boolean, master boolean,"
    " locale text, name_skeleton text"
)
_USER_NAMES = [column.split()[0] for column in _USER_COLUMNS.split(", ")]
_USERS = (
    f"INSERT INTO users ({', '.join(_USER_NAMES)})"
    f" SELECT * FROM json_to_recordset($1::json) AS t({_USER_COLUMNS}) RETURNING id, username_key"
)
_ACCOUNTS = (
    "INSERT INTO accounts (oms_id, id) SELECT (a->>0)::bigint, (a->>1)::bigint"
    " FROM json_array_elements($1::json) AS a ON CONFLICT (oms_id, id) DO NOTHING"
)
_LINKS = (
    "INSERT INTO user_accounts (user_id, oms_id, account_id)"
    " SELECT (a->>0)::bigint, (a->>1)::bigint, (a->>2)::bigint"
    " FROM json_array_elements($1::json) AS a ON CONFLICT DO NOTHING"
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


def _json(values: object) -> str:
    return _encoder.encode(values).decode()


def _columns(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    return [[row[n] for row in rows] for n in range(width)]


async def import_batch(conn: Conn, schema: str, batch: Sequence[ImportItem]) -> Written:
    """Write the batch's fresh users (:mod:`.import_plan` decides)."""
    of = plan.names(batch)
    taken = [tuple(r) for r in await conn.fetch(_TAKEN, _json(of.keys))]
    looks = [tuple(r) for r in await conn.fetch(_LOOKS, _json(of.skeletons))]
    found = plan.conflicts(batch, of, taken, looks)
    fresh = [item.user for item, clash in zip(batch, found, strict=True) if clash is None]
    highest = {}
    for oms in plan.needing_accounts(fresh):  # held until commit: no other import takes it
        await conn.execute(ADVISORY_LOCK, lock_key(schema, f"accounts:{oms}"))
        highest[oms] = int(await conn.fetchval(_HIGHEST, oms))
    fresh = plan.with_new_accounts(fresh, highest)
    both = zip(of.keys, of.skeletons, strict=True)
    pairs = [n for n, clash in zip(both, found, strict=True) if clash is None]
    ids: dict[str, int] = {}
    if fresh:
        args = [q.user_args(user, n) for user, n in zip(fresh, pairs, strict=True)]
        rows = [dict(zip(_USER_NAMES, a, strict=True)) for a in args]
        ids = {key: int(uid) for uid, key in await conn.fetch(_USERS, _json(rows))}
        ordered = [ids[username_key(user.username)] for user in fresh]
        accounts, links, *others = plan.dependents(ordered, fresh)
        for statement, values in ((_ACCOUNTS, accounts), (_LINKS, links)):
            if values:
                await conn.execute(statement, _json(values))
        for statement, values in zip((_PERMISSIONS, _QUESTIONS), others, strict=True):
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
