"""Request and reply payloads, one Struct per function (docs/protocol.md, "Functions"), and the
payload decoder.

Request fields default to ``None`` so that a missing key and a null both reach the engine as
"not given", where the contract's own words for that case ("Invalid value provided for Password")
apply. A key of the wrong type is refused here, naming the key.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Generic, TypeVar

import msgspec

from .errors import ErrorCode

__all__ = [
    "PayloadError",
    "PayloadDecoder",
    "Empty",
    "PingReply",
    "AuthenticateUserRequest",
    "Authenticate2FARequest",
    "WebAuthenticateUserRequest",
    "UserInfo",
    "AuthenticateUserReply",
    "LogoutEvent",
    "UserRequest",
    "UserLookupRequest",
    "NO_TIME",
    "UserInfoReply",
    "LogoutReason",
    "ResetPasswordRequest",
    "ResetPassword2Request",
    "PendingCodeRequest",
    "UserIdReply",
    "RequirementsReply",
    "UnlockUserRequest",
    "AddUserAPIKeyRequest",
    "AddUserAPIKeyReply",
    "APIKeyInfo",
    "RemoveUserAPIKeyRequest",
    "EnableGoogle2FAReply",
    "Disable2FARequest",
    "EnableGoogle2FARequest",
    "SetSecurityQuestionsRequest",
    "SecurityQuestionsReply",
    "CreateUserRequest",
    "ForceUserLogoffRequest",
    "LockedUser",
    "CreateRecoveryCodesRequest",
    "RecoveryCodesReply",
    "RecoveryCodesLeftReply",
    "ResetUser2FARequest",
]


class Empty(msgspec.Struct, frozen=True):
    """A payload with no keys (Ping, LogOut); anything sent is ignored."""


class PingReply(msgspec.Struct, frozen=True):
    msg: str = "PONG"


class AuthenticateUserRequest(msgspec.Struct, frozen=True):
    """``{UserName, Password}``, or with ``APIKey`` an API-key login: ``Signature`` is the
    lower-case hex HMAC-SHA256 of ``Nonce + UserId + APIKey`` keyed with the APISecret
    (docs/protocol.md, "AuthenticateUser"); ``UserId`` as an integer or a decimal
    string, ``Nonce`` as an integer or any text of 1 to 64 printable ASCII characters."""

    UserName: str | None = None
    Password: str | None = None
    APIKey: str | None = None
    Signature: str | None = None
    UserId: int | str | None = None
    Nonce: int | str | None = None
    # The device a password login comes from (front-ends keep one per browser): docs/protocol.md,
    # "Sessions and devices".
    DeviceId: str | None = None

    def __repr__(self) -> str:
        return (
            f"AuthenticateUserRequest(UserName={self.UserName!r}, APIKey={self.APIKey!r},"
            " <secrets redacted>)"
        )


class Authenticate2FARequest(msgspec.Struct, frozen=True):
    # Some clients send the six digits as a number; the engine zero-pads those.
    Code: str | int | None = None


class WebAuthenticateUserRequest(msgspec.Struct, frozen=True):
    """``{SessionToken}`` resumes a session; ``{UserName, Password}`` is a login."""

    SessionToken: str | None = None
    UserName: str | None = None
    Password: str | None = None
    DeviceId: str | None = None


class UserInfo(msgspec.Struct, frozen=True):
    UserId: int
    UserName: str
    Email: str
    EmailVerified: bool
    AccountId: int | None
    OMSId: int
    Use2FA: bool


class AuthenticateUserReply(msgspec.Struct, frozen=True):
    """The login reply (docs/protocol.md, "The login reply"): front-ends and bots read the top-level
    ``UserId`` and ``AuthType`` (= ``TwoFAType``); a pending second step carries
    ``Pending2FaToken``. WebAuthenticateUser's ``UserId`` is a decimal string."""

    Authenticated: bool
    SessionToken: str | None = None
    UserId: int | str | None = None
    User: UserInfo | None = None
    Locked: bool = False
    Requires2FA: bool = False
    TwoFAType: str | None = None
    AuthType: str | None = None
    TwoFAToken: str | None = None
    Pending2FaToken: str | None = None
    AddtlInfo: str = ""
    errormsg: str | None = None
    # A master user without security questions, logged in: it must set them before it logs
    # out (docs/protocol.md, "SetSecurityQuestions and GetSecurityQuestions"); front-ends show
    # the form.
    NeedsSecurityQuestions: bool = False

    def __repr__(self) -> str:
        # The tokens are bearer credentials: never let them reach a log through a repr.
        token = "<redacted>" if self.SessionToken else None
        pending = "<redacted>" if self.Pending2FaToken else None
        return (
            f"AuthenticateUserReply(Authenticated={self.Authenticated}, SessionToken={token},"
            f" Pending2FaToken={pending})"
        )


