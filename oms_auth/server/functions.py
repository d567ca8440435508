"""The OMS functions: each turns a typed request into an engine call and a typed reply.

A function returns a reply Struct or raises a Refusal; the adapter in ``ws.py`` does the rest.
Who may do what is the engine's to decide: each request hands it a
:class:`~oms_auth.engine.caller.Caller` built from the connection (:meth:`Functions._caller`),
and every change to a connection's login goes through the :class:`~.registry.Registry`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from protocol import messages as msg
from protocol.device_messages import NewDeviceReply
from protocol.errors import SUCCESS, StandardResponse

from ..engine import devices, userinfo
from ..engine.accounts import Accounts
from ..engine.apikeys import ApiKeys
from ..engine.caller import Caller
from ..engine.devices import Origin
from ..engine.recovery import Recovery
from ..engine.reset import Resets
from ..engine.sessions import Login, LoginState, Sessions
from ..errors import Refusal
from ..store import User
from .connection import Conn
from .device_functions import DeviceFunctions, iso_utc
from .registry import Registry

__all__ = ["Function", "Functions", "SECRET_KEYS"]

# Payload keys whose values no log line may show, whatever the line (tracebacks included).
SECRET_KEYS = frozenset(
    {
        "Password",
        "PendingCode",
        "SecurityQuestionAnswer",
        "Code",
        "SessionToken",
        "Signature",
        "APISecret",
        "Questions",  # their answers
        "PendingEmailCode",
    }
)

# A handler answers a Struct, or a list (GetUserPermissions, GetUserAccounts).
Handler = Callable[[Conn, Any], Awaitable[Any]]
TOTP_TYPE = "Google"  # the OMS name of RFC 6238 TOTP (Google Authenticator and alike)


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    payload: msg.PayloadDecoder[Any]
    handler: Handler
    # Answered in the connection's reader without a task of its own: for functions that never
    # wait and never fail (Ping), where a task would cost more than the work.
    inline: bool = False
    # The payload's fields whose values no log line may show.
    secret_fields: tuple[str, ...] = ()


def user_info(user: User) -> msg.UserInfo:
    return msg.UserInfo(
        UserId=user.id,
        UserName=user.username,
        Email=user.email,
        EmailVerified=user.email_verified,
        AccountId=user.account_id,
        OMSId=user.oms_id,
        Use2FA=user.uses_totp,
    )


def login_reply(login: Login) -> msg.AuthenticateUserReply:
    """A login step's outcome in the reply shape of docs/protocol.md, "The login reply"."""
    if login.state is LoginState.AUTHENTICATED and login.user is not None:
        return msg.AuthenticateUserReply(
            Authenticated=True,
            SessionToken=login.token,
            UserId=login.user.id,
            User=user_info(login.user),
            NeedsSecurityQuestions=login.needs_questions,
        )
    if login.state is LoginState.NEEDS_2FA and login.message is None:
        # The password was right: deployed clients read this as "go on to the second step".
        return msg.AuthenticateUserReply(
            Authenticated=True,
            Requires2FA=True,
            TwoFAType=TOTP_TYPE,
            AuthType=TOTP_TYPE,
            Pending2FaToken=login.pending,
        )
    if login.state is LoginState.NEEDS_2FA:  # a wrong code, attempts left: try again
        return msg.AuthenticateUserReply(
            Authenticated=False,
            Requires2FA=True,
            TwoFAType=TOTP_TYPE,
            AuthType=TOTP_TYPE,
            Pending2FaToken=login.pending,
            errormsg=login.message,
        )
    if login.hash_code is not None:
        # A new device to confirm (docs/protocol.md, "Sessions and devices").
        return NewDeviceReply(Authenticated=False, errormsg=login.message, HashCode=login.hash_code)
    return msg.AuthenticateUserReply(
        Authenticated=False, Locked=login.locked, errormsg=login.message
    )


