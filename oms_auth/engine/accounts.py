"""The account functions around a reset (docs/protocol.md, "Functions"): TOTP enrolment and removal,
security questions, invitations (CreateUser), forced logoff, locked users.

The rules:

- Who: the user itself, logged in with its password, changes its own two-factor
  authentication and security questions; a session opened with an API key cannot, and no one
  changes another user's (an Operator resets or unlocks them instead). CreateUser,
  ForceUserLogoff and GetLockedUsers are for a caller holding Operator (on a key session, only
  with a key that holds it), for users of its own OMS (users of other OMSs look missing).
- Fresh proof (docs/rules.md, "Fresh proof for account-security changes"):
  EnableGoogle2FA, and Disable2FA without a code, act only
  on a connection that proved the password within ``fresh_auth_seconds`` (or, EnableGoogle2FA, with
  the password given again); Disable2FA without a code also needs a TOTP code accepted on that
  connection in the last 10 minutes. SetSecurityQuestions always carries the password; a valid code
  is proof enough for Disable2FA.
- A secret is checked like a password: the current password (SetSecurityQuestions) and a TOTP
  code (Disable2FA, an enrolment's first code) take a slot of the login limits first, so a
  hijacked session cannot guess them faster than a login could. A TOTP time step accepted once
  is refused again, here as at login and reset.
- TOTP becomes active only when a code of the new secret proves the user holds it, on the
  connection that asked (its :class:`Enrolment`); enabling needs TOTP off first, so a hijacked
  session cannot swap in its own authenticator.
- Every change is one store transaction with its audit row and a notice mailed to the user
  (``Store.change_account``), so nothing weakens an account quietly; the write re-checks the
  caller's authority (its session, the password version the session was opened for, and for
  an Operator's change its permission) and the TOTP step it was decided on, so a reset or a
  logoff racing the change leaves nothing of it behind.
"""

from __future__ import annotations

import base64
import os
import unicodedata

import msgspec
import pyotp

from protocol.messages import LogoutReason

from ..errors import InvalidValue, NotAuthorized, NotFound, NotSupported, OperationFailed
from ..store import AccountChange, AuditEntry, Authority, CallerGone, Outcome, RecoveryUse, User
from . import totp, users
from .answers import normalize_answer
from .caller import Caller, guarded
from .deps import Deps
from .links import user_mail
from .recovery_codes import NO_FACTOR
from .sessions import Sessions
from .texts import (
    API_KEY_SESSION,
    AUTHORITY_GONE,
    CONFIRM_PASSWORD,
    ENROLMENT_NEEDS_CONNECTION,
    INVALID_2FA_CODE,
    INVALID_QUESTIONS,
    INVALID_SESSION,
    INVALID_USER_ID,
    NO_PENDING_2FA,
    NOT_LOGGED_IN,
    ONLY_OPERATORS,
    ONLY_OWN_SECURITY,
    TOTP_ALREADY_ON,
    TOTP_NOT_ON,
    TOTP_REQUIRED,
    TURN_ON_2FA_FIRST,
    USER_NOT_FOUND,
    WRONG_PASSWORD,
)
from .users import OPERATOR

__all__ = ["Accounts", "Enrolment", "Lock", "NewSecret", "ENROLMENT_SECONDS", "RECENT_2FA_SECONDS"]

# An enrolment's first code must follow within this long.
INVALID_ACCOUNT_ID = "Invalid value provided for AccountId"
ENROLMENT_SECONDS = 600.0
# Disable2FA needs no code this long after a 2FA on the same connection (docs/rules.md, "TOTP").
RECENT_2FA_SECONDS = 600.0
MAX_QUESTIONS = 3
MAX_QUESTION_LENGTH = 200
MAX_ANSWER_LENGTH = 200


class Enrolment(msgspec.Struct, frozen=True):
    """An EnableGoogle2FA waiting for its first code, held by the connection that asked. The
    secret is sealed (bound to the user), as in the store."""

    user_id: int
    sealed: bytes
    started_at: float

    def __repr__(self) -> str:
        return f"Enrolment(user_id={self.user_id}, <sealed>)"