class LogoutReason(StrEnum):
    """Why a session ended, as LogoutEvent tells it (docs/protocol.md, "Events")."""

    PASSWORD_CHANGED = "PasswordChanged"
    FORCED_LOGOFF = "ForcedLogoff"
    LOGGED_OUT_ELSEWHERE = "LoggedOutElsewhere"
    SESSION_EXPIRED = "SessionExpired"


class LogoutEvent(msgspec.Struct, frozen=True):
    """m=3, before a connection's session ends for a reason other than its own LogOut."""

    Reason: str


class ResetPasswordRequest(msgspec.Struct, frozen=True):
    UserName: str | None = None


class ResetPassword2Request(msgspec.Struct, frozen=True):
    # The emailed link carries UserId as text, so both forms are accepted.
    UserId: int | str | None = None
    Password: str | None = None
    PendingCode: str | None = None
    SecurityQuestionAnswer: str | None = None
    Code: str | int | None = None

    def __repr__(self) -> str:
        return f"ResetPassword2Request(UserId={self.UserId!r}, <secrets redacted>)"


class PendingCodeRequest(msgspec.Struct, frozen=True):
    PendingCode: str | None = None

    def __repr__(self) -> str:
        return "PendingCodeRequest(<redacted>)"


class UserIdReply(msgspec.Struct, frozen=True):
    UserId: int


class RequirementsReply(msgspec.Struct, frozen=True):
    UserId: int
    SecurityQuestion: str | None
    Requires2FA: bool
    TwoFAType: str | None
    PasswordRules: list[str]
    ExpiresAt: int
    # For the reset page: whoever holds the link is the user, so its name may be shown and
    # checked against the new password; Locale picks the page's language (None: the browser's).
    UserName: str | None = None
    Locale: str | None = None


class UnlockUserRequest(msgspec.Struct, frozen=True):
    UserId: int | str | None = None


class UserRequest(msgspec.Struct, frozen=True):
    """GetUserInfo, GetUserPermissions, GetUserAccounts: no UserId (or one's own) for oneself.
    Clients also send OMSId and UserName beside it; the caller's OMS is what counts."""

    UserId: int | str | None = None


class UserLookupRequest(msgspec.Struct, frozen=True):
    """GetUserInfo, GetUserPermissions, GetUserAccounts: the user named by ``UserId``, else
    ``UserName``, else ``Email``; none of them: the caller (docs/protocol.md, "GetUserInfo,
    GetUserPermissions, GetUserAccounts"). Clients also send OMSId: the caller's OMS counts."""

    UserId: int | str | None = None
    UserName: str | None = None
    Email: str | None = None


NO_TIME = "0001-01-01T00:00:00Z"  # the APEX record's "no such time"


class UserInfoReply(msgspec.Struct, frozen=True):
    """GetUserInfo: the APEX user record, every key with its documented type (the official SDKs
    parse it strictly; no hash, salt or pending code is ever in it; times ISO 8601 UTC, NO_TIME
    for none), then what the user may do, its accounts, and whether it has security questions
    set (a master user without them is asked to set them: docs/protocol.md,
    "SetSecurityQuestions and GetSecurityQuestions")."""

    UserId: int
    UserName: str
    Email: str
    PasswordHash: str = ""
    PendingEmailCode: str = ""
    EmailVerified: bool = False
    AccountId: int = 0
    DateTimeCreated: str = NO_TIME
    AffiliateId: int = 0
    RefererId: int = 0
    OMSId: int = 0
    Use2FA: bool = False
    Salt: str = ""
    PendingCodeTime: str = NO_TIME
    Locked: bool = False
    LockedTime: str = NO_TIME
    NumberOfFailedAttempt: int = 0
    MarginBorrowerEnabled: bool = False
    MarginAcquisitionHalt: bool = False
    OperatorId: int = 0
    Permissions: list[str] = []
    AccountIds: list[int] = []
    HasSecurityQuestions: bool = False


