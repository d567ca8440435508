"""API keys (docs/rules.md, "API keys"): AddUserAPIKey, GetUserAPIKeys, RemoveUserAPIKey, and the
pieces of the API-key login that :mod:`.sessions` uses (the signature, the nonce, the sealed
secret).

The rules:

- Who: the user itself, logged in with its password, or an Operator for users of its OMS
  (users of other OMSs look missing). Adding and removing need fresh proof (the password
  proved on this connection within ``fresh_auth_seconds``, or given again in the payload:
  :meth:`.sessions.Sessions.prove`). A session opened with an API key cannot add or remove
  keys, whoever holds it; it may list its own user's keys.
- The write re-checks its caller in its own transaction (:mod:`.caller`): a key whose addition
  raced a reset of the password the decision was made on is never written after the reset,
  so a reset that revokes the keys leaves none behind.
- The APISecret is shown once, in AddUserAPIKey's reply. The store holds it only sealed with the
  service key, bound to the key and its user (a sealed secret copied to another row does not
  open there); GetUserAPIKeys never shows it.
- A login signs ``Nonce + UserId + APIKey`` (the texts as sent, concatenated) with HMAC-SHA256
  keyed with the APISecret, in lower-case hex, compared in constant time. The nonce is any text
  of 1 to 64 printable ASCII characters (an integer: its decimal text), accepted once for the
  key for as long as the key exists, on any node: the store records its digest in the
  transaction that opens the session, and a nonce recorded already fails that login.
- Adding and removing are audited (the key, never the secret); removing a key ends every
  session opened with it, on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING

import msgspec

from protocol.messages import LogoutReason

from ..crypto import Sealer
from ..errors import InvalidValue, NotAuthorized, NotFound, OperationFailed
from ..store import ApiKey, AuditEntry, Authority, User
from . import users
from .caller import Caller, guarded
from .deps import Deps
from .texts import (
    API_KEY_NOT_FOUND,
    API_KEY_SESSION,
    INVALID_PERMISSIONS,
    NOT_LOGGED_IN,
    ONLY_OWN_API_KEYS,
    TOO_MANY_API_KEYS,
)
from .users import OPERATOR

if TYPE_CHECKING:
    from .sessions import Sessions

__all__ = [
    "ApiKeys",
    "NewApiKey",
    "MAX_KEY_LENGTH",
    "new_key",
    "new_secret",
    "seal_context",
    "seal_secret",
    "open_secret",
    "signed_text",
    "signature_matches",
    "nonce_digest",
]

MAX_KEY_LENGTH = 128  # longer APIKey values are never looked up
INVALID_API_KEY = "Invalid value provided for APIKey"
_NONCE = re.compile(r"[\x20-\x7e]{1,64}")


class NewApiKey(msgspec.Struct, frozen=True):
    """A key just added: the only time its ``secret`` is known. Never log it."""

    key: str
    secret: str
    user_id: int
    permissions: tuple[str, ...]

    def __repr__(self) -> str:
        return f"NewApiKey(key={self.key!r}, user_id={self.user_id}, <secret redacted>)"


def new_key() -> str:
    """An APIKey: 128 random bits in hex (the public half; unique in the store)."""
    return secrets.token_hex(16)


def new_secret() -> str:
    """An APISecret: 256 random bits in hex."""
    return secrets.token_hex(32)


def seal_context(user_id: int, key: str) -> bytes:
    return f"api-key:{user_id}:{key}".encode()


def seal_secret(sealer: Sealer, user_id: int, key: str, secret: str) -> bytes:
    return sealer.seal(secret.encode(), seal_context(user_id, key))


def open_secret(sealer: Sealer, record: ApiKey) -> str:
    return sealer.open(record.secret_sealed, seal_context(record.user_id, record.key)).decode()


def signed_text(nonce: str | int, user_id: str | int, key: str) -> str:
    """What a login signs: the nonce, the UserId and the APIKey as sent, concatenated."""
    return f"{nonce}{user_id}{key}"


def signature_matches(secret: str | None, signature: str, text: str) -> bool:
    """HMAC-SHA256 of ``text`` keyed with ``secret`` equals ``signature`` (hex, compared in
    constant time). Without a secret (no such key) a random one is used, so the work is the
    same and the answer False."""
    key = secret.encode() if secret is not None else secrets.token_bytes(32)
    expected = hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected.encode(), given) and secret is not None


def nonce_digest(nonce: str | int | None) -> bytes | None:
    """The SHA-256 digest of the nonce's text (1 to 64 printable ASCII characters; an integer
    as its decimal text, what is signed), as the store remembers it; None when not a nonce."""
    if isinstance(nonce, bool) or not isinstance(nonce, int | str):
        return None
    text = str(nonce)
    return hashlib.sha256(text.encode()).digest() if _NONCE.fullmatch(text) else None


def _permissions(given: list[str] | None, target: User) -> tuple[str, ...]:
    """The key's permissions (:func:`.users.permission_names`). A key never carries Operator
    for a user who is not one."""
    names = users.permission_names(given)
    if OPERATOR in names and OPERATOR not in target.permissions:
        raise InvalidValue(INVALID_PERMISSIONS)
    return names


class ApiKeys:
    """The API-key functions, for a :class:`~.caller.Caller` (None: not logged in)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.deps: Deps = sessions.deps

    async def add(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        permissions: list[str] | None,
        source: str,
        *,
        password: str | None = None,
    ) -> NewApiKey:
        """AddUserAPIKey: a new key for the user; its secret is in the answer and nowhere
        else in plain form. ``password``: the current one, when the connection has no fresh
        proof."""
        d = self.deps
        caller, target = await self._target(caller, user_id)
        granted = _permissions(permissions, target)
        await self.sessions.prove(caller, password, source)
        key, secret = new_key(), new_secret()
        record = ApiKey(
            key=key,
            user_id=target.id,
            permissions=granted,
            secret_sealed=seal_secret(d.sealer, target.id, key, secret),
            created_at=d.clock(),
        )
        entry = AuditEntry(
            action="api-key-added",
            actor_id=caller.id,
            target_id=target.id,
            target_name=target.username,
            source=source,
            detail=f"key {key}; permissions {','.join(granted) or '-'}",
        )
        authority = _authority(caller, target)
        limit = d.settings.api_keys_per_user
        if not await guarded(d.store.add_api_key(record, limit, entry, authority=authority)):
            raise OperationFailed(TOO_MANY_API_KEYS)
        d.events.count("api_keys_added")
        return NewApiKey(key, secret, target.id, granted)

    async def keys(self, caller: Caller | None, user_id: int | str | None) -> list[ApiKey]:
        """GetUserAPIKeys: the user's keys (the records hold only the sealed secret). A key
        session may list its own user's."""
        if caller is not None and caller.via_api_key:
            target = await users.visible_user(self.deps, caller, user_id, ONLY_OWN_API_KEYS)
            if target.id != caller.id:
                raise NotAuthorized(API_KEY_SESSION)
        else:
            _, target = await self._target(caller, user_id)
        return await self.deps.store.api_keys(target.id)

    async def remove(
        self,
        caller: Caller | None,
        user_id: int | str | None,
        key: str | None,
        source: str,
        *,
        password: str | None = None,
    ) -> None:
        """RemoveUserAPIKey: the key goes, and every session opened with it ends everywhere."""
        d = self.deps
        caller, target = await self._target(caller, user_id)
        if not isinstance(key, str) or not key.strip():
            raise InvalidValue(INVALID_API_KEY)
        key = key.strip()
        await self.sessions.prove(caller, password, source)
        reason = LogoutReason.LOGGED_OUT_ELSEWHERE
        entry = AuditEntry(
            action="api-key-removed",
            actor_id=caller.id,
            target_id=target.id,
            target_name=target.username,
            source=source,
            detail=f"key {key}",
        )
        ended = None
        if len(key) <= MAX_KEY_LENGTH:
            authority = _authority(caller, target)
            removal = d.store.remove_api_key(target.id, key, reason, entry, authority=authority)
            ended = await guarded(removal)
        if ended is None:
            raise NotFound(API_KEY_NOT_FOUND)
        for session_digest in ended:
            d.events.session_revoked(session_digest, reason)
        d.events.count("api_keys_removed")

    async def _target(
        self, caller: Caller | None, user_id: int | str | None
    ) -> tuple[Caller, User]:
        """The caller and the user whose keys it manages, or the refusal."""
        if caller is None:
            raise NotAuthorized(NOT_LOGGED_IN)
        if caller.via_api_key:
            raise NotAuthorized(API_KEY_SESSION)
        target = await users.visible_user(self.deps, caller, user_id, ONLY_OWN_API_KEYS)
        return caller, target


def _authority(caller: Caller, target: User) -> Authority:
    """What the key's write re-checks: the caller's session, and Operator for another user."""
    return caller.authority(None if target.id == caller.id else OPERATOR)
