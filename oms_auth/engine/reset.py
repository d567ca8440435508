"""The shared password-reset engine (docs/rules.md, "Who may start a reset" to "Lockout").

Every way into a reset meets the same rules here: who may start one (``request``), the public first
step (``request_anonymously``), what the link's page needs (``requirements``), and the second step
(``complete``) with its checks in the order docs/rules.md gives. Nothing here knows about WebSocket;
refusals are raised as values of :mod:`oms_auth.errors`.

A request by a logged-in caller (a :class:`~.caller.Caller`) is decided on its permissions (a key
session: its key's, and never for another user) and issued only while they hold: the code's
transaction re-checks the caller's session and, for another user, the permission the decision
rested on (:meth:`.caller.Caller.authority`). UnlockUser likewise.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from protocol.messages import LogoutReason

from ..crypto import digest
from ..errors import InvalidValue, NotAuthorized, NotFound, OperationFailed
from ..store import (
    RESET_FAILURE,
    AuditEntry,
    Authority,
    Claim,
    Factors,
    Outcome,
    PasswordReset,
    ResetCode,
    SecurityQuestion,
    User,
)
from . import recovery_codes, totp, users
from .answers import normalize_answer
from .background import Bounded, Refused
from .caller import Caller, guarded
from .deps import Deps
from .links import issue_link, user_mail
from .names import counter_key, recorded_name
from .passwords import POLICIES, Policy
from .recovery_codes import NO_FACTOR, Factor
from .texts import (
    ACCOUNT_LOCKED,
    API_KEY_SESSION,
    CONTACT_SUPPORT,
    INVALID_2FA_CODE,
    INVALID_ANSWER,
    INVALID_PASSWORD,
    INVALID_RECOVERY_KEY,
    INVALID_USER_ID,
    INVALID_USERNAME,
    NEEDS_SECURITY_QUESTIONS,
    NO_PERMISSION_FOR_USER,
    ONLY_OPERATORS_UNLOCK,
    SELF_SERVICE_OFF,
    TOO_MANY_INVALID_KEYS,
    TOO_MANY_RESETS,
    TOTP_REQUIRED,
    USER_NOT_FOUND,
    USERNAME_NOT_FOUND,
    federated_refusal,
)
from .users import MAX_USER_ID, OPERATOR, TRADING, parse_user_id

__all__ = ["Requirements", "Resets", "Unread"]


# Counters (store event kinds). Self-service and authenticated requests count apart, so
# anonymous traffic can never use up an Operator's requests for a user.
REQUESTS_ANONYMOUS = "reset-request-anonymous"
REQUESTS_AUTHENTICATED = "reset-request-authenticated"
REQUESTS_FROM_SOURCE = "reset-request-source"
INVALID_CODES_FROM_SOURCE = "invalid-code-source"


class _Slot:
    """One of the user's lockout slots, held by a ResetPassword2 attempt that checks a
    secret: ``kept`` once a wrong secret made it the failure it counts."""

    __slots__ = ("claim", "source", "at", "kept")

    def __init__(self, claim: Claim, source: str, at: float) -> None:
        self.claim, self.source, self.at, self.kept = claim, source, at, False


class Requirements(msgspec.Struct, frozen=True):
    user_id: int
    question: str | None
    requires_totp: bool
    rules: list[str]
    expires_at: float
    username: str
    locale: str | None  # the user's own; None: the page picks the browser's


class Unread(enum.Enum):
    """``Resets.request``'s target when none was read with the caller."""

    UNREAD = "unread"