class NewSecret(msgspec.Struct, frozen=True):
    """What EnableGoogle2FA shows the user, once: the otpauth URI and the same secret typed."""

    uri: str
    manual_code: str
    enrolment: Enrolment

    def __repr__(self) -> str:
        return f"NewSecret(user_id={self.enrolment.user_id}, <secret redacted>)"


class Lock(msgspec.Struct, frozen=True):
    """A locked user (GetLockedUsers), and when its lock began and ends."""

    user: User
    since: float
    until: float


class Accounts:
    """The account functions, for a :class:`~.caller.Caller` (None: not logged in)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.deps: Deps = sessions.deps

    # -- two-factor authentication ------------------------------------------------------------

    async def enable_totp(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        source: str,
        *,
        password: str | None = None,
    ) -> NewSecret:
        """EnableGoogle2FA: a new secret, active only once :meth:`confirm_totp` proves it."""
        if caller is not None and not caller.lasting:
            # Its first code must follow on the same connection: a lone request has none.
            raise NotSupported(ENROLMENT_NEEDS_CONNECTION)
        user = _own_security(caller, user_id).user
        if user.uses_totp:
            raise OperationFailed(TOTP_ALREADY_ON)
        assert caller is not None
        await self.sessions.prove(caller, password, source)
        d = self.deps
        secret = base64.b32encode(os.urandom(20)).decode()  # 160 bits, as RFC 4226 advises
        issuer = d.settings.totp_issuer
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=issuer)
        sealed = totp.seal_secret(d.sealer, user.id, secret)
        return NewSecret(uri, secret, Enrolment(user.id, sealed, d.clock()))

    async def confirm_totp(
        self,
        caller: Caller | None,
        enrolment: Enrolment | None,
        code: str | int | None,
        source: str,
    ) -> User:
        """Authenticate2FA after EnableGoogle2FA: a valid code of the new secret makes TOTP
        active (its step is the last accepted). Returns the user as it is now."""
        d = self.deps
        if caller is None or enrolment is None or enrolment.user_id != caller.id:
            raise NotAuthorized(NO_PENDING_2FA)
        if d.clock() - enrolment.started_at >= ENROLMENT_SECONDS:
            raise NotAuthorized(NO_PENDING_2FA)
        secret = totp.open_secret(d.sealer, caller.id, enrolment.sealed)
        step = (await self.sessions.check_totp(caller.user, secret, code, source)).step
        if step is None:  # only a code of the new secret proves it
            raise NotAuthorized(INVALID_2FA_CODE)
        await self._change(
            caller.user,
            "2fa-enabled",
            source,
            caller.authority(),
            totp_step=step,
            set_totp=True,
            totp_sealed=enrolment.sealed,
        )
        current = await d.store.user_by_id(caller.id)
        if current is None:
            raise NotAuthorized(INVALID_SESSION)
        return current

    async def disable_totp(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        code: str | int | None,
        source: str,
    ) -> None:
        """Disable2FA: with a current code (proof enough), or none on a connection that proved
        the password within ``fresh_auth_seconds`` and a code within 10 minutes."""
        me = _own_security(caller, user_id)
        user = me.user
        if user.totp_sealed is None:
            raise OperationFailed(TOTP_NOT_ON)
        factor = NO_FACTOR
        if code is not None and code != "":
            if totp.normalize_code(code) is None:
                raise NotAuthorized(TOTP_REQUIRED)
            secret = totp.open_secret(self.deps.sealer, user.id, user.totp_sealed)
            factor = await self.sessions.check_totp(user, secret, code, source)
        else:
            now = self.deps.clock()
            if not me.proved_within(self.deps.settings.fresh_auth_seconds, now):
                raise NotAuthorized(CONFIRM_PASSWORD)
            if not me.verified_within(RECENT_2FA_SECONDS, now):
                raise NotAuthorized(TOTP_REQUIRED)
        await self._change(
            user,
            "2fa-disabled",
            source,
            me.authority(),
            totp_step=factor.step,
            recovery=factor.recovery,
            set_totp=True,
            totp_sealed=None,
        )

    # -- security questions -------------------------------------------------------------------

    async def set_questions(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        password: str | None,
        questions: object,
        source: str,
    ) -> None:
        """SetSecurityQuestions: 1 to 3 questions replace the user's, with its password (the
        payload always carries it: proof enough)."""
        me = _own_security(caller, user_id)
        user = me.user
        wanted = _questions(questions)
        if not await self.sessions.recheck_password(user, password, source):
            raise NotAuthorized(WRONG_PASSWORD)
        hasher = self.deps.hasher
        hashed = tuple([(q, await hasher.hash(normalize_answer(a))) for q, a in wanted])
        await self._change(
            user,
            "questions-set",
            source,
            me.authority(),
            questions=hashed,
            detail=f"{len(hashed)} question(s)",
        )

    async def questions(self, caller: Caller | None, user_id: int | str | None) -> list[str]:
        """GetSecurityQuestions: the texts, never the answers."""
        me = _own(caller, user_id)
        return [q.question for q in await self.deps.store.security_questions(me.id)]

    # -- operators ------------------------------------------------------------------------------

    async def create_user(
        self,
        caller: Caller | None,
        username: str | None,
        email: str | None,
        account_id: int | None,
        permissions: list[str] | None,
        source: str,
        *,
        locale: str | None = None,
    ) -> int:
        """CreateUser: an invited user in the caller's OMS; the invitation goes out with it.
        The user is created only while the caller's session and Operator permission hold."""
        me = _operator(caller)
        operator = me.user
        granted = users.permission_names(permissions)
        if me.via_api_key and OPERATOR in granted:
            raise NotAuthorized(API_KEY_SESSION)
        if account_id is not None and not 0 < account_id <= users.MAX_USER_ID:
            raise InvalidValue(INVALID_ACCOUNT_ID)
        d = self.deps
        # Account ids are the caller's OMS's own (another OMS's account 7 is another account);
        # a taken or look-alike name is one refusal whatever OMS holds it (users.create_user).
        try:
            user_id = await users.create_user(
                d,
                username=username if isinstance(username, str) else "",
                email=email if isinstance(email, str) else "",
                password=None,
                oms=operator.oms_id,
                permissions=granted,
                accounts=() if account_id is None else (account_id,),
                locale=locale,
                actor_id=operator.id,
                source=source,
                authority=me.authority(OPERATOR),
            )
        except CallerGone:
            raise NotAuthorized(AUTHORITY_GONE) from None
        target = await d.store.user_by_id(user_id)
        assert target is not None
        await users.invite(d, target, actor_id=operator.id, source=source)
        d.events.count("users_created")
        return user_id

    async def force_logoff(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        username: str | None,
        source: str,
    ) -> None:
        """ForceUserLogoff: every session of the user ends, on every node, with a LogoutEvent
        (only while the caller's session and Operator permission hold)."""
        me = _operator(caller)
        d = self.deps
        if user_id is None and isinstance(username, str) and username.strip():
            target = await d.store.user_by_name(username)
            if target is None or target.oms_id != me.user.oms_id:
                raise NotFound(USER_NOT_FOUND)
        else:
            target = await users.visible_user(d, me, user_id)
        reason = LogoutReason.FORCED_LOGOFF
        await self._change(
            target,
            "forced-logoff",
            source,
            me.authority(OPERATOR),
            actor=me.user,
            end_sessions=reason,
        )
        d.events.sessions_ended(target.id, reason)

    async def locked_users(self, caller: Caller | None) -> list[Lock]:
        """GetLockedUsers: the caller's OMS's users locked now, with their locks."""
        me = _operator(caller)
        d = self.deps
        lockout = d.settings.lockout_seconds
        return [
            # The lock's start is not stored: it began lockout_seconds before it ends.
            Lock(u, u.locked_until - lockout, u.locked_until)
            for u in await d.store.locked_users(me.user.oms_id, d.clock())
            if u.locked_until is not None
        ]

    # -- helpers --------------------------------------------------------------------------------

    async def _change(
        self,
        user: User,
        action: str,
        source: str,
        authority: Authority,
        *,
        actor: User | None = None,
        detail: str | None = None,
        totp_step: int | None = None,
        set_totp: bool = False,
        totp_sealed: bytes | None = None,
        questions: tuple[tuple[str, str], ...] | None = None,
        end_sessions: str | None = None,
        recovery: RecoveryUse | None = None,
        recovery_codes: tuple[bytes, ...] | None = None,
    ) -> None:
        """Write the change with its audit row and the user's notice, while the caller's
        ``authority`` holds (its own changes: at the password version its session was opened
        for); its outcome as refusals."""
        d = self.deps
        now = d.clock()
        own = authority.user_id == user.id
        change = d.store.change_account(
            AccountChange(
                user_id=user.id,
                password_version=authority.password_version if own else None,
                totp_step=totp_step,
                set_totp=set_totp,
                totp_sealed=totp_sealed,
                questions=questions,
                end_sessions=end_sessions,
                authority=authority,
                recovery=recovery,
                recovery_codes=recovery_codes,
                audit=AuditEntry(
                    action=action,
                    actor_id=(actor or user).id,
                    target_id=user.id,
                    target_name=user.username,
                    source=source,
                    detail=detail,
                ),
                mail=user_mail(action, user, {"at": now}),
            ),
            now,
        )
        outcome = await guarded(change)
        if outcome is Outcome.STALE:  # the password changed: this session is no more
            raise NotAuthorized(INVALID_SESSION)
        if outcome is Outcome.REPLAYED:  # another login or change took this time step
            raise NotAuthorized(INVALID_2FA_CODE)
        if outcome is Outcome.INVALID and recovery_codes is not None:  # TOTP off meanwhile
            raise OperationFailed(TURN_ON_2FA_FIRST)
        if outcome is Outcome.INVALID:  # TOTP was turned on or off meanwhile
            raise OperationFailed(TOTP_NOT_ON if totp_sealed is None else TOTP_ALREADY_ON)
        d.events.count(action.replace("-", "_"))
        d.events.mail_queued()


