"""The OMS functions: each turns a typed request into an engine call and a typed reply.

A function returns a reply Struct or raises a Refusal; the adapter in ``ws.py`` does the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from protocol import messages as msg
from protocol.errors import SUCCESS

from ..engine.sessions import Login, LoginState, Sessions
from ..errors import InvalidValue, NotAuthorized
from ..store import User
from .connection import Conn

__all__ = ["Function", "Functions"]

Handler = Callable[[Conn, Any], Awaitable[msgspec.Struct]]


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    payload: msg.PayloadDecoder[Any]
    handler: Handler


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
    if login.state is LoginState.AUTHENTICATED and login.user is not None:
        return msg.AuthenticateUserReply(
            Authenticated=True, SessionToken=login.token, User=user_info(login.user)
        )
    if login.state is LoginState.NEEDS_2FA:
        return msg.AuthenticateUserReply(
            Authenticated=False, Requires2FA=True, TwoFAType="Google", errormsg=login.message
        )
    return msg.AuthenticateUserReply(
        Authenticated=False, Locked=login.locked, errormsg=login.message
    )


class Functions:
    """The table of functions, by lower-cased name."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.table: dict[str, Function] = {}
        self.add("Ping", msg.Empty, self.ping)
        self.add("AuthenticateUser", msg.AuthenticateUserRequest, self.authenticate_user)
        self.add("Authenticate2FA", msg.Authenticate2FARequest, self.authenticate_2fa)
        self.add("WebAuthenticateUser", msg.WebAuthenticateUserRequest, self.web_authenticate)
        self.add("LogOut", msg.Empty, self.log_out)

    def add(self, name: str, payload: type[msgspec.Struct], handler: Handler) -> None:
        self.table[name.lower()] = Function(name, msg.PayloadDecoder(payload), handler)

    def _apply(self, conn: Conn, login: Login) -> msg.AuthenticateUserReply:
        """Carry a login outcome onto the connection and answer it."""
        if login.state is LoginState.AUTHENTICATED and login.user is not None:
            digest = login.token_digest
            assert digest is not None
            conn.log_in(login.user, digest, self.sessions.deps.clock())
        elif login.state is LoginState.NEEDS_2FA and login.user is not None:
            conn.pending_2fa = login.user.id
        else:
            conn.pending_2fa = None
        return login_reply(login)

    async def ping(self, conn: Conn, req: msg.Empty) -> msg.PingReply:
        return msg.PingReply()

    async def authenticate_user(
        self, conn: Conn, req: msg.AuthenticateUserRequest
    ) -> msg.AuthenticateUserReply:
        if not req.UserName or not req.UserName.strip():
            raise InvalidValue("Invalid value provided for UserName")
        if not req.Password:
            raise InvalidValue("Invalid value provided for Password")
        login = await self.sessions.authenticate(req.UserName, req.Password, conn.source)
        return self._apply(conn, login)

    async def authenticate_2fa(
        self, conn: Conn, req: msg.Authenticate2FARequest
    ) -> msg.AuthenticateUserReply:
        login = await self.sessions.second_factor(conn.pending_2fa, req.Code, conn.source)
        return self._apply(conn, login)

    async def web_authenticate(
        self, conn: Conn, req: msg.WebAuthenticateUserRequest
    ) -> msg.AuthenticateUserReply:
        return self._apply(conn, await self.sessions.resume(req.SessionToken))

    async def log_out(self, conn: Conn, req: msg.Empty) -> msgspec.Struct:
        if conn.user is None or conn.token_digest is None:
            raise NotAuthorized("Not logged in")
        await self.sessions.logout(conn.token_digest, conn.user, conn.source)
        conn.log_off()
        return SUCCESS
