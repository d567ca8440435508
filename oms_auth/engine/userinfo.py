"""Reading a user: GetUserInfo, GetUserPermissions, GetUserAccounts (docs/protocol.md,
"GetUserInfo, GetUserPermissions, GetUserAccounts").

The rules:

- The user named is the one answered: by ``UserId``, else ``UserName``, else ``Email`` (as the
  first of them given says); none of them given, the caller itself. A name that names no one,
  or a user of another OMS, is NotFound (104); never the caller instead.
- Who may read whom: a user itself; an Operator (on a key session, only with a key that holds
  it) any user of its OMS; a Trading user any user that shares one of its accounts. Anyone else
  is refused (20).
- The record tells what the store knows of the user and nothing secret: no hash, no salt,
  no pending code; its failed logins are the count of its login limit's window.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import InvalidValue, NotAuthorized, NotFound
from ..store import User
from .caller import Caller
from .deps import Deps
from .login_slots import LOGIN_FAILURE_USER
from .names import counter_key
from .texts import (
    AMBIGUOUS_EMAIL,
    INVALID_USER_ID,
    NOT_LOGGED_IN,
    ONLY_RELATED_USERS,
    USER_NOT_FOUND,
)
from .users import MAX_USER_ID, OPERATOR, TRADING, parse_user_id

__all__ = ["UserRecord", "Named", "readable_user", "user_record"]


class Named(NamedTuple):
    """How a request names a user: any of these, or none (the caller)."""

    user_id: int | str | None = None
    username: str | None = None
    email: str | None = None


class UserRecord(NamedTuple):
    """A user as GetUserInfo answers it: the user, the failed logins counted against it now,
    when its lock began (None: not locked) and whether it has security questions set."""

    user: User
    failed_logins: int
    locked_since: float | None
    has_questions: bool


async def _named(deps: Deps, caller: Caller, named: Named) -> User | None:
    """The user ``named`` names (the caller when nothing names one); None: no one there."""
    if named.user_id is not None and named.user_id != "":
        uid = parse_user_id(named.user_id)
        if uid is None:
            raise InvalidValue(INVALID_USER_ID)
        if uid == caller.id:
            return caller.user
        return await deps.store.user_by_id(uid) if 0 < uid <= MAX_USER_ID else None
    if named.username:
        return await deps.store.user_by_name(named.username)
    if named.email:
        found = await deps.store.users_by_email(caller.user.oms_id, named.email.strip())
        if len(found) > 1:
            # Only a caller that may read every user with it learns the Email is shared.
            if not all(_may_read(caller, user) for user in found):
                raise NotAuthorized(ONLY_RELATED_USERS)
            raise InvalidValue(AMBIGUOUS_EMAIL)
        return found[0] if found else None
    return caller.user


def _may_read(caller: Caller, target: User) -> bool:
    if target.id == caller.id or OPERATOR in caller.permissions:
        return True
    return TRADING in caller.permissions and bool(caller.user.accounts & target.accounts)


async def readable_user(deps: Deps, caller: Caller | None, named: Named) -> User:
    """The user ``named``, when ``caller`` may read it (the rules above)."""
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    target = await _named(deps, caller, named)
    if target is None or target.oms_id != caller.user.oms_id:
        raise NotFound(USER_NOT_FOUND)
    if _may_read(caller, target):
        return target
    raise NotAuthorized(ONLY_RELATED_USERS)


async def user_record(deps: Deps, caller: Caller | None, named: Named) -> UserRecord:
    """GetUserInfo: the user ``named`` with what its record shows."""
    user = await readable_user(deps, caller, named)
    now = deps.clock()
    s = deps.settings
    failed = await deps.store.event_count(
        LOGIN_FAILURE_USER,
        counter_key(deps.names_key, user.username),
        now - s.login_window_seconds,
    )
    since = None
    if user.locked(now) and user.locked_until is not None:
        since = user.locked_until - s.lockout_seconds  # the lock's start is not stored
    questions = await deps.store.security_questions(user.id)
    return UserRecord(user, failed, since, bool(questions))
