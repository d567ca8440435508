"""Domain refusals, and the one place they become errorcodes.

    Refusal                 a function's outcome that is not success (an m=1 reply)
    ├── NotAuthorized       20  the caller may not do this
    ├── InvalidValue        100 the client sent a value we cannot use
    ├── OperationFailed     101 a rule of the engine refused the operation
    ├── NotFound            104 the thing named does not exist (or must look so)
    └── NotSupported        106

Anything else raised by a handler is our bug: code 102 with a correlation id, logged, never
described on the wire.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import ErrorCode, StandardResponse

__all__ = [
    "Refusal",
    "NotAuthorized",
    "InvalidValue",
    "OperationFailed",
    "NotFound",
    "NotSupported",
    "server_error",
]


class Refusal(Exception):
    """A refusal with the detail text the client sees; never put a secret in it."""

    code: ClassVar[ErrorCode]

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail

    def response(self) -> StandardResponse:
        return StandardResponse.failure(self.code, self.detail)


class NotAuthorized(Refusal):
    code = ErrorCode.NOT_AUTHORIZED


class InvalidValue(Refusal):
    code = ErrorCode.INVALID_REQUEST


class OperationFailed(Refusal):
    code = ErrorCode.OPERATION_FAILED


class NotFound(Refusal):
    code = ErrorCode.NOT_FOUND


class NotSupported(Refusal):
    code = ErrorCode.NOT_SUPPORTED


def server_error(correlation_id: str) -> StandardResponse:
    """The answer to an unexpected exception: the id to quote to support, nothing more."""
    return StandardResponse.failure(
        ErrorCode.SERVER_ERROR, f"Internal error; reference {correlation_id}"
    )
