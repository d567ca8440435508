"""The standard response and its errorcode table (docs/protocol.md, "The standard
response and its codes").

Clients key on the number; the texts are the ones the OMS API documents, verbatim.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

__all__ = ["ErrorCode", "StandardResponse", "SUCCESS"]


class ErrorCode(IntEnum):
    """Every errorcode the service answers with; ``text`` is the exact errormsg."""

    OK = 0
    NOT_AUTHORIZED = 20
    INVALID_REQUEST = 100
    OPERATION_FAILED = 101
    SERVER_ERROR = 102
    NOT_FOUND = 104
    NOT_SUPPORTED = 106

    @property
    def text(self) -> str | None:
        return _TEXTS[self]


_TEXTS: dict[ErrorCode, str | None] = {
    ErrorCode.OK: None,
    ErrorCode.NOT_AUTHORIZED: "Not Authorized",
    ErrorCode.INVALID_REQUEST: "Invalid Response",
    ErrorCode.OPERATION_FAILED: "Operation Failed",
    ErrorCode.SERVER_ERROR: "Server Error",
    ErrorCode.NOT_FOUND: "Resource Not Found",
    ErrorCode.NOT_SUPPORTED: "Operation Not Supported",
}


class StandardResponse(msgspec.Struct, frozen=True):
    """``{result, errormsg, errorcode, detail}``: the answer of calls without a richer reply."""

    result: bool
    errormsg: str | None
    errorcode: int
    detail: str | None

    @classmethod
    def failure(cls, code: ErrorCode, detail: str | None) -> StandardResponse:
        return cls(result=False, errormsg=code.text, errorcode=int(code), detail=detail)


SUCCESS = StandardResponse(result=True, errormsg=None, errorcode=0, detail=None)
