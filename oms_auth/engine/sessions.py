"""Logins and sessions: AuthenticateUser (with a password or an API key), Authenticate2FA,
WebAuthenticateUser, LogOut.

A failed login says "Invalid username or password" whether the user exists or not, and costs the
same: a missing user is verified against a decoy hash. Failed logins are counted per submitted
username and per source address; past a few, answers slow down (a growing delay), past the limit
they are refused without checking the password. They never lock the reset.

The rules that must hold when requests race (docs/rules.md, "Concurrency: what holds under
bursts and across nodes"):

- An attempt is reserved (a slot, marked in flight) before its password is checked, in the same
  transaction that reads the count; a success gives it back, a failure keeps it (settled as a
  failure). N simultaneous attempts therefore check at most the limit's worth of passwords. An
  attempt that finds every slot held by attempts in flight waits its turn (:mod:`.turns`); one
  that finds the limit full of failures is refused unchecked.
- A session is created only for the password version the check read (``Store.open_session``):
  a login that read the old password and finishes after a reset opens nothing.
- A pending second step lives in the store: at most ``second_step_attempts`` wrong codes, for
  ``second_step_seconds``, ended by a password change. A TOTP time step is accepted once per user.
- An API-key login (:mod:`.apikeys`) reserves its slots like a password attempt (by the key
  holder's username, or the key itself when it names no one, and by address) before its
  signature is checked, and answers one text for every failure. Its nonce is accepted once per key:
  its digest is recorded in the transaction that opens the session, so of logins racing with one
  nonce, on any node, one opens a session. The session is marked as the key's, and holds the key's
  permissions (:mod:`.caller`).
- A login says what it proved (:class:`Proof`): the password (and second step) on this request,
  or nothing (a session resumed by token, a key login). The server keeps when a connection
  proved the password; account-security changes need that proof to be fresh or the password
  given again (:meth:`Sessions.prove`).
"""

from __future__ import annotations

from enum import Enum

import msgspec

from protocol.messages import LogoutReason

from ..crypto import digest, new_token
from ..errors import InvalidValue, NotAuthorized, OperationFailed
from ..store import (
    ApiKey,
    AuditEntry,
    DeviceSeen,
    Outcome,
    Reservation,
    SessionOpening,
    User,
)
from . import apikeys, devices, recovery_codes, totp
from .caller import Caller
from .deps import Deps
from .login_slots import LOGIN_FAILURE_USER, LoginSlots
from .names import counter_key, recorded_name
from .texts import (
    ACCOUNT_LOCKED,
    CONFIRM_PASSWORD,
    CONTACT_SUPPORT,
    INVALID_2FA_CODE,
    INVALID_API_KEY_LOGIN,
    INVALID_LOGIN,
    INVALID_PASSWORD,
    INVALID_SESSION,
    INVALID_USERNAME,
    MUST_SET_QUESTIONS,
    NO_PENDING_2FA,
    NOT_LOGGED_IN,
    TOTP_REQUIRED,
    WRONG_PASSWORD,
    federated_refusal,
)
from .users import parse_user_id

__all__ = ["LoginState", "Login", "Proof", "Sessions", "TOUCH_EVERY"]

# A session's last_seen is written at most this often: activity is still tracked to the
# minute, and a busy connection does not write to the store on every request.
TOUCH_EVERY = 60.0


class LoginState(Enum):
    AUTHENTICATED = "authenticated"
    NEEDS_2FA = "needs-2fa"
    FAILED = "failed"


class Proof(Enum):
    """What a login step proved on the request that made it."""

    NONE = "none"  # a session resumed by its token, or opened with an API key
    PASSWORD = "password"  # the password
    PASSWORD_AND_CODE = "password-and-code"  # the password, then a TOTP code


