"""The SQL both stores share: statement texts written once, their arguments, and row mappers.

- :class:`Statements`: every statement both stores run, in SQLite's ``?`` form. :data:`SQLITE`
  is it as written; :data:`POSTGRES` is the same texts put through :func:`to_dollar` once, at
  import. The one select whose text differs by dialect (the user's permission and account lists:
  ``group_concat`` vs ``ARRAY``) is built from one template with each dialect's fragment.
- Argument builders (``*_args``) for the statements that take several, so both stores bind the
  same values in the same order; a reset code's states come from :mod:`.codes`, never a literal.
- Mappers (``to_*``) from a row, as either driver returns it, to a record: in :mod:`.rows`,
  named here too.
- :func:`audit_query`: the audit trail's filter.

Not here, on purpose: statements that only one store runs, or whose text differs by more than
placeholders because of how that store holds its rules under concurrency (``FOR UPDATE``, ``FOR
SHARE``, ``SKIP LOCKED``, advisory locks, ``NOTIFY``, ``rowid``/``ctid``, ``max``/``greatest``).
Those stay in the store, beside the locking they serve. Pure: no I/O, no driver import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from . import codes
from .codes import Move
from .records import (
    ApiKey,
    Authority,
    MailItem,
    MailState,
    NewUser,
    username_key,
    username_skeleton,
)
from .recovery import LEFT_COLUMN as LEFT
from .rows import (
    SEP,
    Row,
    mail_counts,
    to_api_key,
    to_audit,
    to_code,
    to_outbox,
    to_question,
    to_session,
    to_user,
)

__all__ = [
    "Row",
    "SEP",
    "to_dollar",
    "Statements",
    "SQLITE",
    "POSTGRES",
    "AUDIT_COLUMNS",
    "OUTBOX_COLUMNS",
    "user_args",
    "names_of",
    "account_args",
    "user_account_args",
    "mail_args",
    "code_args",
    "move_codes_args",
    "live_code_args",
    "redeem_args",
    "api_key_args",
    "authority_args",
    "prune_plan",
    "audit_query",
    "to_user",
    "to_session",
    "to_question",
    "to_code",
    "mail_counts",
    "to_outbox",
    "to_audit",
    "to_api_key",
]


_DIGITS = "0123456789"


def to_dollar(sql: str) -> str:
    """A statement with SQLite's ``?`` placeholders in PostgreSQL's ``$n`` form.

    Numbered as SQLite numbers them: ``?NNN`` is parameter NNN, and a bare ``?`` is one more than
    the largest number given so far, so both databases bind the same arguments to the same
    places. Text inside quotes ('literals', "identifiers") is left alone. A ``$`` outside quotes
    is refused: the statement would not mean the same on both."""
    out: list[str] = []
    top, quote, i, n = 0, "", 0, len(sql)
    while i < n:
        c = sql[i]
        if quote:
            if c == quote:
                quote = ""  # a doubled quote closes and reopens: still inside, as it should be
        elif c in "'\"":
            quote = c
        elif c == "$":
            raise ValueError(f"a $ outside quotes in {sql!r}: write placeholders as ?")
        elif c == "?":
            j = i + 1
            while j < n and sql[j] in _DIGITS:
                j += 1
            number = int(sql[i + 1 : j]) if j > i + 1 else top + 1
            if number < 1:
                raise ValueError(f"?{number} in {sql!r}: parameters are numbered from 1")
            top = max(top, number)
            out.append(f"${number}")
            i = j
            continue
        out.append(c)
        i += 1
    if quote:
        raise ValueError(f"an unclosed {quote} in {sql!r}")
    return "".join(out)


# A link's columns (re-chaining migrations read only these); rows also name their key_id.
CHAIN_COLUMNS: Final = (
    "id, at, action, actor_id, target_id, target_name, source, detail, prev_hash, hash"
)
AUDIT_COLUMNS: Final = CHAIN_COLUMNS + ", key_id"
# What a claim of due mail returns (attempts as they are after the claim counted itself).
OUTBOX_COLUMNS: Final = (
    "id",
    "kind",
    "recipient",
    "user_id",
    "public",
    "sealed",
    "attempts",
    "created_at",
)


def _user_select(permissions: str, accounts: str) -> dict[str, Any]:
    select = (
        "SELECT u.id, u.username, u.email, u.email_verified, u.oms_id, u.account_id,"
        " u.password_hash, u.totp_sealed, u.auth_source, u.active, u.master, u.last_login,"
        f" u.locked_until, {permissions}, {accounts}, u.password_version, u.totp_last_step,"
        " u.locale, u.created_at"
        " FROM users u"
    )
    return {
        "user_by_id": select + " WHERE u.id = ?",
        "user_by_name": select + " WHERE u.username_key = ?",
        "users": select + " ORDER BY u.id",
        "users_after": select + " WHERE u.id > ? ORDER BY u.id LIMIT ?",
        "users_locked": select + " WHERE u.oms_id = ? AND u.locked_until > ? ORDER BY u.id",
        # An OMS's users with an email, whatever its case (at most two: one, or ambiguous).
        "users_by_email": select
        + " WHERE u.oms_id = ? AND lower(u.email) = lower(?) ORDER BY u.id LIMIT 2",
        # A user by id and a user by name key in one read (a caller and whom it asks about),
        # each row with its name key last, to tell which is which.
        "user_and_named": select.replace(" FROM users u", ", u.username_key FROM users u")
        + " WHERE u.id = ? OR u.username_key = ?",
    }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Statements:
    """Every statement both stores run, by what it does. The defaults are the texts; only the
    user selects are given, per dialect (:func:`_user_select`)."""

    # users
    user_by_id: str
    user_by_name: str
    users: str
    users_after: str
    users_locked: str
    users_by_email: str
    user_and_named: str
    username_taken: str = "SELECT 1 FROM users WHERE username_key = ?"
    # Another user whose name looks the same (the same skeleton, another key).
    username_lookalike: str = (
        "SELECT 1 FROM users WHERE name_skeleton = ? AND username_key <> ? LIMIT 1"
    )
    unskeletoned: str = "SELECT id, username FROM users WHERE name_skeleton IS NULL"
    set_skeleton: str = "UPDATE users SET name_skeleton = ? WHERE id = ?"
    clear_skeletons: str = "UPDATE users SET name_skeleton = NULL"
    insert_user: str = (
        "INSERT INTO users (username, username_key, email, email_verified, oms_id, account_id,"
        " password_hash, auth_source, active, master, locale, name_skeleton)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
    )
    # Accounts are per OMS (docs/rules.md, "Usernames"): an OMS's account 7 is
    # its own, whoever else has one numbered 7 (account_args, user_account_args).
    insert_account: str = (
        "INSERT INTO accounts (oms_id, id) VALUES (?, ?) ON CONFLICT (oms_id, id) DO NOTHING"
    )
    insert_user_account: str = (
        "INSERT INTO user_accounts (user_id, oms_id, account_id) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING"
    )
    insert_permission: str = (
        "INSERT INTO user_permissions (user_id, permission) VALUES (?, ?) ON CONFLICT DO NOTHING"
    )
    insert_question: str = (
        "INSERT INTO security_questions (user_id, question, answer_hash) VALUES (?, ?, ?)"
    )
    questions: str = (
        "SELECT id, question, answer_hash FROM security_questions WHERE user_id = ? ORDER BY id"
    )
    set_totp: str = "UPDATE users SET totp_sealed = ? WHERE id = ?"
    account_state: str = (
        "SELECT password_version, totp_last_step, totp_sealed IS NOT NULL FROM users WHERE id = ?"
    )
    delete_questions: str = "DELETE FROM security_questions WHERE user_id = ?"
    set_lock: str = "UPDATE users SET locked_until = ? WHERE id = ?"
    locked_until: str = "SELECT locked_until FROM users WHERE id = ?"
    # A caller's authority (records.Authority), re-checked inside a write made for it: its
    # session still exists, its password is still that session's version, and (unless the
    # permission given is NULL) it still holds that permission.
    authority_holds: str = (
        "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.digest = ? AND s.user_id = ? AND u.password_version = ?"
        " AND (CAST(? AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM user_permissions p"
        " WHERE p.user_id = s.user_id AND p.permission = ?))"
    )
    # sessions and second login steps
    login_state: str = (
        f"SELECT password_version, totp_last_step, locked_until, {LEFT} FROM users WHERE id = ?"
    )
    set_totp_step: str = "UPDATE users SET totp_last_step = ? WHERE id = ?"
    set_last_login: str = "UPDATE users SET last_login = ? WHERE id = ?"
    rehash_password: str = "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?"
    insert_session: str = (
        "INSERT INTO sessions (digest, user_id, created_at, last_seen, api_key)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    session: str = "SELECT user_id, created_at, last_seen, api_key FROM sessions WHERE digest = ?"
    delete_session: str = "DELETE FROM sessions WHERE digest = ?"
    delete_user_sessions: str = "DELETE FROM sessions WHERE user_id = ?"
    insert_pending_login: str = (
        "INSERT INTO pending_logins (digest, user_id, password_version, created_at)"
        " VALUES (?, ?, ?, ?)"
    )
    pending_login_attempt: str = (
        "UPDATE pending_logins SET attempts = attempts + 1 WHERE digest = ?"
        " AND attempts < ? AND created_at > ? RETURNING user_id, password_version"
    )
    delete_pending_login: str = "DELETE FROM pending_logins WHERE digest = ?"
    delete_user_pending_logins: str = "DELETE FROM pending_logins WHERE user_id = ?"
    # API keys (api_key_args, to_api_key)
    insert_api_key: str = (
        "INSERT INTO api_keys (key, user_id, permissions, secret_sealed, created_at)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    api_key: str = (
        "SELECT key, user_id, permissions, secret_sealed, created_at FROM api_keys WHERE key = ?"
    )
    user_api_keys: str = (
        "SELECT key, user_id, permissions, secret_sealed, created_at"
        " FROM api_keys WHERE user_id = ? ORDER BY id"
    )
    count_user_api_keys: str = "SELECT count(*) FROM api_keys WHERE user_id = ?"
    # A key login's transaction holds the key's row (still the user's; a removal waits), then
    # records its nonce's digest: of logins racing with one nonce, on any node, one inserts it.
    hold_api_key: str = "UPDATE api_keys SET user_id = user_id WHERE key = ? AND user_id = ?"
    record_nonce: str = (
        "INSERT INTO api_key_nonces (key, digest) VALUES (?, ?) ON CONFLICT DO NOTHING"
    )
    # Before the key itself (the sessions' foreign key would take them silently otherwise).
    delete_api_key_sessions: str = (
        "DELETE FROM sessions WHERE api_key = ? AND user_id = ? RETURNING digest"
    )
    delete_api_key: str = "DELETE FROM api_keys WHERE key = ? AND user_id = ?"
    delete_user_api_keys: str = "DELETE FROM api_keys WHERE user_id = ?"
    # counted events
    count_events_since: str = "SELECT count(*) FROM events WHERE kind = ? AND key = ? AND at > ?"
    insert_event: str = "INSERT INTO events (kind, key, at) VALUES (?, ?, ?)"
    # A limit's slot: its event (?1, ?2 at ?3) inserted only while fewer than ?5 of the
    # counter's events fall in the window (after ?4); no row inserted means the limit is used
    # up. The count and the slot are one statement so that a transaction can be sent whole,
    # with no trip back to the node between counting and writing (docs/performance.md).
    insert_event_in_room: str = (
        "INSERT INTO events (kind, key, at) SELECT ?1, ?2, CAST(?3 AS DOUBLE PRECISION)"
        " WHERE (SELECT count(*) FROM (SELECT 1 FROM events"
        " WHERE kind = ?1 AND key = ?2 AND at > ?4 LIMIT ?5) AS held) < ?5"
    )
    # A login attempt's counters (docs/rules.md, "Fair limits"): every event within the window,
    # and those of them still in flight (taken since ?1, the rest count as failures).
    count_attempts_since: str = (
        "SELECT count(*), coalesce(sum(CASE WHEN in_flight = 1 AND at > ?1 THEN 1 ELSE 0 END), 0)"
        " FROM events WHERE kind = ?2 AND key = ?3 AND at > ?4"
    )
    insert_attempt: str = "INSERT INTO events (kind, key, at, in_flight) VALUES (?, ?, ?, 1)"
    # Failures only: attempts still in flight keep their slots until they end.
    clear_events: str = "DELETE FROM events WHERE kind = ? AND key = ? AND in_flight = 0"
    # reset codes: states bound from .codes (move_codes_args, live_code_args, redeem_args)
    insert_code: str = (
        "INSERT INTO reset_codes (digest, user_id, created_at, expires_at, state)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    # CAST: PostgreSQL needs the type of a parameter it only sees compared with NULL.
    live_code: str = (
        "SELECT user_id, created_at, expires_at, state FROM reset_codes"
        " WHERE digest = ? AND state = ? AND expires_at > ?"
        " AND (CAST(? AS BIGINT) IS NULL OR user_id = ?)"
    )
    move_user_codes: str = "UPDATE reset_codes SET state = ? WHERE user_id = ? AND state = ?"
    redeem_code: str = (
        "UPDATE reset_codes SET state = ? WHERE digest = ? AND user_id = ?"
        " AND state = ? AND expires_at > ?"
    )
    reset_state: str = (
        f"SELECT locked_until, totp_last_step, totp_sealed, {LEFT} FROM users WHERE id = ?"
    )
    set_password: str = (
        "UPDATE users SET password_hash = ?, locked_until = NULL,"
        " password_version = password_version + 1,"
        " totp_last_step = coalesce(?, totp_last_step) WHERE id = ?"
    )
    # mail outbox (its states: records.MailState)
    insert_mail: str = (
        "INSERT INTO outbox (kind, recipient, user_id, public, sealed, created_at, due_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    mail_sent: str = (
        f"UPDATE outbox SET state = '{MailState.SENT}', sealed = NULL, sent_at = ?,"
        " last_error = NULL, claimed = 0 WHERE id = ?"
    )
    mail_given_up: str = (
        f"UPDATE outbox SET state = '{MailState.FAILED}', sealed = NULL, last_error = ?,"
        " claimed = 0 WHERE id = ?"
    )
    mail_retry: str = "UPDATE outbox SET due_at = ?, last_error = ?, claimed = 0 WHERE id = ?"
    reclaim_mail: str = (
        f"UPDATE outbox SET due_at = ?, claimed = 0 WHERE state = '{MailState.QUEUED}'"
        " AND claimed = 1"
    )
    # A stopping node's claim given back (it was neither delivered nor retried): due at once.
    hand_back_mail: str = (
        f"UPDATE outbox SET due_at = ?, claimed = 0 WHERE id = ? AND state = '{MailState.QUEUED}'"
        " AND claimed = 1"
    )
    mail_counts: str = "SELECT state, count(*) FROM outbox GROUP BY state"
    # audit
    audit_tail: str = "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"
    insert_audit: str = (
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    audit_chain: str = f"SELECT {CHAIN_COLUMNS} FROM audit ORDER BY id"
    relink_audit: str = "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?"
    # housekeeping (prune_plan)
    prune_events: str = "DELETE FROM events WHERE at < ?"
    prune_sessions: str = "DELETE FROM sessions WHERE last_seen < ?"
    prune_pending_logins: str = "DELETE FROM pending_logins WHERE created_at < ?"
    prune_codes: str = (
        "DELETE FROM reset_codes WHERE (state <> ? OR expires_at < ?) AND created_at < ?"
    )

    # The PostgreSQL dialect: ``$n`` placeholders (placeholders), and text that holds no NUL,
    # so event keys (only ever compared) are escaped one-to-one (event_key) and text for people
    # shows U+FFFD instead (text).
    is_postgres: bool = False

    def text(self, value: str | None) -> str | None:
        """Text as this dialect stores it: on PostgreSQL a NUL shows as U+FFFD (text for people,
        such as an audit filter's name, is not compared one-to-one)."""
        if self.is_postgres and value is not None and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value

    def placeholders(self, sql: str) -> str:
        """A statement built at run time (``?`` form) in this dialect's placeholders."""
        return to_dollar(sql) if self.is_postgres else sql

    def event_key(self, key: str) -> str:
        """An event's key as this dialect stores it."""
        if self.is_postgres and "\x00" in key:
            return key.replace("\\", "\\\\").replace("\x00", "\\0")
        return key

    def converted(self, convert: Callable[[str], str]) -> Statements:
        """The same statements, each put through ``convert``."""
        texts: dict[str, Any] = {
            f.name: convert(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), str)
        }
        return dataclasses.replace(self, **texts)