class AddUserAPIKeyRequest(msgspec.Struct, frozen=True):
    """AddUserAPIKey: a new key for ``UserId`` (none: the caller) with these permissions.
    ``Password``, the current one, stands in for a fresh login on this connection."""

    UserId: int | str | None = None
    Permissions: list[str] | None = None
    Password: str | None = None

    def __repr__(self) -> str:
        return f"AddUserAPIKeyRequest(UserId={self.UserId!r}, <password redacted>)"


class AddUserAPIKeyReply(msgspec.Struct, frozen=True):
    """The new key; ``APISecret`` is shown here once and never again."""

    APIKey: str
    APISecret: str
    UserId: int
    Permissions: list[str]

    def __repr__(self) -> str:
        # The secret signs logins: never let it reach a log through a repr.
        return f"AddUserAPIKeyReply(APIKey={self.APIKey!r}, UserId={self.UserId}, <redacted>)"


class APIKeyInfo(msgspec.Struct, frozen=True):
    """One of GetUserAPIKeys' answer (never the secret)."""

    APIKey: str
    UserId: int
    Permissions: list[str]


class RemoveUserAPIKeyRequest(msgspec.Struct, frozen=True):
    """``Password``, the current one, stands in for a fresh login on this connection."""

    UserId: int | str | None = None
    APIKey: str | None = None
    Password: str | None = None

    def __repr__(self) -> str:
        return f"RemoveUserAPIKeyRequest(UserId={self.UserId!r}, APIKey={self.APIKey!r}, <...>)"


class EnableGoogle2FARequest(msgspec.Struct, frozen=True):
    """``Password``, the current one, stands in for a fresh login on this connection."""

    UserId: int | str | None = None
    Password: str | None = None

    def __repr__(self) -> str:
        return f"EnableGoogle2FARequest(UserId={self.UserId!r}, <password redacted>)"


class EnableGoogle2FAReply(msgspec.Struct, frozen=True):
    """The new TOTP secret, shown once: as an ``otpauth://`` URI (for a QR code) and typed."""

    GoogleQRCode: str
    ManualCode: str

    def __repr__(self) -> str:
        return "EnableGoogle2FAReply(<secret redacted>)"


class Disable2FARequest(msgspec.Struct, frozen=True):
    Code: str | int | None = None
    UserId: int | str | None = None

    def __repr__(self) -> str:
        return "Disable2FARequest(<redacted>)"


class SetSecurityQuestionsRequest(msgspec.Struct, frozen=True):
    """``{Password, Questions: [{Question, Answer}]}``, 1 to 3; ``UserId``, when sent, must be
    the caller's own."""

    Password: str | None = None
    Questions: list[dict[str, Any]] | None = None
    UserId: int | str | None = None

    def __repr__(self) -> str:
        return "SetSecurityQuestionsRequest(<secrets redacted>)"


class SecurityQuestionsReply(msgspec.Struct, frozen=True):
    Questions: list[str]


class CreateUserRequest(msgspec.Struct, frozen=True):
    """An invited user in the caller's OMS (the caller's ``OMSId`` counts, whatever is sent)."""

    UserName: str | None = None
    Email: str | None = None
    AccountId: int | None = None
    Permissions: list[str] | None = None
    Locale: str | None = None  # the language of its mail (en, de, ...); none: the default


class ForceUserLogoffRequest(msgspec.Struct, frozen=True):
    UserId: int | str | None = None
    UserName: str | None = None


class LockedUser(msgspec.Struct, frozen=True):
    """One of GetLockedUsers' answer; the times in ISO 8601 UTC."""

    UserId: int
    UserName: str
    Email: str
    LockedDateTime: str
    LockedUntil: str


class CreateRecoveryCodesRequest(msgspec.Struct, frozen=True):
    """``{}``; ``Password``, the current one, stands in for a fresh login on this connection."""

    Password: str | None = None

    def __repr__(self) -> str:
        return "CreateRecoveryCodesRequest(<password redacted>)"