class Login(msgspec.Struct, frozen=True):
    """The outcome of a login step. ``token`` and ``pending`` are bearer secrets: never log
    them."""

    state: LoginState
    user: User | None = None
    token: str | None = None
    locked: bool = False
    message: str | None = None
    # The pending second step's token (NEEDS_2FA): Authenticate2FA names it.
    pending: str | None = None
    # A master user without security questions, logged in: it must set them (docs/protocol.md,
    # "SetSecurityQuestions and GetSecurityQuestions").
    needs_questions: bool = False
    # What this step proved (AUTHENTICATED): fresh proof for account-security changes.
    proof: Proof = Proof.NONE
    # The session was opened with an API key: the key's permissions (it cannot change account
    # security, and holds no more than these).
    key_permissions: frozenset[str] | None = None
    # A device to confirm (``verify_new_devices``): its HashCode, answered at the top level.
    hash_code: int | None = None

    def __repr__(self) -> str:
        return f"Login(state={self.state}, user={self.user!r})"

    @property
    def token_digest(self) -> bytes | None:
        return digest(self.token) if self.token else None


class Sessions:
    """The login and session rules."""

    def __init__(self, deps: Deps, *, delay_unit: float = 0.25) -> None:
        self.deps = deps
        self.slots = LoginSlots(deps, delay_unit=delay_unit)
        self.turns = self.slots.turns  # who waits for a slot (tests watch it)

    async def authenticate(
        self,
        username: str | None,
        password: str | None,
        source: str,
        origin: devices.Origin | None = None,
    ) -> Login:
        """AuthenticateUser with a password; InvalidValue when either is missing. ``origin``:
        the device it comes from (:mod:`.devices`)."""
        if not username or not username.strip():
            raise InvalidValue(INVALID_USERNAME)
        if not password:
            raise InvalidValue(INVALID_PASSWORD)
        d = self.deps
        name_key = self._counter(username or "")
        reserved = await self.slots.attempt(name_key, source)
        if isinstance(reserved, str):
            return Login(LoginState.FAILED, message=reserved)
        now = reserved.user.at
        user = await d.store.user_by_name(username) if username else None
        ok = await d.hasher.verify(user.password_hash if user else None, password or "")
        if not ok or user is None:
            # The reservation stays: it is this failure's count.
            await self.slots.settle(reserved.release_all())
            await self._audit_failure(username or "", source, now, user)
            d.events.count("login:failed")
            return Login(LoginState.FAILED, message=INVALID_LOGIN)
        # From here the caller has proven the password: telling it why it cannot log in
        # reveals nothing it does not already know.
        refusal = self._refusal(user, now)
        if refusal is None and d.settings.verify_new_devices:
            refusal = await self._untrusted(user, origin, source, now)
        if refusal is not None:
            await self.slots.give_back(reserved.release_all())
            return refusal
        rehash = await self._rehash(user, password)
        if user.uses_totp:
            if rehash is not None:  # proven: the second step does not change what it checks
                await d.store.replace_hash(user.id, *rehash)
            pending = new_token()
            await d.store.begin_second_step(digest(pending), user.id, user.password_version, now)
            await self.slots.give_back(reserved.release_all())
            d.events.count("login:second_step")
            return Login(LoginState.NEEDS_2FA, user=user, pending=pending)
        return await self._open_session(
            user,
            now,
            source,
            reserved,
            proof=Proof.PASSWORD,
            seen=await devices.seen(d, user, origin, source, now, notify=self._notify),
            rehash=rehash,
        )

    async def authenticate_api_key(
        self,
        api_key: str | None,
        signature: str | None,
        user_id: int | str | None,
        nonce: int | str | None,
        source: str,
        origin: devices.Origin | None = None,
    ) -> Login:
        """AuthenticateUser with an API key: ``Signature`` is the hex HMAC-SHA256 of ``Nonce +
        UserId + APIKey`` keyed with the key's secret. Every failure is FAILED with one text
        (a login-shaped answer, never a refusal)."""
        d = self.deps
        key = api_key if isinstance(api_key, str) else ""
        record = None
        if 0 < len(key) <= apikeys.MAX_KEY_LENGTH:
            record = await d.store.api_key(key)
        holder = await d.store.user_by_id(record.user_id) if record is not None else None
        # A key that names no one is counted under its own name: it cannot use up a user's
        # attempts, and a flood of made-up keys still meets the per-address limit.
        name = holder.username if holder else "api-key:" + key[:64]
        name_key = self._counter(name)
        reserved = await self.slots.attempt(name_key, source)
        if isinstance(reserved, str):
            return Login(LoginState.FAILED, message=reserved)
        now = reserved.user.at
        nonce_digest = apikeys.nonce_digest(nonce)
        ok = self._signed(record, holder, key, signature, user_id, nonce)
        if not ok or holder is None or nonce_digest is None:
            # The reservation stays: it is this failure's count.
            await self.slots.settle(reserved.release_all())
            await self._audit_failure(name, source, now, holder, "API key")
            d.events.count("login:api_key_failed")
            return Login(LoginState.FAILED, message=INVALID_API_KEY_LOGIN)
        refusal = self._refusal(holder, now)
        if refusal is not None:
            await self.slots.give_back(reserved.release_all())
            return refusal
        assert record is not None  # (a holder is the record's user)
        return await self._open_session(
            holder,
            now,
            source,
            reserved,
            api_key=(key, nonce_digest),
            key_permissions=frozenset(record.permissions),
            seen=await devices.seen(d, None, origin, source, now, notify=False),
        )

    async def second_factor(
        self,
        pending: str | None,
        code: str | int | None,
        source: str,
        origin: devices.Origin | None = None,
    ) -> Login:
        """Authenticate2FA with the pending step's token (the connection's, or a header's)."""
        d, s = self.deps, self.deps.settings
        if not pending:
            return Login(LoginState.FAILED, message=NO_PENDING_2FA)
        now = d.clock()
        key = digest(pending)
        step = await d.store.second_step_attempt(
            key, now, s.second_step_seconds, s.second_step_attempts
        )
        if step is None:  # unknown, expired, out of attempts, or ended by a password change
            d.events.count("login:second_step_over")
            return Login(LoginState.FAILED, message=NO_PENDING_2FA)
        user_id, version = step
        user = await d.store.user_by_id(user_id)
        if user is None or user.totp_sealed is None or user.password_version != version:
            await d.store.end_second_step(key)
            return Login(LoginState.FAILED, message=NO_PENDING_2FA)
        refusal = self._refusal(user, now)
        if refusal is not None:
            await d.store.end_second_step(key)
            return refusal
        # A code is a secret checked like a password: it takes a slot of the login limits
        # first, so however many pending steps a password opened, the limits bound the codes.
        reserved = await self.slots.reserve(self._counter(user.username), source)
        if isinstance(reserved, str):
            return Login(LoginState.FAILED, message=reserved)
        now = reserved[0].user.at
        secret = totp.open_secret(d.sealer, user.id, user.totp_sealed)
        d.events.count("totp_checks")
        accepted = await recovery_codes.accepted(d, user, secret, code, now)
        if accepted is not None:
            login = await self._open_session(
                user,
                now,
                source,
                reserved[0],
                factor=accepted,
                pending=key,
                proof=Proof.PASSWORD_AND_CODE,
                seen=await devices.seen(d, user, origin, source, now, notify=self._notify),
            )
            if login.state is LoginState.AUTHENTICATED and accepted.recovery is not None:
                d.events.mail_queued()  # the code's notice, queued with the session
            if login.state is LoginState.AUTHENTICATED or login.message != INVALID_2FA_CODE:
                return login
        else:
            await self.slots.settle(reserved[0].release_all())
        await self._audit_failure(user.username, source, now, user, "wrong TOTP code")
        d.events.count("login:second_step_failed")
        return Login(LoginState.NEEDS_2FA, user=user, pending=pending, message=INVALID_2FA_CODE)

    async def resume(self, token: str | None) -> Login:
        """WebAuthenticateUser: a live session's token logs this connection in."""
        d = self.deps
        if not token:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        key = digest(token)
        session = await d.store.session(key)
        now = d.clock()
        if session is None:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        if self.expired(session.last_seen, now):
            await self._revoke(key, session.user_id, LogoutReason.SESSION_EXPIRED)
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        user = await d.store.user_by_id(session.user_id)
        if user is None:
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        refusal = self._refusal(user, now)
        if refusal is not None:
            return refusal
        key_permissions = None
        if session.api_key is not None:  # still the key's session: its scope comes with it
            record = await d.store.api_key(session.api_key)
            if record is None:  # removed meanwhile (which ends its sessions)
                return Login(LoginState.FAILED, message=INVALID_SESSION)
            key_permissions = frozenset(record.permissions)
        if not await d.store.touch_session(key, now):  # revoked since it was read
            return Login(LoginState.FAILED, message=INVALID_SESSION)
        # A token proves nothing of the password: this connection has no fresh proof.
        return Login(
            LoginState.AUTHENTICATED,
            user=user,
            token=token,
            needs_questions=await self.needs_questions(user),
            key_permissions=key_permissions,
        )

    def expired(self, last_seen: float, now: float | None = None) -> bool:
        now = self.deps.clock() if now is None else now
        return now - last_seen >= self.deps.settings.session_idle_seconds

    def touch_due(self, last_written: float) -> bool:
        """Whether a request now would write the session's activity to the store."""
        return self.deps.clock() - last_written >= TOUCH_EVERY

    async def touch(self, token_digest: bytes, last_written: float) -> float | None:
        """Record activity on a session; returns when it was last written to the store, or
        None when the session is gone (logged out or revoked on another connection or node)."""
        now = self.deps.clock()
        if now - last_written >= TOUCH_EVERY:
            alive = await self.deps.store.touch_session(token_digest, now)
            return now if alive else None
        return last_written

    async def end_request_session(self, token_digest: bytes, user_id: int) -> None:
        """The session a single signed HTTP request opened ends with that request (nothing
        else holds it; it is not a LogOut to audit)."""
        await self.deps.store.revoke_session(
            token_digest, user_id, LogoutReason.LOGGED_OUT_ELSEWHERE
        )

    async def logout(self, caller: Caller | None, source: str) -> str | None:
        """LogOut: the caller's session ends on every connection that holds it, on every node.
        Returns the notice its answer carries: a master user still without security questions
        is told to set them (it is logged out all the same)."""
        if caller is None:
            raise NotAuthorized(NOT_LOGGED_IN)
        d, user = self.deps, caller.user
        await self._revoke(caller.session, user.id, LogoutReason.LOGGED_OUT_ELSEWHERE)
        await d.store.audit(
            [AuditEntry(action="logout", actor_id=user.id, target_id=user.id, source=source)],
            d.clock(),
        )
        # (its questions are read fresh)
        return MUST_SET_QUESTIONS if await self.needs_questions(user) else None

    async def needs_questions(self, user: User) -> bool:
        """A master user without security questions: it could not reset its password once it
        has logged in, so it is told to set them (docs/protocol.md, "SetSecurityQuestions and
        GetSecurityQuestions")."""
        return user.master and not await self.deps.store.security_questions(user.id)

    async def recheck_password(self, user: User, password: str | None, source: str) -> bool:
        """The current password given again (SetSecurityQuestions): an attempt counted like a
        login's, reserved before the check and given back when right. Refusal when the limits
        are used up; False when wrong."""
        if not password:
            raise InvalidValue(INVALID_PASSWORD)
        d = self.deps
        now = d.clock()
        name_key = self._counter(user.username)
        reserved = await self.slots.attempt(name_key, source)
        if isinstance(reserved, str):
            raise OperationFailed(reserved)
        if not await d.hasher.verify(user.password_hash, password):
            await self.slots.settle(reserved.release_all())
            await self._audit_failure(name_key, source, now, user, "wrong password again")
            return False
        await self.slots.give_back(reserved.release_all())
        return True

    async def prove(self, caller: Caller, password: str | None, source: str) -> None:
        """Fresh proof for an account-security change (docs/rules.md, "Fresh proof for
        account-security changes"): the caller's
        connection proved the password within ``fresh_auth_seconds``, or ``password`` is the
        current one (checked as a login's, under the same limits). Otherwise NotAuthorized:
        a stolen session token alone never makes such a change."""
        d = self.deps
        if caller.proved_within(d.settings.fresh_auth_seconds, d.clock()):
            return
        if not password:
            raise NotAuthorized(CONFIRM_PASSWORD)
        if not await self.recheck_password(caller.user, password, source):
            raise NotAuthorized(WRONG_PASSWORD)

    async def check_totp(
        self, user: User, secret: str, code: str | int | None, source: str
    ) -> recovery_codes.Factor:
        """A TOTP code (or one of the user's recovery codes) from a logged-in user (Disable2FA,
        an enrolment's first code): a slot of the login limits taken first, kept when wrong.
        What was accepted (still to be recorded by the write it allows, which refuses a step
        or a code taken meanwhile)."""
        d = self.deps
        given = totp.normalize_code(code)
        if given is None:
            raise NotAuthorized(TOTP_REQUIRED)
        now = d.clock()
        reserved = await self.slots.reserve(self._counter(user.username), source)
        if isinstance(reserved, str):
            raise OperationFailed(reserved)
        d.events.count("totp_checks")
        factor = await recovery_codes.accepted(d, user, secret, given, now)
        if factor is None:
            await self.slots.settle(reserved[0].release_all())
            await self._audit_failure(user.username, source, now, user, "wrong TOTP code")
            raise NotAuthorized(INVALID_2FA_CODE)
        await self.slots.give_back(reserved[0].release_all())
        return factor

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _notify(self) -> bool:
        """A new device's login is mailed about unless devices are confirmed instead."""
        return not self.deps.settings.verify_new_devices

    async def _untrusted(
        self, user: User, origin: devices.Origin | None, source: str, now: float
    ) -> Login | None:
        """``verify_new_devices``: a device the user has not trusted gets its code mailed and
        no session (:func:`.devices.confirmation`)."""
        held = await devices.confirmation(self.deps, user, origin, source, now)
        if held is None:
            return None
        return Login(LoginState.FAILED, message=held[1], hash_code=held[0])

    async def _revoke(self, token_digest: bytes, user_id: int, reason: str) -> None:
        await self.deps.store.revoke_session(token_digest, user_id, reason)
        self.deps.events.session_revoked(token_digest, reason)

    def _signed(
        self,
        record: ApiKey | None,
        holder: User | None,
        key: str,
        signature: str | None,
        user_id: int | str | None,
        nonce: int | str | None,
    ) -> bool:
        """Whether ``signature`` signs the login's text with the key's secret (checked in
        constant time, with a stand-in secret for a key that names no one)."""
        uid = parse_user_id(user_id)
        if isinstance(user_id, str) and uid is not None and str(uid) != user_id:
            # One spelling only: the signed text's UserId and APIKey are then fixed by the
            # key, so its nonce is too (no nonce can be respelled into another).
            uid = None
        secret = None
        if record is not None and holder is not None and uid == holder.id:
            secret = apikeys.open_secret(self.deps.sealer, record)
        self.deps.events.count("api_key_checks")
        signed = apikeys.signed_text(
            "" if nonce is None else nonce, "" if user_id is None else user_id, key
        )
        return isinstance(signature, str) and apikeys.signature_matches(secret, signature, signed)

    def _refusal(self, user: User, now: float) -> Login | None:
        if user.locked(now):
            self.deps.events.count("login:locked")
            return Login(LoginState.FAILED, user=None, locked=True, message=ACCOUNT_LOCKED)
        if not user.active:
            return Login(LoginState.FAILED, message=CONTACT_SUPPORT)
        federated = federated_refusal(user.auth_source)
        if federated is not None:
            return Login(LoginState.FAILED, message=federated)
        return None

    async def _open_session(
        self,
        user: User,
        now: float,
        source: str,
        reserved: Reservation,
        *,
        factor: recovery_codes.Factor = recovery_codes.NO_FACTOR,
        pending: bytes | None = None,
        api_key: tuple[str, bytes] | None = None,
        key_permissions: frozenset[str] | None = None,
        proof: Proof = Proof.NONE,
        seen: DeviceSeen | None = None,
        rehash: tuple[str, str] | None = None,
    ) -> Login:
        d, token, uid = self.deps, new_token(), user.id
        how = f"API key {api_key[0]}" if api_key is not None else factor.detail
        entry = AuditEntry(action="login", actor_id=uid, target_id=uid, source=source, detail=how)
        outcome = await d.store.open_session(
            SessionOpening(
                digest=digest(token),
                user_id=uid,
                now=now,
                password_version=user.password_version,
                totp_step=factor.step,
                pending=pending,
                api_key=api_key,
                recovery=factor.recovery,
                clear=[(LOGIN_FAILURE_USER, self._counter(user.username))],
                release=reserved.keep_user_slot(),
                audit=[entry],
                seen=seen,
                rehash=rehash,
            )
        )
        await self.slots.after_opening(reserved, outcome is Outcome.DONE)
        if outcome is not Outcome.DONE:
            refused, counted, failure = _not_opened(outcome, user, api_key is not None)
            if failure is not None:
                await self._audit_failure(user.username, source, now, user, failure)
            if counted is not None:
                d.events.count(counted)
            return refused
        d.events.count("login:ok")
        return Login(
            LoginState.AUTHENTICATED,
            user=user,
            token=token,
            needs_questions=await self.needs_questions(user),
            proof=proof,
            key_permissions=key_permissions,
        )

    async def _rehash(self, user: User, password: str) -> tuple[str, str] | None:
        """(the hash just verified, its Argon2id replacement) when the user's hash was brought
        by import or has other Argon2id parameters (docs/import.md); None otherwise."""
        hasher = self.deps.hasher
        if not hasher.needs_rehash(user.password_hash):
            return None
        self.deps.events.count("login:rehashed")
        return user.password_hash, await hasher.hash(password)

    def _counter(self, name: str) -> str:
        """The per-username login counters' key for ``name`` (:func:`.names.counter_key`)."""
        return counter_key(self.deps.names_key, name)

    async def _audit_failure(
        self, name: str, source: str, now: float, user: User | None, detail: str | None = None
    ) -> None:
        await self.deps.store.audit(
            [
                AuditEntry(
                    action="login-failed",
                    target_id=user.id if user else None,
                    # A user's own name; anything else only as its keyed digest.
                    target_name=recorded_name(self.deps, user.username if user else name, user),
                    source=source,
                    detail=detail,
                )
            ],
            now,
        )


def _not_opened(outcome: Outcome, user: User, by_key: bool) -> tuple[Login, str | None, str | None]:
    """What a login answers when its session's transaction opened none: the answer, the event
    counted, the failure's audit detail."""
    if outcome is Outcome.REPLAYED and by_key:
        # The nonce was accepted for this key already (another login took it), or the key was
        # removed meanwhile. The attempt's slot stays: it is this failure's count.
        failed = Login(LoginState.FAILED, message=INVALID_API_KEY_LOGIN)
        return failed, "login:api_key_failed", "API key nonce used already"
    if outcome is Outcome.REPLAYED:  # the TOTP step or recovery code was taken meanwhile
        return Login(LoginState.NEEDS_2FA, user=user, message=INVALID_2FA_CODE), None, None
    if outcome is Outcome.LOCKED:  # locked while this login was being checked
        return Login(LoginState.FAILED, locked=True, message=ACCOUNT_LOCKED), "login:locked", None
    # The password changed while this login was being checked: what was checked is no longer
    # the password.
    failed = Login(LoginState.FAILED, message=INVALID_API_KEY_LOGIN if by_key else INVALID_LOGIN)
    return failed, "login:stale", None
