"""Payloads and replies of the session and device functions (docs/protocol.md, "Sessions and
devices"): GetUserSessions, LogOutSession, LogOutOtherSessions, GetUserDevices,
RegisterNewDevice, and the login reply that asks to confirm a new device."""

from __future__ import annotations

import msgspec

from .messages import AuthenticateUserReply

__all__ = [
    "UserSession",
    "LogOutSessionRequest",
    "LogOutOtherSessionsRequest",
    "UserDevice",
    "UserDevicesRequest",
    "RegisterNewDeviceRequest",
    "NewDeviceReply",
]


class UserSession(msgspec.Struct, frozen=True):
    """One of GetUserSessions' answer: ``SessionId`` is opaque (never the token); the times
    in ISO 8601 UTC."""

    SessionId: str
    DeviceName: str
    IpAddress: str
    CreatedAt: str
    LastSeenAt: str
    Current: bool
    ViaAPIKey: bool


class LogOutSessionRequest(msgspec.Struct, frozen=True):
    SessionId: str | None = None


class LogOutOtherSessionsRequest(msgspec.Struct, frozen=True):
    """``Password``, the current one, stands in for a fresh login on this connection."""

    Password: str | None = None

    def __repr__(self) -> str:
        return "LogOutOtherSessionsRequest(<secrets redacted>)"


class UserDevicesRequest(msgspec.Struct, frozen=True):
    UserId: int | str | None = None


class UserDevice(msgspec.Struct, frozen=True):
    """One of GetUserDevices' answer, in the record shape the APEX SDKs parse:
    ``ExpirationTime`` is when its trust ends (POSIX ms; 0 when not trusted)."""

    HashCode: int
    Location: str
    DeviceName: str
    IpAddress: str
    UserId: int
    IsTrusted: bool
    ExpirationTime: int


class RegisterNewDeviceRequest(msgspec.Struct, frozen=True):
    HashCode: int | str | None = None
    PendingEmailCode: str | int | None = None

    def __repr__(self) -> str:
        return f"RegisterNewDeviceRequest(HashCode={self.HashCode!r}, <code redacted>)"


class NewDeviceReply(AuthenticateUserReply, frozen=True):
    """A right password from a device the user has not trusted (``verify_new_devices``):
    not logged in; the emailed code confirms the device named by ``HashCode``."""

    HashCode: int = 0
