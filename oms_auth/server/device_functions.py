"""The session and device functions (docs/protocol.md, "Sessions and devices"), added to the
function table by :class:`~.functions.Functions`: GetUserSessions, LogOutSession,
LogOutOtherSessions, GetUserDevices."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from protocol import device_messages as dm
from protocol import messages as msg
from protocol.errors import SUCCESS

from ..engine import devices
from ..engine.session_list import SessionList
from .connection import Conn

if TYPE_CHECKING:
    from .functions import Functions

__all__ = ["DeviceFunctions", "iso_utc"]


def iso_utc(ts: float) -> str:
    """A time in ISO 8601 UTC, to the second (``2026-01-02T03:04:05Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class DeviceFunctions:
    def __init__(self, functions: Functions) -> None:
        self.functions = functions
        self.deps = functions.sessions.deps
        self.session_list = SessionList(functions.sessions)
        functions.add("GetUserSessions", msg.Empty, self.get_user_sessions)
        functions.add("LogOutSession", dm.LogOutSessionRequest, self.log_out_session)
        functions.add(
            "LogOutOtherSessions", dm.LogOutOtherSessionsRequest, self.log_out_other_sessions
        )
        functions.add("GetUserDevices", dm.UserDevicesRequest, self.get_user_devices)
        functions.add("RegisterNewDevice", dm.RegisterNewDeviceRequest, self.register_new_device)

    async def get_user_sessions(self, conn: Conn, req: msg.Empty) -> list[dm.UserSession]:
        views = await self.session_list.shown(await self.functions.caller(conn))
        return [
            dm.UserSession(
                SessionId=v.session_id,
                DeviceName=v.device_name,
                IpAddress=v.address,
                CreatedAt=iso_utc(v.created_at),
                LastSeenAt=iso_utc(v.last_seen),
                Current=v.current,
                ViaAPIKey=v.via_api_key,
            )
            for v in views
        ]

    async def log_out_session(self, conn: Conn, req: dm.LogOutSessionRequest) -> msgspec.Struct:
        caller = await self.functions.caller(conn)
        await self.session_list.log_out_one(caller, req.SessionId, conn.source)
        return SUCCESS

    async def log_out_other_sessions(
        self, conn: Conn, req: dm.LogOutOtherSessionsRequest
    ) -> msgspec.Struct:
        caller = await self.functions.caller(conn)
        await self.session_list.log_out_others(caller, req.Password, conn.source)
        return SUCCESS

    async def get_user_devices(self, conn: Conn, req: dm.UserDevicesRequest) -> list[dm.UserDevice]:
        caller = await self.functions.caller(conn)
        found = await devices.user_devices(self.deps, caller, req.UserId)
        now = self.deps.clock()
        return [
            dm.UserDevice(
                HashCode=d.hash_code,
                Location="",
                DeviceName=d.name,
                IpAddress=d.address,
                UserId=d.user_id,
                IsTrusted=d.trusted_until is not None and d.trusted_until > now,
                ExpirationTime=int(d.trusted_until * 1000) if d.trusted_until else 0,
            )
            for d in found
        ]

    async def register_new_device(
        self, conn: Conn, req: dm.RegisterNewDeviceRequest
    ) -> msgspec.Struct:
        await devices.register(self.deps, req.HashCode, req.PendingEmailCode, conn.source)
        return SUCCESS