SQLITE: Final = Statements(
    **_user_select(
        f"(SELECT group_concat(permission, '{SEP}') FROM user_permissions p"
        " WHERE p.user_id = u.id)",
        f"(SELECT group_concat(account_id, '{SEP}') FROM user_accounts a WHERE a.user_id = u.id)",
    )
)
POSTGRES: Final = Statements(
    **_user_select(
        "ARRAY(SELECT permission FROM user_permissions p WHERE p.user_id = u.id)",
        "ARRAY(SELECT account_id FROM user_accounts a WHERE a.user_id = u.id)",
    ),
    is_postgres=True,
).converted(to_dollar)

# -- arguments ---------------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def names_of(username: str) -> tuple[str, str]:
    """A username's key (how the store finds it) and skeleton (what look-alikes share)."""
    return username_key(username), username_skeleton(username)


def user_args(user: NewUser, names: tuple[str, str] | None = None) -> tuple[object, ...]:
    """``insert_user``'s arguments: the name trimmed, its key, the first account as the
    user's own. ``names``: the name's key and skeleton, when the caller computed them."""
    key, skeleton = names or names_of(user.username)
    return (
        user.username.strip(),
        key,
        user.email,
        user.email_verified,
        user.oms_id,
        user.accounts[0] if user.accounts else None,
        user.password_hash,
        user.auth_source,
        user.active,
        user.master,
        user.locale,
        skeleton,
    )


