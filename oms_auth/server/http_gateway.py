"""The HTTP gateway (docs/protocol.md, "The HTTP gateway: /AP/"): ``/AP/{Function}`` over the same
function table.

``GET`` takes the payload from the query string (keys in any case, values as strings, numbers
parsed where the payload expects them); ``POST`` takes a JSON body. The answer is the function's
reply document (the frame's ``o``) as ``application/json``, with the same errorcodes; an unknown
function is HTTP 404 with the 104 standard response. Every function runs through
:meth:`.ws.Gateway.call`, so each rule, limit and redaction holds here as on the WebSocket.

Authentication, per request: the header ``APToken: <SessionToken>`` resumes a session;
``GET /AP/Authenticate`` with HTTP Basic credentials is AuthenticateUser; ``/AP/Authenticate2FA``
with the header ``Pending2FaToken`` finishes a TOTP login.

Bodies (read by :mod:`.http1`, within the frame size limit): a POST's JSON object; an empty
body means ``{}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol.errors import ErrorCode, StandardResponse
from protocol.messages import AuthenticateUserReply, PayloadError

from ..engine import recovery_codes
from ..engine.devices import Origin
from ..engine.sessions import Login, LoginState, Sessions
from ..engine.texts import BASIC_REQUIRED
from ..errors import server_error
from ..logs import request_context
from .connection import Conn
from .functions import Function, Functions, login_reply
from .http import refused, response
from .ws import Gateway

__all__ = ["HttpGateway", "AP_PREFIX"]

AP_PREFIX = "/ap/"
# Per-request API-key authentication (docs/protocol.md, "The HTTP gateway: /AP/"), as the
# signature covers them.
_SIGNATURE_HEADERS = ("Nonce", "APIKey", "Signature", "UserId")
# Headers a request names at most once: with two, which one counts would be left to chance
# (and websockets raises on reading either). Content-Length: h11 refuses two that differ.
_ONCE = ("APToken", *_SIGNATURE_HEADERS, "Authorization", "Pending2FaToken")
_SECRET_HEADERS = ("APToken", "Signature", "Authorization", "Pending2FaToken")
# Payload fields carrying a password, an answer, a reset code or a session token: a function
# that has one is refused over GET (docs/protocol.md, "The HTTP gateway: /AP/"), so none sits in a
# URL or an access log.
# TOTP codes are not among them: they expire in seconds, and clients send
# /AP/Authenticate2FA?Code= as published.
# Functions whose every call carries a secret: refused over GET whatever the query holds.
_POST_ONLY = frozenset(
    {
        "resetpassword2",
        "setsecurityquestions",
        "getuseridforpasswordset",
        "getrequirementsforpasswordset",
        "registernewdevice",  # a device's emailed code
    }
)
_URL_SECRETS = frozenset(
    {"password", "pendingcode", "securityquestionanswer", "questions", "sessiontoken"}
)
log = logging.getLogger("oms_auth.server")
_encode = msgspec.json.Encoder().encode
_any_json = msgspec.json.Decoder()


class HttpGateway:
    """Answers ``/AP/{Function}`` requests (GET and POST)."""

    def __init__(self, gateway: Gateway, sessions: Sessions) -> None:
        self.gateway = gateway
        self.functions: Functions = gateway.functions
        self.sessions = sessions
        self.registry = gateway.registry

    async def __call__(
        self, ws: ServerConnection, request: Request, source: str, body: bytes = b""
    ) -> Response:
        path, _, query = request.path.partition("?")
        name = path[len(AP_PREFIX) :].strip("/")
        twice = _named_twice(request.headers)
        if twice is not None:
            return refused(HTTPStatus.BAD_REQUEST, f"The header {twice} may be sent only once")
        if request.method == "POST":
            payload = _body(body)
            if isinstance(payload, Response):
                return payload
        else:
            payload = dict(parse_qsl(query, keep_blank_values=True))
        conn = Conn(ws, source, lasting=False, agent=request.headers.get("User-Agent", ""))
        secrets = [*payload.values(), *(request.headers.get(h) for h in _SECRET_HEADERS)]
        with request_context(secrets) as cid:
            try:
                return await self._answer(conn, request, name, payload)
            except Exception:
                # What a function raises is answered inside Gateway.call; this is the rest
                # (a store that failed while resuming a session, say). Nothing of the request
                # is logged: the context keeps its secrets out of the traceback too.
                log.exception("HTTP request failed ref=%s: /AP/%s", cid, name[:80])
                return _json(HTTPStatus.INTERNAL_SERVER_ERROR, server_error(cid))
            finally:
                self.registry.log_off(conn)  # this request's login ends with it

    async def _answer(
        self, conn: Conn, request: Request, name: str, payload: dict[str, Any]
    ) -> Response:
        headers = request.headers
        folded = name.lower()
        if request.method == "GET" and recovery_codes.parse(_folded(payload).get("code")):
            # A recovery code stays good until used, unlike a TOTP code: never in a URL.
            return _post_only(name[:80])
        device_id = _folded(payload).get("deviceid")
        conn.device_id = device_id if isinstance(device_id, str) and device_id else None
        if folded == "authenticate":
            return _json(HTTPStatus.OK, await self._basic(conn, headers.get("Authorization")))
        if folded == "authenticate2fa":
            code = _folded(payload).get("code")
            if not isinstance(code, str | int) or isinstance(code, bool):
                code = None
            step = await self.sessions.second_factor(
                headers.get("Pending2FaToken"),
                code,
                conn.source,
                Origin(conn.agent, conn.device_id),
            )
            return _json(HTTPStatus.OK, login_reply(step))
        function = self.functions.table.get(folded)
        if function is None:
            detail = f"Unknown function {name[:80]!r}"
            refusal = StandardResponse.failure(ErrorCode.NOT_FOUND, detail)
            return _json(HTTPStatus.NOT_FOUND, refusal)
        if request.method == "GET" and _secret_in_url(function, payload):
            return _post_only(function.name)
        signed = {k: headers[k] for k in _SIGNATURE_HEADERS if k in headers}
        if folded == "authenticateuser" and signed:
            # A signed login by headers (as bots send it): the headers are its payload.
            payload = {**signed, **payload}
            signed = {}
        # The payload first: a request refused for its payload opens no session.
        decoded = function.payload.decode(payload, lax=request.method != "POST")
        if isinstance(decoded, PayloadError):
            refusal = StandardResponse.failure(decoded.code, decoded.detail)
            status = HTTPStatus.OK if decoded.routable else HTTPStatus.BAD_REQUEST
            return _json(status, refusal)
        return await self._call(conn, function, decoded, headers.get("APToken"), signed)

    async def _call(
        self,
        conn: Conn,
        function: Function,
        decoded: Any,
        token: str | None,
        signed: dict[str, str],
    ) -> Response:
        """Run the function as the session of ``token`` or of the signature headers, if any."""
        login: Login | None = None
        if token is not None:
            login = await self.sessions.resume(token)
        elif len(signed) == len(_SIGNATURE_HEADERS):
            login = await self.sessions.authenticate_api_key(
                signed["APIKey"],
                signed["Signature"],
                signed["UserId"],
                signed["Nonce"],
                conn.source,
            )
        if login is not None:
            if login.user is None or login.token_digest is None:
                refusal = StandardResponse.failure(ErrorCode.NOT_AUTHORIZED, login.message)
                return _json(HTTPStatus.UNAUTHORIZED, refusal)
            self.registry.apply(conn, login, self.sessions.deps.clock())
        try:
            reply = await self.gateway.call(conn, function, decoded)
        finally:
            if token is None and login is not None and login.token_digest and login.user:
                # A session opened for this one signed request ends with it.
                await self.sessions.end_request_session(login.token_digest, login.user.id)
        return _json(HTTPStatus.OK, reply)

    async def _basic(self, conn: Conn, authorization: str | None) -> AuthenticateUserReply:
        """``GET /AP/Authenticate`` with ``Authorization: Basic base64(user:password)``."""
        username = password = None
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
                username, _, password = decoded.partition(":")
            except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
                username = password = None
        if not username or not username.strip() or not password:
            return login_reply(Login(LoginState.FAILED, message=BASIC_REQUIRED))
        login = await self.sessions.authenticate(
            username, password, conn.source, Origin(conn.agent, conn.device_id)
        )
        return login_reply(login)


def _body(body: bytes) -> dict[str, Any] | Response:
    if not body:
        return {}  # a POST without a body means {}
    try:
        doc = _any_json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # nested past the decoder's depth too
        return refused(HTTPStatus.BAD_REQUEST, "The body is not valid JSON")
    if not isinstance(doc, dict):
        return refused(HTTPStatus.BAD_REQUEST, "The body must hold a JSON object")
    return doc


def _named_twice(headers: Headers) -> str | None:
    """The first header that must appear once and appears more often, else None."""
    return next((name for name in _ONCE if len(headers.get_all(name)) > 1), None)


def _secret_in_url(function: Function, payload: dict[str, Any]) -> bool:
    """Whether a GET of ``function`` with this query would put a secret in a URL: always for
    the functions made to carry one (a reset code, an answer), else when the query holds a
    secret key (AuthenticateUser with a Password; AddUserAPIKey or EnableGoogle2FA with the
    optional Password that proves the caller; these also run without one)."""
    if function.name.lower() in _POST_ONLY:
        return True
    fields = {f.lower() for f in function.secret_fields} & _URL_SECRETS
    return any(str(key).lower() in fields for key in payload)


def _post_only(name: str) -> Response:
    """405 with a 106: this GET would put a secret in a URL."""
    detail = f"{name} carries a password, an answer or a code: send it by POST"
    return _json(
        HTTPStatus.METHOD_NOT_ALLOWED, StandardResponse.failure(ErrorCode.NOT_SUPPORTED, detail)
    )


def _folded(payload: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in payload.items()}


def _json(status: HTTPStatus, reply: object) -> Response:
    return response(status, _encode(reply), "application/json")