class Functions:
    """The table of functions, by lower-cased name."""

    def __init__(self, sessions: Sessions, resets: Resets, registry: Registry) -> None:
        self.sessions = sessions
        self.resets = resets
        self.registry = registry
        self.api_keys = ApiKeys(sessions)
        self.accounts = Accounts(sessions)
        self.recovery = Recovery(sessions)
        self.table: dict[str, Function] = {}
        self.add("Ping", msg.Empty, self.ping, inline=True)
        self.add("AuthenticateUser", msg.AuthenticateUserRequest, self.authenticate_user)
        self.add("Authenticate2FA", msg.Authenticate2FARequest, self.authenticate_2fa)
        self.add("WebAuthenticateUser", msg.WebAuthenticateUserRequest, self.web_authenticate)
        self.add("LogOut", msg.Empty, self.log_out)
        self.add("ResetPassword", msg.ResetPasswordRequest, self.reset_password)
        self.add("ResetPassword2", msg.ResetPassword2Request, self.reset_password2)
        self.add("GetUserIdForPasswordSet", msg.PendingCodeRequest, self.user_id_for_password_set)
        self.add(
            "GetRequirementsForPasswordSet",
            msg.PendingCodeRequest,
            self.requirements_for_password_set,
        )
        self.add("UnlockUser", msg.UnlockUserRequest, self.unlock_user)
        self.add("GetUserInfo", msg.UserLookupRequest, self.get_user_info)
        self.add("GetUserPermissions", msg.UserLookupRequest, self.get_user_permissions)
        self.add("GetUserAccounts", msg.UserLookupRequest, self.get_user_accounts)
        self.add("AddUserAPIKey", msg.AddUserAPIKeyRequest, self.add_user_api_key)
        self.add("GetUserAPIKeys", msg.UserRequest, self.get_user_api_keys)
        self.add("RemoveUserAPIKey", msg.RemoveUserAPIKeyRequest, self.remove_user_api_key)
        self.add("EnableGoogle2FA", msg.EnableGoogle2FARequest, self.enable_google_2fa)
        self.add("Disable2FA", msg.Disable2FARequest, self.disable_2fa)
        self.add("SetSecurityQuestions", msg.SetSecurityQuestionsRequest, self.set_questions)
        self.add("GetSecurityQuestions", msg.UserRequest, self.get_questions)
        self.add("CreateUser", msg.CreateUserRequest, self.create_user)
        self.add("ForceUserLogoff", msg.ForceUserLogoffRequest, self.force_user_logoff)
        self.add("GetLockedUsers", msg.Empty, self.get_locked_users)
        self.add("CreateRecoveryCodes", msg.CreateRecoveryCodesRequest, self.create_recovery_codes)
        self.add("GetRecoveryCodesLeft", msg.Empty, self.get_recovery_codes_left)
        self.add("ResetUser2FA", msg.ResetUser2FARequest, self.reset_user_2fa)
        self.device_functions = DeviceFunctions(self)

    def add(
        self, name: str, payload: type[msgspec.Struct], handler: Handler, *, inline: bool = False
    ) -> None:
        secret = tuple(f for f in payload.__struct_fields__ if f in SECRET_KEYS)
        self.table[name.lower()] = Function(
            name, msg.PayloadDecoder(payload), handler, inline, secret
        )

    def _apply(self, conn: Conn, login: Login) -> msg.AuthenticateUserReply:
        """Carry a login outcome onto the connection and answer it."""
        self.registry.apply(conn, login, self.sessions.deps.clock())
        return login_reply(login)

    async def ping(self, conn: Conn, req: msg.Empty) -> msg.PingReply:
        return msg.PingReply()

    async def authenticate_user(
        self, conn: Conn, req: msg.AuthenticateUserRequest
    ) -> msg.AuthenticateUserReply:
        if req.APIKey is not None:
            login = await self.sessions.authenticate_api_key(
                req.APIKey, req.Signature, req.UserId, req.Nonce, conn.source, _origin(conn)
            )
        else:
            login = await self.sessions.authenticate(
                req.UserName, req.Password, conn.source, _named(conn, req.DeviceId)
            )
        return self._apply(conn, login)

    async def authenticate_2fa(
        self, conn: Conn, req: msg.Authenticate2FARequest
    ) -> msg.AuthenticateUserReply:
        if conn.pending is None and conn.enrolment is not None and conn.user is not None:
            return await self._confirm_enrolment(conn, req.Code)
        login = await self.sessions.second_factor(
            conn.pending, req.Code, conn.source, _origin(conn)
        )
        return self._apply(conn, login)

    async def _confirm_enrolment(
        self, conn: Conn, code: str | int | None
    ) -> msg.AuthenticateUserReply:
        """The first code of an EnableGoogle2FA: TOTP is active from here; the connection
        stays logged in with its session."""
        try:
            user = await self.accounts.confirm_totp(
                await self._caller(conn), conn.enrolment, code, conn.source
            )
        except Refusal as refusal:
            # In the login shape, as every Authenticate2FA answer; the connection stays logged
            # in, and the enrolment waits for a right code.
            return msg.AuthenticateUserReply(
                Authenticated=False,
                Requires2FA=True,
                TwoFAType=TOTP_TYPE,
                AuthType=TOTP_TYPE,
                errormsg=refusal.detail,
            )
        self.registry.enrolled(conn, user, self.sessions.deps.clock())
        return msg.AuthenticateUserReply(
            Authenticated=True, SessionToken=conn.token, UserId=user.id, User=user_info(user)
        )

    async def web_authenticate(
        self, conn: Conn, req: msg.WebAuthenticateUserRequest
    ) -> msg.AuthenticateUserReply:
        if req.SessionToken is None and (req.UserName is not None or req.Password is not None):
            login = await self.sessions.authenticate(
                req.UserName, req.Password, conn.source, _named(conn, req.DeviceId)
            )
        else:
            login = await self.sessions.resume(req.SessionToken)
        reply = self._apply(conn, login)
        if reply.UserId is None:
            return reply
        # Its top-level UserId is a decimal string, as the official SDKs type it (docs/protocol.md,
        # "The login reply"); User and AuthenticateUser keep integers.
        return msgspec.structs.replace(reply, UserId=str(reply.UserId))

    async def log_out(self, conn: Conn, req: msg.Empty) -> msgspec.Struct:
        caller = _held(conn)  # as the connection holds it: LogOut ends that session
        if caller is not None:
            # This connection ends its own session (no event); every other holder is told.
            self.registry.log_off(conn)
        notice = await self.sessions.logout(caller, conn.source)
        if notice is None:
            return SUCCESS
        return StandardResponse(result=True, errormsg=None, errorcode=0, detail=notice)

    async def caller(self, conn: Conn) -> Caller | None:
        return await self._caller(conn)

    async def _caller(self, conn: Conn) -> Caller | None:
        """Who asks on this connection, for the engine: its user as the store has it now
        (permissions may have changed), the rest as the connection holds it (:func:`_held`).
        None when it is not logged in."""
        held = _held(conn)  # before the store is asked: a logoff meanwhile must not mix logins
        if held is None:
            return None
        return _with_user(held, await self.sessions.deps.store.user_by_id(held.id))

    async def reset_password(self, conn: Conn, req: msg.ResetPasswordRequest) -> msgspec.Struct:
        held, name = _held(conn), req.UserName
        if held is None or not isinstance(name, str) or not name.strip():
            await self.resets.request(await self._caller(conn), name, conn.source)
            return SUCCESS
        # The caller's user and the target in one read (docs/performance.md): as _caller, but
        # the target read with it.
        user, target = await self.sessions.deps.store.user_and_named(held.id, name)
        await self.resets.request(_with_user(held, user), name, conn.source, target=target)
        return SUCCESS

    async def reset_password2(self, conn: Conn, req: msg.ResetPassword2Request) -> msgspec.Struct:
        await self.resets.complete(
            user_id=req.UserId,
            password=req.Password,
            code=req.PendingCode,
            answer=req.SecurityQuestionAnswer,
            totp_code=req.Code,
            source=conn.source,
        )
        return SUCCESS

    async def user_id_for_password_set(
        self, conn: Conn, req: msg.PendingCodeRequest
    ) -> msg.UserIdReply:
        return msg.UserIdReply(UserId=await self.resets.user_id_for(req.PendingCode, conn.source))

    async def requirements_for_password_set(
        self, conn: Conn, req: msg.PendingCodeRequest
    ) -> msg.RequirementsReply:
        r = await self.resets.requirements(req.PendingCode, conn.source)
        return msg.RequirementsReply(
            UserId=r.user_id,
            SecurityQuestion=r.question,
            Requires2FA=r.requires_totp,
            TwoFAType=TOTP_TYPE if r.requires_totp else None,
            PasswordRules=r.rules,
            ExpiresAt=int(r.expires_at * 1000),
            UserName=r.username,
            Locale=r.locale,
        )

    async def unlock_user(self, conn: Conn, req: msg.UnlockUserRequest) -> msgspec.Struct:
        await self.resets.unlock(await self._caller(conn), req.UserId, conn.source)
        return SUCCESS

    async def _readable(self, conn: Conn, req: msg.UserLookupRequest) -> User:
        named = userinfo.Named(req.UserId, req.UserName, req.Email)
        return await userinfo.readable_user(self.sessions.deps, await self._caller(conn), named)

    async def get_user_info(self, conn: Conn, req: msg.UserLookupRequest) -> msg.UserInfoReply:
        named = userinfo.Named(req.UserId, req.UserName, req.Email)
        record = await userinfo.user_record(self.sessions.deps, await self._caller(conn), named)
        user = record.user
        return msg.UserInfoReply(
            UserId=user.id,
            UserName=user.username,
            Email=user.email,
            EmailVerified=user.email_verified,
            AccountId=user.account_id or 0,
            DateTimeCreated=_apex_time(user.created_at),
            OMSId=user.oms_id,
            Use2FA=user.uses_totp,
            Locked=record.locked_since is not None,
            LockedTime=_apex_time(record.locked_since),
            NumberOfFailedAttempt=record.failed_logins,
            OperatorId=user.oms_id,  # one operator per OMS here
            Permissions=sorted(user.permissions),
            AccountIds=sorted(user.accounts),
            HasSecurityQuestions=record.has_questions,
        )

    async def get_user_permissions(self, conn: Conn, req: msg.UserLookupRequest) -> list[str]:
        return sorted((await self._readable(conn, req)).permissions)

    async def get_user_accounts(self, conn: Conn, req: msg.UserLookupRequest) -> list[int]:
        return sorted((await self._readable(conn, req)).accounts)

    async def add_user_api_key(
        self, conn: Conn, req: msg.AddUserAPIKeyRequest
    ) -> msg.AddUserAPIKeyReply:
        caller = await self._caller(conn)
        new = await self.api_keys.add(
            caller, req.UserId, req.Permissions, conn.source, password=req.Password
        )
        return msg.AddUserAPIKeyReply(
            APIKey=new.key,
            APISecret=new.secret,
            UserId=new.user_id,
            Permissions=list(new.permissions),
        )

    async def get_user_api_keys(self, conn: Conn, req: msg.UserRequest) -> list[msg.APIKeyInfo]:
        keys = await self.api_keys.keys(await self._caller(conn), req.UserId)
        return [msg.APIKeyInfo(k.key, k.user_id, list(k.permissions)) for k in keys]

    async def remove_user_api_key(
        self, conn: Conn, req: msg.RemoveUserAPIKeyRequest
    ) -> msgspec.Struct:
        caller = await self._caller(conn)
        await self.api_keys.remove(
            caller, req.UserId, req.APIKey, conn.source, password=req.Password
        )
        return SUCCESS

    async def enable_google_2fa(
        self, conn: Conn, req: msg.EnableGoogle2FARequest
    ) -> msg.EnableGoogle2FAReply:
        caller = await self._caller(conn)
        new = await self.accounts.enable_totp(
            caller, req.UserId, conn.source, password=req.Password
        )
        self.registry.enrolling(conn, new.enrolment)
        return msg.EnableGoogle2FAReply(GoogleQRCode=new.uri, ManualCode=new.manual_code)

    async def disable_2fa(self, conn: Conn, req: msg.Disable2FARequest) -> msgspec.Struct:
        caller = await self._caller(conn)
        await self.accounts.disable_totp(caller, req.UserId, req.Code, conn.source)
        self.registry.spent_verification(conn)
        return SUCCESS

    async def set_questions(
        self, conn: Conn, req: msg.SetSecurityQuestionsRequest
    ) -> msgspec.Struct:
        caller = await self._caller(conn)
        await self.accounts.set_questions(
            caller, req.UserId, req.Password, req.Questions, conn.source
        )
        return SUCCESS

    async def get_questions(self, conn: Conn, req: msg.UserRequest) -> msg.SecurityQuestionsReply:
        texts = await self.accounts.questions(await self._caller(conn), req.UserId)
        return msg.SecurityQuestionsReply(Questions=texts)

    async def create_user(self, conn: Conn, req: msg.CreateUserRequest) -> msg.UserIdReply:
        caller = await self._caller(conn)
        user_id = await self.accounts.create_user(
            caller,
            req.UserName,
            req.Email,
            req.AccountId,
            req.Permissions,
            conn.source,
            locale=req.Locale,
        )
        return msg.UserIdReply(UserId=user_id)

    async def force_user_logoff(
        self, conn: Conn, req: msg.ForceUserLogoffRequest
    ) -> msgspec.Struct:
        await self.accounts.force_logoff(
            await self._caller(conn), req.UserId, req.UserName, conn.source
        )
        return SUCCESS

    async def get_locked_users(self, conn: Conn, req: msg.Empty) -> list[msg.LockedUser]:
        locked = await self.accounts.locked_users(await self._caller(conn))
        return [
            msg.LockedUser(
                UserId=lock.user.id,
                UserName=lock.user.username,
                Email=lock.user.email,
                LockedDateTime=_iso(lock.since),
                LockedUntil=_iso(lock.until),
            )
            for lock in locked
        ]

    async def create_recovery_codes(
        self, conn: Conn, req: msg.CreateRecoveryCodesRequest
    ) -> msg.RecoveryCodesReply:
        caller = await self._caller(conn)
        codes = await self.recovery.create_codes(caller, conn.source, password=req.Password)
        return msg.RecoveryCodesReply(RecoveryCodes=codes)

    async def get_recovery_codes_left(
        self, conn: Conn, req: msg.Empty
    ) -> msg.RecoveryCodesLeftReply:
        left = await self.recovery.codes_left(await self._caller(conn))
        return msg.RecoveryCodesLeftReply(Left=left)

    async def reset_user_2fa(self, conn: Conn, req: msg.ResetUser2FARequest) -> msgspec.Struct:
        caller = await self._caller(conn)
        await self.recovery.reset_user_2fa(caller, req.UserId, conn.source, password=req.Password)
        return SUCCESS


