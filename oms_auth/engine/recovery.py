"""The way back for a user who lost the phone (docs/protocol.md, "Recovery codes and
ResetUser2FA"): CreateRecoveryCodes, GetRecoveryCodesLeft, ResetUser2FA.

The rules:

- Recovery codes belong to a user with TOTP on, who makes them itself: logged in with its
  password (not on a session opened with an API key), with fresh proof (docs/rules.md, "Fresh
  proof for account-security changes"). A new set is shown once, voids the earlier one and
  is written with its audit row and a notice to the user, while the caller's session holds.
  How codes are made, stored and used: :mod:`.recovery_codes`.
- ResetUser2FA is the support path when the user has neither phone nor codes: an Operator of
  the user's OMS, with fresh proof and not on a key session, turns its TOTP off (its codes with
  it) and ends its sessions on every node (LogoutEvent ``ForcedLogoff``), in one transaction
  with the audit row and the mail to the user, as ForceUserLogoff does.
"""

from __future__ import annotations

from protocol.messages import LogoutReason

from ..errors import InvalidValue, NotAuthorized, OperationFailed
from . import recovery_codes, users
from .accounts import Accounts
from .caller import Caller
from .texts import (
    API_KEY_SESSION,
    INVALID_USER_ID,
    NOT_LOGGED_IN,
    ONLY_OPERATORS,
    TOTP_NOT_ON,
    TURN_ON_2FA_FIRST,
)
from .users import OPERATOR

__all__ = ["Recovery"]


class Recovery(Accounts):
    """Recovery codes and the Operator's 2FA reset, written as every account change is."""

    async def create_codes(
        self, caller: Caller | None, source: str, *, password: str | None = None
    ) -> list[str]:
        """CreateRecoveryCodes: a new set, shown once (only its digests are kept)."""
        me = _security_caller(caller)
        if not me.user.uses_totp:
            raise OperationFailed(TURN_ON_2FA_FIRST)
        await self.sessions.prove(me, password, source)
        codes = recovery_codes.new_codes()
        bare = [code.replace("-", "") for code in codes]
        digests = tuple(recovery_codes.code_digest(self.deps, me.id, b) for b in bare)
        await self._change(
            me.user,
            "recovery-codes-created",
            source,
            me.authority(),
            recovery_codes=digests,
            detail=f"{len(digests)} codes",
        )
        return codes

    async def codes_left(self, caller: Caller | None) -> int:
        """GetRecoveryCodesLeft: the caller's unused codes (0 without any)."""
        if caller is None:
            raise NotAuthorized(NOT_LOGGED_IN)
        return await self.deps.store.recovery_codes_left(caller.id)

    async def reset_user_2fa(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        source: str,
        *,
        password: str | None = None,
    ) -> None:
        """ResetUser2FA: the user's TOTP and recovery codes removed, its sessions ended
        everywhere, the user mailed (only while the caller's session and Operator hold)."""
        me = _security_caller(caller)
        if OPERATOR not in me.permissions:
            raise NotAuthorized(ONLY_OPERATORS)
        if users.parse_user_id(user_id) is None:
            raise InvalidValue(INVALID_USER_ID)
        target = await users.visible_user(self.deps, me, user_id)
        if target.totp_sealed is None:
            raise OperationFailed(TOTP_NOT_ON)
        await self.sessions.prove(me, password, source)
        reason = LogoutReason.FORCED_LOGOFF
        await self._change(
            target,
            "2fa-reset",
            source,
            me.authority(OPERATOR),
            actor=me.user,
            set_totp=True,
            totp_sealed=None,
            end_sessions=reason,
        )
        self.deps.events.sessions_ended(target.id, reason)


def _security_caller(caller: Caller | None) -> Caller:
    """A logged-in caller that may change account security: not on an API-key session."""
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    if caller.via_api_key:
        raise NotAuthorized(API_KEY_SESSION)
    return caller
