"""The HTTP gateway (SPEC section 2b): ``/AP/{Function}`` over the same function table.

``GET`` takes the payload from the query string (keys in any case, values as strings, numbers
parsed where the payload expects them); ``POST`` takes a JSON body. The answer is the function's
reply document (the frame's ``o``) as ``application/json``, with the same errorcodes; an unknown
function is HTTP 404 with the 104 standard response. Every function runs through
:meth:`.ws.Gateway.call`, so each rule, limit and redaction holds here as on the WebSocket.

Authentication, per request: the header ``APToken: <SessionToken>`` resumes a session;
``GET /AP/Authenticate`` with HTTP Basic credentials is AuthenticateUser; ``/AP/Authenticate2FA``
with the header ``Pending2FaToken`` finishes a TOTP login.

Bodies: websockets reads only a request's head on its own port, so :class:`BodyConnection`
(the connection class the server is built with) keeps the bytes after the head of a request
that declares a ``Content-Length`` aside for the gateway instead of handing them to the
WebSocket frame parser; the response is sent and the connection closed, as for every plain HTTP
request on this port. A body must declare its length once (a chunked one is answered 411, two
lengths 400, neither read) and stays within the frame size limit.
"""

from __future__ import annotations

import asyncio
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

from ..engine.sessions import Login, LoginState, Sessions
from ..engine.texts import BASIC_REQUIRED
from ..errors import server_error
from ..logs import request_context
from .connection import Conn
from .functions import Function, Functions, login_reply
from .http import response
from .transport import GuardedConnection
from .ws import Gateway

__all__ = ["BodyConnection", "HttpGateway", "AP_PREFIX"]

AP_PREFIX = "/ap/"
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 65536
# Per-request API-key authentication (SPEC section 2b), as the signature covers them.
_SIGNATURE_HEADERS = ("Nonce", "APIKey", "Signature", "UserId")
# Headers a request names at most once: with two, which one counts would be left to chance
# (and websockets raises on reading either). Content-Length: see BodyConnection.
_ONCE = ("APToken", *_SIGNATURE_HEADERS, "Authorization", "Pending2FaToken")
_SECRET_HEADERS = ("APToken", "Signature", "Authorization", "Pending2FaToken")
# Payload fields carrying a password, an answer, a reset code or a session token: a function
# that has one is refused over GET (SPEC section 2b), so none sits in a URL or an access log.
# TOTP codes are not among them: they expire in seconds, and clients send
# /AP/Authenticate2FA?Code= as published.
# Functions whose every call carries a secret: refused over GET whatever the query holds.
_POST_ONLY = frozenset(
    {
        "resetpassword2",
        "setsecurityquestions",
        "getuseridforpasswordset",
        "getrequirementsforpasswordset",
    }
)
_URL_SECRETS = frozenset(
    {"password", "pendingcode", "securityquestionanswer", "questions", "sessiontoken"}
)
log = logging.getLogger("oms_auth.server")
_encode = msgspec.json.Encoder().encode
_any_json = msgspec.json.Decoder()


class BodyConnection(GuardedConnection):
    """A server connection that sets aside the body of a plain HTTP request (see module).

    Bounded: a body declared longer than ``max_body`` is not taken (websockets refuses the
    request), a request asking for a WebSocket upgrade is never read as having a body, and bytes
    past the declared length end the connection. A head naming ``Content-Length`` twice has
    no body we could trust: none is read, and the gateway answers 400."""

    max_body = 65536  # the app makes a subclass with its own limit (``configured``)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytearray | None = bytearray()  # None once the head was handed on
        self.body: bytearray | None = None  # set once a head declaring a body has been read
        self.body_length = 0
        self.body_complete = asyncio.Event()
        self.too_long = False  # a body declared past max_body: answered 413, never read
        self.length_twice = False  # Content-Length named twice: answered 400, never read
        self.unframed = False  # Transfer-Encoding (chunked): answered 411, never read

    def data_received(self, data: bytes) -> None:
        if self.body is not None:
            self._add_to_body(data)
            return
        if self._head is None:
            super().data_received(data)
            return
        seen = len(self._head)
        self._head += data
        end = self._head.find(_HEAD_END, max(0, seen - len(_HEAD_END) + 1))
        if end < 0:
            if len(self._head) > _MAX_HEAD:  # let websockets refuse a head this long
                head, self._head = bytes(self._head), None
                super().data_received(head)
            return
        head, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        self._head = None
        self._on_head(head, rest)

    def _on_head(self, head: bytes, rest: bytes) -> None:
        if _values(head, b"upgrade"):
            # websockets reads it all as usual (and refuses an upgrade that declares a body).
            super().data_received(head + rest)
            return
        lengths = [_body_length(value) for value in _values(head, b"content-length")]
        self.length_twice = len(lengths) > 1
        # A body framed otherwise (chunked) is not read: answered 411, its bytes dropped.
        self.unframed = bool(_values(head, b"transfer-encoding"))
        if not (self.length_twice or self.unframed or (lengths and lengths[0])):
            super().data_received(head + rest)  # no body: websockets reads it as usual
            return
        length = (lengths[0] or 0) if lengths else 0
        if self.length_twice or self.unframed or length > self.max_body:
            self.too_long, length = True, 0  # its bytes are dropped as they come
        # websockets refuses a request whose head declares a body: it is handed the head with
        # the framing taken out, and the body stays here.
        self.body, self.body_length = bytearray(), length
        super().data_received(_without(head, (b"content-length", b"transfer-encoding")))
        self._add_to_body(rest)

    def _add_to_body(self, data: bytes) -> None:
        assert self.body is not None
        if self.too_long:
            return
        room = self.body_length - len(self.body)
        if len(data) > room:  # more than it declared: not a client to read further
            self.transport.abort()
            data = data[:room]
        self.body += data
        if len(self.body) >= self.body_length:
            self.body_complete.set()