def _origin(conn: Conn) -> Origin:
    """The device a login on ``conn`` comes from (docs/protocol.md, "Sessions and devices"):
    the ``DeviceId`` its last password login named (its second step is the same device)."""
    return Origin(conn.agent, conn.device_id)


def _named(conn: Conn, device_id: str | None) -> Origin:
    """A password login's device: the ``DeviceId`` it names, kept for its second step."""
    conn.device_id = device_id.strip()[: devices.MAX_DEVICE_ID] or None if device_id else None
    return _origin(conn)


def _with_user(held: Caller, user: User | None) -> Caller | None:
    """The caller ``held`` with its user as the store has it now (permissions may have
    changed); None when the user is gone."""
    return None if user is None else msgspec.structs.replace(held, user=user)


def _held(conn: Conn) -> Caller | None:
    """The caller as the connection holds it, read at once (no await): its user as it logged
    in, the session it holds and the password version that session was opened for, its key's
    permissions, what the connection proved when, and whether it lasts past this request."""
    user, session = conn.user, conn.token_digest
    if user is None or session is None:
        return None
    return Caller(
        user=user,
        session=session,
        password_version=user.password_version,
        key_permissions=conn.key_permissions,
        proved_at=conn.proved_at,
        verified_at=conn.verified_at,
        lasting=conn.lasting,
    )


def _apex_time(ts: float | None) -> str:
    """A time in the APEX record: ISO 8601 UTC, or its "no such time"."""
    return msg.NO_TIME if ts is None else iso_utc(ts)


_iso = iso_utc
