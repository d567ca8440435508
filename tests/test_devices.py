"""docs/protocol.md, "Sessions and devices": the device a login names (DeviceId, else the
User-Agent and address), its keyed HashCode, GetUserDevices in the record shape the APEX SDKs
parse, and the "new sign-in" notice (one per device, never for API keys); over real sockets
on both stores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, parse_mail, sql, wait_for_mail
from .test_apikeys import key_login, password_client
from .test_authority import refusal
from .test_http_gateway import http

DEVICE_KEYS = {
    "HashCode": int,
    "Location": str,
    "DeviceName": str,
    "IpAddress": str,
    "UserId": int,
    "IsTrusted": bool,
    "ExpirationTime": int,
}


async def login(
    app: App, username: str, agent: str = "agent/1", device: str | None = None
) -> Client:
    c = await Client.connect(app.url, user_agent_header=agent)
    payload: dict[str, Any] = {"UserName": username, "Password": PASSWORD}
    if device is not None:
        payload["DeviceId"] = device
    reply = await c.call("AuthenticateUser", payload)
    assert reply.o["Authenticated"], reply.o
    return c


async def devices(c: Client, **payload: Any) -> list[dict[str, Any]]:
    answer = await c.call("GetUserDevices", payload)
    assert isinstance(answer.o, list), answer.o
    return answer.o


async def notices(app: App) -> int:
    rows = await sql(app.settings.db, "SELECT COUNT(*) FROM outbox WHERE kind = 'new-sign-in'")
    return int(rows[0][0])


async def test_get_user_devices_answers_the_apex_record_shape(app: App) -> None:
    user_id = await make_user(app.deps, "alice")
    c = await login(app, "alice", "Firefox/128")
    (device,) = await devices(c)
    assert {k: type(v) for k, v in device.items()} == DEVICE_KEYS
    assert 0 < device["HashCode"] < 2**31
    assert device["DeviceName"] == "Firefox/128" and device["IpAddress"] == "127.0.0.1"
    assert device["UserId"] == user_id
    assert device["IsTrusted"] is False and device["ExpirationTime"] == 0


async def test_a_device_id_is_one_device_whatever_the_user_agent(app: App) -> None:
    await make_user(app.deps, "alice")
    await login(app, "alice", "Firefox/128", device="browser-1")
    c = await login(app, "alice", "Firefox/129", device="browser-1")
    (device,) = await devices(c)
    assert device["DeviceName"] == "Firefox/129"  # its last use
    # Without a DeviceId, the User-Agent and address name the device.
    await login(app, "alice", "Firefox/129")
    await login(app, "alice", "Firefox/129")
    await login(app, "alice", "curl/8")
    listed = await devices(c)
    assert len(listed) == 3 and len({d["HashCode"] for d in listed}) == 3


async def test_one_device_has_a_different_hash_code_for_each_user(app: App) -> None:
    await make_user(app.deps, "alice")
    await make_user(app.deps, "bob")
    (a,) = await devices(await login(app, "alice", device="shared"))
    (b,) = await devices(await login(app, "bob", device="shared"))
    assert a["HashCode"] != b["HashCode"]
    # Stable: the same device logs in again under the same HashCode.
    (again,) = await devices(await login(app, "alice", device="shared"))
    assert again["HashCode"] == a["HashCode"]


async def test_an_operator_sees_the_devices_of_its_oms_users_and_no_one_else_does(
    app: App,
) -> None:
    alice = await make_user(app.deps, "alice")
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "other", oms=2, permissions=["Operator"])
    await make_user(app.deps, "bob")
    await login(app, "alice")
    op = await login(app, "op")
    assert [d["UserId"] for d in await devices(op, UserId=alice)] == [alice]
    bob = await login(app, "bob")
    answer = await bob.call("GetUserDevices", {"UserId": alice})
    assert answer.o["errorcode"] == 20
    other = await login(app, "other")
    assert (await other.call("GetUserDevices", {"UserId": alice})).o["errorcode"] == 104
    anonymous = await Client.connect(app.url)
    assert (await anonymous.call("GetUserDevices")).o == refusal(20, "Not logged in")


async def test_a_device_id_over_http_names_the_device(app: App) -> None:
    await make_user(app.deps, "alice")
    body = json.dumps({"UserName": "alice", "Password": PASSWORD, "DeviceId": "phone-7"})
    headers = {"User-Agent": "bot/2", "Content-Type": "application/json"}
    status, reply = await http(
        app, "POST", "/AP/AuthenticateUser", body=body.encode(), headers=headers
    )
    assert status == 200 and reply["Authenticated"], reply
    c = await login(app, "alice", "other-agent", device="phone-7")
    (device,) = await devices(c)
    assert device["DeviceName"] == "other-agent"


async def test_a_new_device_is_noticed_once_and_the_first_device_never(
    app: App, tmp_path: Path
) -> None:
    await make_user(app.deps, "alice", locale="de")
    await login(app, "alice", "Firefox/128")
    await login(app, "alice", "Firefox/128")
    assert await notices(app) == 0  # the user's first device: nothing to compare it with
    await login(app, "alice", "Safari/17")
    await login(app, "alice", "Safari/17")
    assert await notices(app) == 1
    (path,) = await wait_for_mail(tmp_path / "mail", 1)
    mail = parse_mail(path)
    assert "Safari/17" in mail["text"] and "127.0.0.1" in mail["text"]
    assert "neues Gerät" in mail["text"] and "Safari/17" in mail["html"]


async def test_ten_simultaneous_first_logins_from_a_new_device_send_one_notice(
    app: App,
) -> None:
    await make_user(app.deps, "alice")
    await login(app, "alice", "Firefox/128")
    await asyncio.gather(*(login(app, "alice", "Safari/17") for _ in range(10)))
    assert await notices(app) == 1
    listed = await devices(await login(app, "alice", "Firefox/128"))
    assert len(listed) == 2


async def test_api_key_logins_record_no_device_and_send_no_notice(app: App) -> None:
    await make_user(app.deps, "alice")
    owner = await password_client(app, "alice")
    key = (await owner.call("AddUserAPIKey", {"Permissions": ["Trading"]})).o
    for nonce in range(1, 4):
        c = await Client.connect(app.url, user_agent_header=f"bot/{nonce}")
        assert (await c.call("AuthenticateUser", key_login(key, nonce))).o["Authenticated"]
    assert len(await devices(owner)) == 1 and await notices(app) == 0
    sessions = (await owner.call("GetUserSessions")).o
    assert sorted(s["ViaAPIKey"] for s in sessions) == [False, True, True, True]
    assert {s["DeviceName"] for s in sessions if s["ViaAPIKey"]} == {"bot/1", "bot/2", "bot/3"}


async def test_a_user_gets_at_most_five_new_sign_in_notices_an_hour(app: App, clock: Clock) -> None:
    # Every new DeviceId is a new device: a password holder could mail one notice per login.
    await make_user(app.deps, "alice")
    await login(app, "alice", device="first")
    clock.advance(3601)  # (the first device counts too, as every device not seen before)
    for i in range(8):
        await login(app, "alice", device=f"bot-{i}")
    assert await notices(app) == 5
    assert len(await devices(await login(app, "alice", device="first"))) == 9
    clock.advance(3601)
    await login(app, "alice", device="bot-9")
    assert await notices(app) == 6