class RecoveryCodesReply(msgspec.Struct, frozen=True):
    """A new set of recovery codes, shown once (docs/protocol.md, "Recovery codes and
    ResetUser2FA")."""

    RecoveryCodes: list[str]

    def __repr__(self) -> str:
        return f"RecoveryCodesReply(<{len(self.RecoveryCodes)} codes redacted>)"


class RecoveryCodesLeftReply(msgspec.Struct, frozen=True):
    Left: int


class ResetUser2FARequest(msgspec.Struct, frozen=True):
    """``{UserId}``, a user of the Operator's OMS; ``Password`` as for CreateRecoveryCodes."""

    UserId: int | str | None = None
    Password: str | None = None

    def __repr__(self) -> str:
        return f"ResetUser2FARequest(UserId={self.UserId!r}, <password redacted>)"


class PayloadError(msgspec.Struct, frozen=True):
    """Why a payload was refused. ``routable`` is False when ``o`` is not a JSON object at all
    (an m=5 answer), True when a key has the wrong type (an m=1 reply of the function)."""

    code: ErrorCode
    detail: str
    routable: bool


T = TypeVar("T", bound=msgspec.Struct)
_any_json = msgspec.json.Decoder()

_WRONG_TYPE = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)` - at `\$\.(?P<key>\w+)")
_AT_KEY = re.compile(r"at `\$\.(?P<key>\w+)")
_KINDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "float": "a number",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def _kind(name: str) -> str:
    parts = [part.strip() for part in name.split("|") if part.strip() != "null"]
    return " or ".join(_KINDS.get(part, part) for part in parts or ["null"])


class PayloadDecoder(Generic[T]):
    """Decodes ``o`` (a JSON string or an already-parsed object) into one payload Struct.

    Keys match their fields case-insensitively (``username`` is ``UserName``, as the deployed
    gateways accept); where a payload holds both spellings, the documented one wins. Unknown
    keys are ignored."""

    __slots__ = ("type", "_fields", "_by_folded")

    def __init__(self, type_: type[T]) -> None:
        self.type = type_
        self._fields = frozenset(type_.__struct_fields__)
        self._by_folded = {name.lower(): name for name in type_.__struct_fields__}

    def decode(self, o: str | dict[str, Any], *, lax: bool = False) -> T | PayloadError:
        """``lax``: values may be strings where numbers or booleans are expected (an HTTP
        query string carries only strings)."""
        try:
            doc = _any_json.decode(o) if isinstance(o, str) else o
            if doc is None:  # "null", as the official Python SDK sends its Ping: no payload
                doc = {}
            if not isinstance(doc, dict):
                return PayloadError(
                    ErrorCode.INVALID_REQUEST, "Key o must hold a JSON object", False
                )
            if not self._fields.issuperset(doc):
                doc = self._canonical(doc)
            return msgspec.convert(doc, self.type, strict=not lax)
        except msgspec.ValidationError as exc:
            return self._explain(str(exc))
        except (msgspec.DecodeError, RecursionError):
            return PayloadError(ErrorCode.INVALID_REQUEST, "Key o is not valid JSON", False)

    def _canonical(self, doc: dict[Any, Any]) -> dict[str, Any]:
        exact: dict[str, Any] = {}
        loose: dict[str, Any] = {}
        for key, value in doc.items():
            name = self._by_folded.get(key.lower()) if isinstance(key, str) else None
            if name is None:
                continue  # unknown keys are ignored
            if key == name:
                exact[name] = value
            else:
                loose.setdefault(name, value)
        return {**loose, **exact}

    @staticmethod
    def _explain(message: str) -> PayloadError:
        wrong = _WRONG_TYPE.search(message)
        if wrong:
            key = wrong["key"]
            detail = f"{key} must be {_kind(wrong['want'])}, not {_kind(wrong['got'])}"
            return PayloadError(ErrorCode.INVALID_REQUEST, detail, True)
        at = _AT_KEY.search(message)
        if at:
            detail = f"Invalid value provided for {at['key']}"
            return PayloadError(ErrorCode.INVALID_REQUEST, detail, True)
        # No key named: the payload itself is not an object.
        return PayloadError(ErrorCode.INVALID_REQUEST, "Key o must hold a JSON object", False)
