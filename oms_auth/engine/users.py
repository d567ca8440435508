"""User administration: creating a user and ending a lockout, for every caller alike.

The command line (``oms-auth user add|unlock``), the demo, the tests and the scripts create
users here; the UnlockUser function and ``oms-auth user unlock`` end a lock here. Refusals are
:class:`~oms_auth.errors.InvalidValue` with a text that names the problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidValue, NotAuthorized, NotFound, OperationFailed
from ..store import (
    NO_PASSWORD,
    AuditEntry,
    Authority,
    NewUser,
    User,
    UsernameConfusable,
    UsernameTaken,
)
from . import totp
from .answers import normalize_answer
from .deps import Deps
from .links import issue_link
from .names import check_email, check_locale, check_username
from .passwords import POLICIES
from .texts import (
    INVALID_PERMISSIONS,
    INVALID_TOTP_SECRET,
    INVALID_USER_ID,
    NOT_LOGGED_IN,
    ONLY_OWN_USER,
    QUESTION_WITHOUT_ANSWER,
    USER_NOT_FOUND,
    USERNAME_NOT_AVAILABLE,
)

if TYPE_CHECKING:
    from .caller import Caller

__all__ = [
    "create_user",
    "checked_user",
    "check_secrets",
    "check_factors",
    "invite",
    "unlock",
    "permission_name",
    "permission_names",
    "parse_user_id",
    "visible_user",
    "MAX_USER_ID",
    "OPERATOR",
    "TRADING",
]

OPERATOR = "Operator"
TRADING = "Trading"
MAX_USER_ID = 2**63 - 1
_DECIMAL = re.compile(r"\s*\+?[0-9]{1,40}\s*")
MAX_PERMISSIONS = 16
MAX_PERMISSION_LENGTH = 64

# Operator and Trading are matched whatever the case they were typed in.
_KNOWN_PERMISSIONS = {"operator": "Operator", "trading": "Trading"}


def permission_name(name: str) -> str:
    return _KNOWN_PERMISSIONS.get(name.strip().lower(), name.strip())


def permission_names(given: Sequence[object] | None) -> tuple[str, ...]:
    """Permission names (CreateUser, AddUserAPIKey) trimmed, known ones in their usual case,
    without repeats; InvalidValue for anything but up to 16 short printable names."""
    if given is None:
        return ()
    if len(given) > MAX_PERMISSIONS:
        raise InvalidValue(INVALID_PERMISSIONS)
    out: list[str] = []
    for raw in given:
        name = permission_name(raw) if isinstance(raw, str) else ""
        if not name or len(name) > MAX_PERMISSION_LENGTH or not name.isprintable():
            raise InvalidValue(INVALID_PERMISSIONS)
        if name not in out:
            out.append(name)
    return tuple(out)


async def create_user(
    deps: Deps,
    *,
    username: str,
    email: str,
    password: str | None,
    oms: int = 1,
    permissions: Sequence[str] = (),
    accounts: Sequence[int] = (),
    master: bool = False,
    totp_secret: str | None = None,
    question: str | None = None,
    answer: str | None = None,
    auth_source: str = "native",
    active: bool = True,
    locale: str | None = None,
    actor_id: int | None = None,
    source: str = "cli",
    authority: Authority | None = None,
) -> int:
    """Create a user (the first of ``accounts``, this OMS's account ids, is its default);
    returns its UserId. Without a password the user is invited: it has no usable password
    until it follows the link :func:`invite` mails it. A taken name, or one that looks like a
    taken one, is OperationFailed "That username is not available", whatever OMS holds it.
    ``authority``: the caller's, re-checked as it is written."""
    new = checked_user(
        username=username,
        email=email,
        oms=oms,
        permissions=permissions,
        accounts=accounts,
        master=master,
        auth_source=auth_source,
        active=active,
        locale=locale,
    )
    username = new.username
    check_secrets(deps, username, password, totp_secret, question, answer)
    if password is not None:
        new.password_hash = await deps.hasher.hash(password)
    if question is not None and answer is not None:
        new.questions = ((question, await deps.hasher.hash(normalize_answer(answer))),)
    created = AuditEntry(
        action="user-created", actor_id=actor_id, target_name=username, source=source
    )
    user_id = await _insert(deps, new, created, authority)
    if totp_secret is not None:
        await deps.store.set_totp(user_id, totp.seal_secret(deps.sealer, user_id, totp_secret))
    return user_id


def checked_user(
    *,
    username: str,
    email: str,
    oms: int = 1,
    permissions: Sequence[object] = (),
    accounts: Sequence[int] = (),
    master: bool = False,
    auth_source: str = "native",
    active: bool = True,
    locale: str | None = None,
    email_verified: bool = False,
) -> NewUser:
    """A new user's values as every way of creating one checks them (``user add``,
    CreateUser, ``user import``): InvalidValue naming what is wrong. No password yet."""
    return NewUser(
        username=check_username(username),
        email=check_email(email),
        password_hash=NO_PASSWORD,
        oms_id=oms,
        permissions=permission_names(list(permissions)),
        accounts=tuple(accounts),
        master=master,
        auth_source=auth_source,
        active=active,
        email_verified=email_verified,
        locale=check_locale(locale),
    )


def check_secrets(
    deps: Deps,
    username: str,
    password: str | None,
    totp_secret: str | None,
    question: str | None,
    answer: str | None,
) -> None:
    """InvalidValue for a password the policy refuses, a question without its answer (or the
    reverse), or a TOTP secret too short to be one."""
    if password is not None:
        broken = POLICIES[deps.settings.password_policy].refusal(password, username)
        if broken is not None:
            raise InvalidValue(broken)
    check_factors(totp_secret, question, answer)


def check_factors(totp_secret: str | None, question: str | None, answer: str | None) -> None:
    """:func:`check_secrets` without a password: what needs no settings (an import's reading
    process checks its rows with it)."""
    if (question is None) != (answer is None):
        raise InvalidValue(QUESTION_WITHOUT_ANSWER)
    if totp_secret is not None and not totp.valid_secret(totp_secret):
        raise InvalidValue(INVALID_TOTP_SECRET)


async def _insert(deps: Deps, new: NewUser, audit: AuditEntry, authority: Authority | None) -> int:
    """The store's insert; a taken or look-alike name is one refusal. The store tells the two
    apart (and says whose name it is) only to its own callers: here neither is said, so an
    Operator learns nothing of the usernames other OMSs hold."""
    try:
        return await deps.store.create_user(new, audit, authority=authority)
    except (UsernameTaken, UsernameConfusable):
        raise OperationFailed(USERNAME_NOT_AVAILABLE) from None


async def invite(deps: Deps, target: User, *, actor_id: int | None, source: str) -> None:
    """Mail the user a link to set its first password, valid ``invite_valid_seconds``; a
    newer invitation voids the older link."""
    await issue_link(
        deps,
        target,
        deps.clock(),
        AuditEntry(
            action="invited",
            actor_id=actor_id,
            target_id=target.id,
            target_name=target.username,
            source=source,
        ),
    )


async def unlock(
    deps: Deps,
    target: User,
    *,
    actor_id: int | None,
    source: str,
    authority: Authority | None = None,
) -> None:
    """End the user's lockout and clear its failed attempts (audited); with the caller's
    ``authority`` (UnlockUser), re-checked in the same transaction."""
    await deps.store.set_lock(
        target.id,
        None,
        AuditEntry(
            action="unlocked",
            actor_id=actor_id,
            target_id=target.id,
            target_name=target.username,
            source=source,
        ),
        authority=authority,
    )


def parse_user_id(value: int | str | None) -> int | None:
    """UserId as an integer or a decimal string; None when it is neither. Out-of-range
    integers are kept (no code can belong to them)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return None


async def visible_user(
    deps: Deps, caller: Caller | None, user_id: int | str | None, others: str = ONLY_OWN_USER
) -> User:
    """The user a caller asks about (GetUserInfo, the API-key functions): itself (no UserId,
    or its own), or for a caller holding Operator (on a key session, only with a key that
    holds it) any user of its OMS (users of other OMSs look missing); ``others`` is the
    refusal for anyone else asking about another user."""
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    uid = caller.id if user_id is None or user_id == "" else parse_user_id(user_id)
    if uid is None:
        raise InvalidValue(INVALID_USER_ID)
    if uid == caller.id:
        return caller.user
    if OPERATOR not in caller.permissions:
        raise NotAuthorized(others)
    target = await deps.store.user_by_id(uid) if 0 < uid <= MAX_USER_ID else None
    if target is None or target.oms_id != caller.user.oms_id:
        raise NotFound(USER_NOT_FOUND)
    return target