def _values(head: bytes, name: bytes) -> list[bytes]:
    """The values of every line of ``head`` naming header ``name`` (lower case)."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            values.append(value.strip())
    return values


def _without(head: bytes, names: tuple[bytes, ...]) -> bytes:
    kept = [
        line for line in head.split(b"\r\n") if line.partition(b":")[0].strip().lower() not in names
    ]
    return b"\r\n".join(kept)


def _body_length(value: bytes) -> int | None:
    """A Content-Length as a body length (None: no body, or not a number websockets takes)."""
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length > 0 else None


class HttpGateway:
    """Answers ``/AP/{Function}`` requests (GET and POST)."""

    def __init__(self, gateway: Gateway, sessions: Sessions, max_body: int) -> None:
        self.gateway = gateway
        self.functions: Functions = gateway.functions
        self.sessions = sessions
        self.registry = gateway.registry
        self.max_body = max_body

    async def __call__(self, ws: ServerConnection, request: Request, source: str) -> Response:
        path, _, query = request.path.partition("?")
        name = path[len(AP_PREFIX) :].strip("/")
        twice = _named_twice(ws, request.headers)
        if twice is not None:
            return _refused(HTTPStatus.BAD_REQUEST, f"The header {twice} may be sent only once")
        if request.method == "POST":
            payload = await self._body(ws)
            if isinstance(payload, Response):
                return payload
        else:
            payload = dict(parse_qsl(query, keep_blank_values=True))
        conn = Conn(ws, source, lasting=False)
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
        if folded == "authenticate":
            return _json(HTTPStatus.OK, await self._basic(conn, headers.get("Authorization")))
        if folded == "authenticate2fa":
            code = _folded(payload).get("code")
            if not isinstance(code, str | int) or isinstance(code, bool):
                code = None
            step = await self.sessions.second_factor(
                headers.get("Pending2FaToken"), code, conn.source
            )
            return _json(HTTPStatus.OK, login_reply(step))
        function = self.functions.table.get(folded)
        if function is None:
            detail = f"Unknown function {name[:80]!r}"
            refusal = StandardResponse.failure(ErrorCode.NOT_FOUND, detail)
            return _json(HTTPStatus.NOT_FOUND, refusal)
        if request.method == "GET" and _secret_in_url(function, payload):
            detail = f"{function.name} carries a password, an answer or a code: send it by POST"
            refusal = StandardResponse.failure(ErrorCode.NOT_SUPPORTED, detail)
            return _json(HTTPStatus.METHOD_NOT_ALLOWED, refusal)
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
        login = await self.sessions.authenticate(username, password, conn.source)
        return login_reply(login)

    async def _body(self, ws: ServerConnection) -> dict[str, Any] | Response:
        body = getattr(ws, "body", None)
        if body is None:
            return {}  # no body (a POST without one means {})
        length = ws.body_length  # type: ignore[attr-defined]
        if ws.unframed:  # type: ignore[attr-defined]
            detail = "A body must come with its Content-Length (chunked bodies are not read)"
            return _refused(HTTPStatus.LENGTH_REQUIRED, detail)
        if ws.too_long or length > self.max_body:  # type: ignore[attr-defined]
            detail = f"A body is at most {self.max_body} bytes"
            return _refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, detail)
        try:
            # Within websockets' own 10 s for the whole request, so this answer can go out.
            await asyncio.wait_for(ws.body_complete.wait(), 5)  # type: ignore[attr-defined]
        except TimeoutError:
            return _refused(HTTPStatus.REQUEST_TIMEOUT, "The body did not arrive in time")
        try:
            doc = _any_json.decode(bytes(body[:length]))
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder's depth too
            return _refused(HTTPStatus.BAD_REQUEST, "The body is not valid JSON")
        if not isinstance(doc, dict):
            return _refused(HTTPStatus.BAD_REQUEST, "The body must hold a JSON object")
        return doc


def _named_twice(ws: ServerConnection, headers: Headers) -> str | None:
    """The first header that must appear once and appears more often, else None."""
    if getattr(ws, "length_twice", False):
        return "Content-Length"
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


def _folded(payload: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in payload.items()}


def _json(status: HTTPStatus, reply: object) -> Response:
    return response(status, _encode(reply), "application/json")


def _refused(status: HTTPStatus, detail: str) -> Response:
    return _json(status, StandardResponse.failure(ErrorCode.INVALID_REQUEST, detail))