def account_args(user: NewUser) -> list[tuple[object, ...]]:
    """``insert_account``'s arguments: the user's accounts, in its OMS."""
    return [(user.oms_id, account) for account in user.accounts]


def user_account_args(user_id: int, user: NewUser) -> list[tuple[object, ...]]:
    """``insert_user_account``'s arguments: the new user's links to its OMS's accounts."""
    return [(user_id, user.oms_id, account) for account in user.accounts]


def mail_args(mail: MailItem, now: float) -> tuple[object, ...]:
    """``insert_mail``'s arguments: due at once."""
    public = _json.encode(mail.public).decode()
    return (mail.kind, mail.recipient, mail.user_id, public, mail.sealed, now, now)


def code_args(digest: bytes, user_id: int, now: float, expires_at: float) -> tuple[object, ...]:
    """``insert_code``'s arguments: a new code, in the state codes are issued in."""
    return (digest, user_id, now, expires_at, codes.ISSUED.value)


def move_codes_args(move: Move, user_id: int) -> tuple[object, ...]:
    """``move_user_codes``'s arguments: ``move`` applied to every code of the user it
    applies to."""
    return (move.target.value, user_id, move.source.value)


def live_code_args(digest: bytes, now: float, user_id: int | None) -> tuple[object, ...]:
    """``live_code``'s arguments: a code that can still be redeemed (for ``user_id``, when
    given)."""
    return (digest, codes.REDEEM.source.value, now, user_id, user_id)