class Resets:
    """The reset engine. Self-service requests wait in a bounded queue (``drain()`` waits for
    it)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        s = deps.settings
        # One address may hold no more of the queue than its per-address limit would let
        # through anyway, so a flood from one address cannot crowd out everyone else's.
        self._background: Bounded[tuple[str, str]] = Bounded(
            self._anonymous,
            cap=s.self_service_queue,
            share=s.reset_requests_per_source,
            workers=s.self_service_workers,
            name="self-service-reset",
        )

    @property
    def policy(self) -> Policy:
        return POLICIES[self.deps.settings.password_policy]

    # -- the first step -----------------------------------------------------------------------

    async def request(
        self,
        caller: Caller | None,
        username: str | None,
        source: str,
        *,
        target: User | None | Unread = Unread.UNREAD,
    ) -> None:
        """ResetPassword. Returns when the answer may be success; raises a Refusal otherwise.
        A session opened with an API key may not start a reset for another user (docs/rules.md,
        "Sessions"). ``target``: the user named ``username`` when the server read it with the
        caller's user (one read, ``Store.user_and_named``); a logged-in caller's only."""
        if not isinstance(username, str) or not username.strip():
            raise InvalidValue(INVALID_USERNAME)
        if caller is None:
            if not self.deps.settings.self_service_reset:
                raise NotAuthorized(SELF_SERVICE_OFF)
            # The answer goes out now; the work goes on in the background, so neither the
            # answer nor its timing says whether the user exists. Nothing here looks at the
            # user; a request the queue refuses gets the same answer and is counted.
            refused = self._background.offer(source, (username, source))
            if refused is Refused.SHARE:
                self.deps.events.count("resets_throttled")
            elif refused is Refused.FULL:
                self.deps.events.count("self_service_dropped")
            return
        if isinstance(target, Unread):
            target = await self.deps.store.user_by_name(username)
        await self._authenticated(caller, target, username, source)

    async def drain(self) -> None:
        """Wait until every queued self-service request is done (shutdown, tests)."""
        await self._background.drain()

    async def _authenticated(
        self, caller: Caller, target: User | None, username: str, source: str
    ) -> None:
        d, s = self.deps, self.deps.settings
        now = d.clock()

        async def refused(reason: str) -> None:
            await self._refused(caller.user, target, username, source, reason, now)

        if caller.via_api_key and (target is None or target.id != caller.id):
            # The same answer whether the user exists or not.
            await refused("API key session")
            raise NotAuthorized(API_KEY_SESSION)

        if OPERATOR in caller.permissions:
            if target is None or target.oms_id != caller.user.oms_id:
                await refused("no such user in the OMS")
                raise NotFound(USERNAME_NOT_FOUND)
        elif target is None or not self._may_reset(caller, target):
            await refused("not permitted")
            raise NotAuthorized(NO_PERMISSION_FOR_USER)
        refusal = await self._ineligible(target)
        if refusal is not None:
            await refused(refusal)
            raise OperationFailed(refusal)
        # The request's slot is taken in the transaction that issues the code: one store job,
        # which re-checks the caller's authority first.
        issue = issue_link(
            d,
            target,
            now,
            AuditEntry(
                action="reset-requested",
                actor_id=caller.id,
                target_id=target.id,
                target_name=target.username,
                source=source,
            ),
            Claim(
                REQUESTS_AUTHENTICATED,
                counter_key(d.names_key, username),
                s.reset_window_seconds,
                s.reset_requests_per_user,
            ),
            authority=self._authority(caller, target),
        )
        if not await guarded(issue):
            await refused("too many requests")
            raise OperationFailed(TOO_MANY_RESETS)

    @staticmethod
    def _may_reset(caller: Caller, target: User) -> bool:
        if caller.id == target.id:
            return True
        return (
            TRADING in caller.permissions
            and caller.user.oms_id == target.oms_id
            and bool(caller.user.accounts & target.accounts)
        )

    @staticmethod
    def _authority(caller: Caller, target: User) -> Authority:
        """What issuing the code re-checks: the caller's session, and for another user the
        permission that let it ask (Operator, else Trading)."""
        if target.id == caller.id:
            return caller.authority()
        return caller.authority(OPERATOR if OPERATOR in caller.permissions else TRADING)

    async def _anonymous(self, request: tuple[str, str]) -> None:
        """A self-service request, in the background (its answer went out already)."""
        username, source = request
        d, s = self.deps, self.deps.settings
        now = d.clock()

        async def refused(reason: str, target: User | None = None) -> None:
            await self._refused(None, target, username, source, reason, now)

        # Throttled requests are counted, not audited one by one: a flood would otherwise
        # write a row per request (and the trail is never pruned).
        # Both counters in one store job, all or none; whether or not the user exists.
        window = s.reset_window_seconds
        if (
            await d.store.reserve(
                [
                    Claim(REQUESTS_FROM_SOURCE, source, window, s.reset_requests_per_source),
                    Claim(
                        REQUESTS_ANONYMOUS,
                        counter_key(d.names_key, username),
                        window,
                        s.reset_requests_per_user,
                    ),
                ],
                now,
            )
            is None
        ):
            d.events.count("resets_throttled")
            return
        target = await d.store.user_by_name(username)
        if target is None:
            return await refused("no such user")
        refusal = await self._ineligible(target)
        if refusal is not None:
            return await refused(refusal, target)
        await issue_link(
            d,
            target,
            now,
            AuditEntry(
                action="reset-requested",
                target_id=target.id,
                target_name=target.username,
                source=source,
                detail="self-service",
            ),
        )

    async def _refused(
        self,
        caller: User | None,
        target: User | None,
        username: str,
        source: str,
        reason: str,
        now: float,
    ) -> None:
        """Record why a ResetPassword was refused (audit trail and metrics). Throttled
        self-service requests do not come here: they are only counted."""
        self.deps.events.count("resets_refused")
        entry = AuditEntry(
            action="reset-refused",
            actor_id=caller.id if caller else None,
            target_id=target.id if target else None,
            target_name=recorded_name(self.deps, username, target),
            source=source,
            detail=reason,
        )
        await self.deps.store.audit([entry], now)

    async def _ineligible(self, target: User) -> str | None:
        """Why this user's password cannot be reset here, in the seeds' words, or None."""
        federated = federated_refusal(target.auth_source)
        if federated is not None:
            return federated
        if not target.active:
            return CONTACT_SUPPORT
        # A master user who has logged in must answer a question during the reset, so one
        # without questions cannot reset (a new master user, never logged in, can).
        if target.master and target.last_login is not None:
            if not await self.deps.store.security_questions(target.id):
                return NEEDS_SECURITY_QUESTIONS
        return None

    # -- the link ------------------------------------------------------------------------------

    async def _valid_code(
        self,
        code: Any,
        source: str,
        user_id: int | None = None,
        attempt: Claim | None = None,
        now: float | None = None,
    ) -> tuple[ResetCode, bytes]:
        """The pending, unexpired code (of ``user_id``, when given), or 104: one text for
        every way it is not. An invalid code counts against the address, never the user
        (anyone can send one), in the transaction that reads the address's count; so does
        the ``attempt`` slot, taken while the code is still pending (101 locked when none is
        left)."""
        d, s = self.deps, self.deps.settings
        key = digest(code) if isinstance(code, str) and code else None
        if user_id is not None and not 0 < user_id <= MAX_USER_ID:
            key = user_id = None  # no code belongs to an id the store cannot hold
        outcome, record = await d.store.check_code(
            key,
            user_id,
            d.clock() if now is None else now,
            Claim(
                INVALID_CODES_FROM_SOURCE,
                source,
                s.reset_window_seconds,
                s.invalid_codes_per_source,
            ),
            attempt,
        )
        if outcome is Outcome.THROTTLED:
            raise OperationFailed(TOO_MANY_INVALID_KEYS)
        if outcome is Outcome.LOCKED:
            raise OperationFailed(ACCOUNT_LOCKED)
        if record is None or key is None:
            raise NotFound(INVALID_RECOVERY_KEY)
        return record, key

    async def user_id_for(self, code: str | None, source: str) -> int:
        """GetUserIdForPasswordSet. Reading never consumes or voids the code."""
        record, _ = await self._valid_code(code, source)
        return record.user_id

    async def requirements(self, code: str | None, source: str) -> Requirements:
        """GetRequirementsForPasswordSet: what the page must ask for."""
        record, _ = await self._valid_code(code, source)
        user = await self.deps.store.user_by_id(record.user_id)
        if user is None:
            raise NotFound(INVALID_RECOVERY_KEY)
        questions = await self.deps.store.security_questions(user.id)
        return Requirements(
            user_id=user.id,
            question=questions[0].question if questions else None,
            requires_totp=user.uses_totp,
            rules=self.policy.words,
            expires_at=record.expires_at,
            username=user.username,
            locale=user.locale,
        )

    # -- the second step ------------------------------------------------------------------------

    async def complete(
        self,
        *,
        user_id: int | str | None,
        password: str | None,
        code: str | None,
        answer: str | None,
        totp_code: str | int | None,
        source: str,
    ) -> None:
        """ResetPassword2, checks in the order of docs/rules.md ("ResetPassword2: the checks in
        order"); returns once the new password is committed.

        Each attempt that checks a secret (the answer, the TOTP code) first reserves one of the
        user's lockout slots, in the transaction that checks the code, so a burst checks at
        most ``lockout_failures`` of them; a wrong one keeps its slot as the failure, anything
        else gives it back. The store re-checks the lock and the TOTP step in the transaction
        that sets the password."""
        d, s = self.deps, self.deps.settings
        if not password:
            raise InvalidValue(INVALID_PASSWORD)
        uid = parse_user_id(user_id)
        if uid is None:
            raise InvalidValue(INVALID_USER_ID)
        user = await d.store.user_by_id(uid) if 0 < uid <= MAX_USER_ID else None
        questions = await d.store.security_questions(uid) if user else []
        # An attempt that will check a secret (an answer, a TOTP code) reserves one of the
        # user's lockout slots together with the code check.
        slot = None
        if user is not None and (questions or user.uses_totp):
            limit = Claim(RESET_FAILURE, str(uid), s.lockout_window_seconds, s.lockout_failures)
            slot = _Slot(limit, source, d.clock())
        now = d.clock() if slot is None else slot.at
        claim = None if slot is None else slot.claim
        _, key = await self._valid_code(code, source, uid, claim, now)
        if user is None:
            raise NotFound(INVALID_RECOVERY_KEY)
        outcome = Outcome.INVALID
        try:
            if user.locked(now):
                raise OperationFailed(ACCOUNT_LOCKED)
            factor = await self._check_secrets(user, questions, answer, totp_code, slot)
            broken = self.policy.refusal(password, user.username)
            if broken is not None:
                raise InvalidValue(broken)
            checked = Factors(
                user.totp_sealed, tuple((q.question, q.answer_hash) for q in questions)
            )
            outcome = await self._set_password(user, key, password, source, factor, checked)
        finally:
            # A success cleared every slot; a wrong secret keeps its own.
            if slot is not None and not slot.kept and outcome is not Outcome.DONE:
                await d.store.release(slot.claim.kind, slot.claim.key, now)
        self._completed(user, outcome)

    async def _check_secrets(
        self,
        user: User,
        questions: list[SecurityQuestion],
        answer: str | None,
        totp_code: str | int | None,
        slot: _Slot | None,
    ) -> Factor:
        """The security answer, then the TOTP code (or a recovery code), where the user has
        them; a wrong one keeps its ``slot`` as the failure (and may lock the user). What the
        second step accepted."""
        d = self.deps
        if questions:
            if not answer or not answer.strip():
                raise NotAuthorized(INVALID_ANSWER)
            if not await d.hasher.verify(questions[0].answer_hash, normalize_answer(answer)):
                await self._wrong(user, slot, "wrong security answer")
                raise NotAuthorized(INVALID_ANSWER)
        if user.totp_sealed is None:
            return NO_FACTOR
        given = totp.normalize_code(totp_code)
        if given is None:
            raise NotAuthorized(TOTP_REQUIRED)
        secret = totp.open_secret(d.sealer, user.id, user.totp_sealed)
        d.events.count("totp_checks")
        assert slot is not None  # a secret is only checked with a slot held
        factor = await recovery_codes.accepted(d, user, secret, given, slot.at)
        if factor is None:
            await self._wrong(user, slot, "wrong TOTP code")
            raise NotAuthorized(INVALID_2FA_CODE)
        return factor

    async def _wrong(self, user: User, slot: _Slot | None, reason: str) -> None:
        assert slot is not None  # a secret is only checked with a slot held
        slot.kept = True
        await self._failure(user, slot.claim, slot.source, reason, slot.at)

    async def _set_password(
        self,
        user: User,
        key: bytes,
        password: str,
        source: str,
        factor: Factor,
        checked: Factors,
    ) -> Outcome:
        """The new password, committed with the code's redemption (the store re-checks the
        lock and the TOTP step, and puts back the second factors as ``checked`` if they
        changed meanwhile), its audit row and the "password changed" mail."""
        d = self.deps
        new_hash = await d.hasher.hash(password)
        changed_at = d.clock()
        keeps_keys = d.settings.reset_keeps_api_keys
        mail = user_mail(
            "password-changed",
            user,
            {
                "changed_at": changed_at,
                "api_keys": "kept" if keeps_keys else "revoked",
                "first": user.invited,
            },
        )
        entry = AuditEntry(
            action="password-set",
            actor_id=user.id,
            target_id=user.id,
            target_name=user.username,
            source=source,
            detail="API keys kept" if keeps_keys else "API keys revoked",
        )
        return await d.store.complete_reset(
            PasswordReset(
                user_id=user.id,
                digest=key,
                password_hash=new_hash,
                now=changed_at,
                mail=mail,
                audit=[entry],
                totp_step=factor.step,
                recovery=factor.recovery,
                revoke_api_keys=not keeps_keys,
                checked=checked,
            )
        )

    def _completed(self, user: User, outcome: Outcome) -> None:
        """The store's outcome as the refusal, or the success told."""
        d = self.deps
        if outcome is Outcome.LOCKED:
            raise OperationFailed(ACCOUNT_LOCKED)
        if outcome is Outcome.REPLAYED:  # a login took this TOTP step meanwhile
            raise NotAuthorized(INVALID_2FA_CODE)
        if outcome is not Outcome.DONE:
            # Another call with the same code won the race, or it expired meanwhile.
            raise NotFound(INVALID_RECOVERY_KEY)
        d.events.count("resets_completed")
        d.events.sessions_ended(user.id, LogoutReason.PASSWORD_CHANGED)
        d.events.mail_queued()

    async def _failure(self, user: User, slot: Claim, source: str, reason: str, now: float) -> None:
        """A wrong answer or TOTP code (its slot already reserved): once the user's slots are
        used up within the window, the user is locked. Slots of attempts still in flight count
        too, so a burst that reaches the limit locks whatever order its checks finish in; the
        store counts and locks in one transaction, ordered against a success that clears the
        count."""
        d, s = self.deps, self.deps.settings
        await d.store.audit(
            [
                AuditEntry(
                    action="reset-attempt-failed",
                    target_id=user.id,
                    target_name=user.username,
                    source=source,
                    detail=reason,
                )
            ],
            now,
        )
        locked = await d.store.lock_when_spent(
            user.id,
            slot,
            now,
            now + s.lockout_seconds,
            AuditEntry(
                action="locked",
                target_id=user.id,
                target_name=user.username,
                source=source,
                detail=f"{slot.limit} failed reset attempts",
            ),
        )
        if locked:
            d.events.count("lockouts")

    # -- operators -------------------------------------------------------------------------------

    async def unlock(self, caller: Caller | None, user_id: int | str | None, source: str) -> None:
        """UnlockUser: an Operator of the user's OMS ends a lockout (only while the caller's
        session and Operator permission hold)."""
        if caller is None or OPERATOR not in caller.permissions:
            raise NotAuthorized(ONLY_OPERATORS_UNLOCK)
        uid = parse_user_id(user_id)
        if uid is None:
            raise InvalidValue(INVALID_USER_ID)
        target = await self.deps.store.user_by_id(uid) if 0 < uid <= MAX_USER_ID else None
        if target is None or target.oms_id != caller.user.oms_id:
            raise NotFound(USER_NOT_FOUND)
        authority = caller.authority(OPERATOR)
        unlocking = users.unlock(
            self.deps, target, actor_id=caller.id, source=source, authority=authority
        )
        await guarded(unlocking)
