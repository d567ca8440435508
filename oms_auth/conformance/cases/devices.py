"""Sessions and devices a user sees: GetUserSessions, LogOutSession, LogOutOtherSessions,
GetUserDevices (docs/protocol.md, "Sessions and devices")."""

from __future__ import annotations

import re
from typing import Any

from ..kit import Options, expect
from ..probe import Probe
from ..registry import case
from .checks import check_refusal, check_success
from .mailbox import NEW_USER_PASSWORD, invited_user

__all__: list[str] = []

_SESSION = {
    "SessionId": str,
    "DeviceName": str,
    "IpAddress": str,
    "CreatedAt": str,
    "LastSeenAt": str,
    "Current": bool,
    "ViaAPIKey": bool,
}
_DEVICE = {
    "HashCode": int,
    "Location": str,
    "DeviceName": str,
    "IpAddress": str,
    "UserId": int,
    "IsTrusted": bool,
    "ExpirationTime": int,
}
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def _shaped(record: Any, shape: dict[str, type], what: str) -> None:
    expect(isinstance(record, dict), f"{what}: not an object: {record!r}")
    types = {k: type(v) for k, v in record.items() if k in shape}
    expect(types == shape, f"{what}: keys and types {types!r}, expected {shape!r}")


async def _sessions(p: Probe) -> list[dict[str, Any]]:
    answer = await p.call("GetUserSessions", {})
    expect(answer["m"] == 1 and isinstance(answer["o"], list), "GetUserSessions: no list")
    for s in answer["o"]:
        _shaped(s, _SESSION, "a session")
        expect(bool(_ISO.fullmatch(s["CreatedAt"])), f"CreatedAt not ISO 8601 UTC: {s!r}")
    listed: list[dict[str, Any]] = answer["o"]
    return listed


@case(
    "user-sessions",
    "GetUserSessions lists a user's sessions by opaque id; LogOutSession and "
    "LogOutOtherSessions end them with LogoutEvent LoggedOutElsewhere",
)
async def _user_sessions(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    creds = (name, NEW_USER_PASSWORD)
    async with Probe(options, evidence) as a, Probe(options, evidence) as b:
        token = (await a.login(creds, "invited user")).get("SessionToken") or ""
        async with Probe(options, evidence) as me:
            await b.login(creds, "invited user")
            await me.login(creds, "invited user")
            listed = await _sessions(me)
            expect(len(listed) == 3, f"3 sessions expected, {len(listed)} listed")
            expect([s["Current"] for s in listed].count(True) == 1, "not one Current session")
            expect(all(token not in s["SessionId"] for s in listed), "a SessionId holds a token")
            others = [s["SessionId"] for s in listed if not s["Current"]]
            check_success(await me.call("LogOutSession", {"SessionId": others[0]}))
            check_refusal(await me.call("LogOutSession", {"SessionId": others[0]}), 1, 104)
            check_success(await me.call("LogOutOtherSessions", {}))
            for c in (a, b):
                event = await c.event()
                expect(event.get("n") == "LogoutEvent", f"no LogoutEvent: {event!r}")
                reason = (event.get("o") or {}).get("Reason")
                expect(reason == "LoggedOutElsewhere", f"Reason {reason!r}")
            expect(len(await _sessions(me)) == 1, "other sessions still listed")
    async with Probe(options, evidence) as anonymous:
        check_refusal(await anonymous.call("GetUserSessions", {}), 1, 20)


@case("user-devices", "GetUserDevices answers the APEX device records; others' are refused")
async def _user_devices(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, name = await invited_user(options, p)
    async with Probe(options, evidence) as me:
        payload = {"UserName": name, "Password": NEW_USER_PASSWORD, "DeviceId": "conformance"}
        logged = (await me.call("AuthenticateUser", payload))["o"]
        expect(logged.get("Authenticated") is True, f"login with a DeviceId failed: {logged!r}")
        answer = await me.call("GetUserDevices", {})
        expect(answer["m"] == 1 and isinstance(answer["o"], list), "GetUserDevices: no list")
        expect(len(answer["o"]) >= 1, "the device just used is not listed")
        for d in answer["o"]:
            _shaped(d, _DEVICE, "a device")
            expect(d["UserId"] == user_id and 0 < d["HashCode"] < 2**31, f"device {d!r}")
    async with Probe(options, evidence) as trader:
        await trader.login(options.trader, "trader")
        check_refusal(await trader.call("GetUserDevices", {"UserId": user_id}), 1, 20)
