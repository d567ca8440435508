"""Putting a user back to a known state: ``oms-auth demo --reset`` puts the demo users back as
``oms-auth demo`` printed them, so a walk-through that changed a password can run again.

What it puts back, each through the store write the engine uses for it (so each is one
transaction with its audit row, and every node sharing the store hears of ended sessions):

- the password: a code issued and redeemed at once (:meth:`Store.complete_reset`), so every
  earlier link, session, pending second step and API key of the user ends as after any reset,
  and the user is mailed the usual notices; skipped when the password is still the one given.
  ``password=None`` makes the user invited again (no usable password) and mails a new
  invitation, voiding the older link;
- the lock and its failed attempts (:func:`.users.unlock`);
- two-factor authentication: the given TOTP secret, or none;
- the security questions: exactly the given ones (none: none);
- no recovery codes;
- every session and pending second step ended, and every API key removed.

:func:`forget_counters` clears what the limits count (reset requests, failed logins and
attempts, invalid codes), for every user and address of the store: the demo's own walk-through
requests a reset each time, and the limits would stop its fourth run within the hour.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.messages import LogoutReason

from ..crypto import digest, new_pending_code
from ..errors import OperationFailed
from ..store import (
    NO_PASSWORD,
    AccountChange,
    AuditEntry,
    CodeIssue,
    Outcome,
    PasswordReset,
    User,
)
from . import totp, users
from .answers import normalize_answer
from .deps import Deps
from .links import user_mail

__all__ = ["restore", "forget_counters"]


async def restore(
    deps: Deps,
    user: User,
    *,
    password: str | None,
    totp_secret: str | None = None,
    questions: Sequence[tuple[str, str]] = (),
    source: str = "cli",
) -> None:
    """Put ``user`` back: ``password`` (None: invited), ``totp_secret`` (None: TOTP off),
    exactly ``questions`` as (question, answer), unlocked, no session, no API key."""
    d = deps
    done = []  # what was put back, for the audit row
    if user.locked_until is not None:
        await users.unlock(d, user, actor_id=None, source=source)
        done.append("lock")
    if password is None:
        if not user.invited:
            await _set_password(d, user, NO_PASSWORD, source)
            done.append("invited again")
    elif user.invited or not await d.hasher.verify(user.password_hash, password):
        await _set_password(d, user, await d.hasher.hash(password), source)
        done.append("password")
    current = await d.store.user_by_id(user.id)
    assert current is not None
    if await _set_totp(d, current, totp_secret):
        done.append("TOTP")
    for key in await d.store.api_keys(user.id):
        await d.store.remove_api_key(
            user.id,
            key.key,
            LogoutReason.FORCED_LOGOFF,
            _entry("api-key-removed", current, source, f"key {key.key}"),
        )
    wanted = [(q, normalize_answer(a)) for q, a in questions]
    hashed = None
    if not await _same_questions(d, current, wanted):
        hashed = tuple([(q, await d.hasher.hash(a)) for q, a in wanted])
        done.append("questions")
    put_back = ", ".join(done) or "nothing changed"
    await d.store.change_account(
        AccountChange(
            user_id=user.id,
            password_version=None,
            questions=hashed,
            recovery_codes=(),
            end_sessions=LogoutReason.FORCED_LOGOFF,
            audit=_entry("restored", current, source, f"put back: {put_back}; sessions ended"),
        ),
        d.clock(),
    )
    d.events.sessions_ended(user.id, LogoutReason.FORCED_LOGOFF)
    if password is None:
        await users.invite(d, current, actor_id=None, source=source)


async def forget_counters(deps: Deps) -> None:
    """Every counted event of the store, and every code that can no longer be redeemed, goes
    (live links and sessions stay): the request and attempt limits start again from zero."""
    now = deps.clock()
    await deps.store.prune(now + 1, 0.0)
    await deps.store.audit([AuditEntry(action="counters-cleared", source="demo")], now)


def _entry(action: str, user: User, source: str, detail: str) -> AuditEntry:
    return AuditEntry(
        action=action, target_id=user.id, target_name=user.username, source=source, detail=detail
    )


async def _set_password(deps: Deps, user: User, password_hash: str, source: str) -> None:
    """A reset done at once: a code issued and redeemed, with the usual notices."""
    d = deps
    code, now = digest(new_pending_code()), d.clock()
    at = {"at": now}
    await d.store.issue_code(
        CodeIssue(
            user_id=user.id,
            digest=code,
            now=now,
            expires_at=now + 60,
            mail=user_mail("forced-logoff", user, at),
            audit=[_entry("reset-requested", user, source, "put back")],
        )
    )
    changed = {"changed_at": now, "api_keys": "revoked", "first": False}
    outcome = await d.store.complete_reset(
        PasswordReset(
            user_id=user.id,
            digest=code,
            password_hash=password_hash,
            now=now,
            mail=user_mail("password-changed", user, changed),
            audit=[_entry("password-set", user, source, "put back; API keys revoked")],
            revoke_api_keys=True,
        )
    )
    if outcome is not Outcome.DONE:  # locked again, or a reset of its own won meanwhile
        raise OperationFailed(f"the password of {user.username} could not be put back; try again")
    d.events.sessions_ended(user.id, LogoutReason.PASSWORD_CHANGED)
    d.events.mail_queued()


async def _set_totp(deps: Deps, user: User, secret: str | None) -> bool:
    """TOTP with ``secret`` (None: off); whether anything had to change."""
    d = deps
    if user.totp_sealed is None and secret is None:
        return False
    if user.totp_sealed is not None and secret is not None:
        if totp.open_secret(d.sealer, user.id, user.totp_sealed) == secret:
            return False
    sealed = None if secret is None else totp.seal_secret(d.sealer, user.id, secret)
    await d.store.set_totp(user.id, sealed)
    return True


async def _same_questions(deps: Deps, user: User, wanted: list[tuple[str, str]]) -> bool:
    have = await deps.store.security_questions(user.id)
    if [q.question for q in have] != [q for q, _ in wanted]:
        return False
    for question, (_, answer) in zip(have, wanted, strict=True):
        if not await deps.hasher.verify(question.answer_hash, answer):
            return False
    return True