def redeem_args(digest: bytes, user_id: int, now: float) -> tuple[object, ...]:
    """``redeem_code``'s arguments: the redemption move, for an unexpired code of the user."""
    return (codes.REDEEM.target.value, digest, user_id, codes.REDEEM.source.value, now)


def authority_args(authority: Authority) -> tuple[object, ...]:
    """``authority_holds``'s arguments."""
    a = authority
    return (a.session, a.user_id, a.password_version, a.permission, a.permission)


def api_key_args(key: ApiKey) -> tuple[object, ...]:
    """``insert_api_key``'s arguments: the permissions as a JSON list (the same on both)."""
    permissions = _json.encode(list(key.permissions)).decode()
    return (key.key, key.user_id, permissions, key.secret_sealed, key.created_at)


def prune_plan(
    s: Statements, events_before: float, sessions_idle_since: float
) -> list[tuple[str, tuple[object, ...]]]:
    """What ``prune`` runs: old events, idle sessions and second steps, and codes that can no
    longer be redeemed (moved on, or expired) created before ``events_before``."""
    live = codes.REDEEM.source.value
    return [
        (s.prune_events, (events_before,)),
        (s.prune_sessions, (sessions_idle_since,)),
        (s.prune_pending_logins, (sessions_idle_since,)),
        (s.prune_codes, (live, events_before, events_before)),
    ]


def skeleton_backfill(rows: Iterable[Row]) -> list[tuple[object, ...]]:
    """``set_skeleton``'s arguments for the ``unskeletoned`` rows."""
    return [(username_skeleton(row[1]), row[0]) for row in rows]


def audit_query(
    *,
    user: str | None,
    since: float | None,
    until: float | None,
    limit: int | None,
    oldest_first: bool,
    recorded_as: str | None = None,
) -> tuple[str, list[object]]:
    """The audit rows a filter selects, in ``?`` form: ``user`` matches the target's or the
    actor's username (or a target name, for a user who never existed, or as ``recorded_as``
    says such a name is recorded), ``since``/``until`` bound the time; newest first unless
    ``oldest_first``."""
    where: list[str] = []
    params: list[object] = []
    if user is not None:
        key = username_key(user)
        where.append(
            "(target_id IN (SELECT id FROM users WHERE username_key = ?)"
            " OR actor_id IN (SELECT id FROM users WHERE username_key = ?)"
            " OR lower(target_name) IN (?, ?))"
        )
        params += [key, key, key, username_key(recorded_as or user)]
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if until is not None:
        where.append("at < ?")
        params.append(until)
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id" + ("" if oldest_first else " DESC")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params