def _own(caller: Caller | None, user_id: int | str | None) -> Caller:
    """The caller, asking about itself (no UserId, or its own)."""
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    if user_id is not None and user_id != "":
        uid = users.parse_user_id(user_id)
        if uid is None:
            raise InvalidValue(INVALID_USER_ID)
        if uid != caller.id:
            raise NotAuthorized(ONLY_OWN_SECURITY)
    return caller


def _own_security(caller: Caller | None, user_id: int | str | None) -> Caller:
    """The caller, who may change its own account security: logged in, not with an API key."""
    me = _own(caller, user_id)
    if me.via_api_key:
        raise NotAuthorized(API_KEY_SESSION)
    return me


def _operator(caller: Caller | None) -> Caller:
    if caller is None:
        raise NotAuthorized(NOT_LOGGED_IN)
    if OPERATOR not in caller.permissions:
        raise NotAuthorized(ONLY_OPERATORS)
    return caller


def _text(value: object, most: int) -> str | None:
    """A question's or answer's text trimmed, or None when empty, too long or not printable."""
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFC", value).strip()
    if not text or len(text) > most or not text.isprintable():
        return None
    return text


def _questions(given: object) -> list[tuple[str, str]]:
    """1 to 3 ``{Question, Answer}`` objects (keys case-insensitive), distinct questions."""
    if not isinstance(given, list) or not 1 <= len(given) <= MAX_QUESTIONS:
        raise InvalidValue(f"{INVALID_QUESTIONS}: give 1 to {MAX_QUESTIONS} questions")
    out: list[tuple[str, str]] = []
    for n, item in enumerate(given, 1):
        fields = {str(k).lower(): v for k, v in item.items()} if isinstance(item, dict) else {}
        question = _text(fields.get("question"), MAX_QUESTION_LENGTH)
        answer = _text(fields.get("answer"), MAX_ANSWER_LENGTH)
        if question is None:
            raise InvalidValue(f"{INVALID_QUESTIONS}: question {n} needs a Question text")
        if answer is None:
            raise InvalidValue(f"{INVALID_QUESTIONS}: question {n} needs an Answer")
        if any(question.casefold() == q.casefold() for q, _ in out):
            raise InvalidValue(f"{INVALID_QUESTIONS}: question {n} repeats an earlier one")
        out.append((question, answer))
    return out
