"""docs/rules.md, "Devices", with ``verify_new_devices`` on: a right password from a device the
user has not trusted is answered with a HashCode and an emailed code; RegisterNewDevice trusts
the device; the code works once (under 20 simultaneous uses), for 15 minutes and 5 tries; API
keys never ask. Over real sockets, on both stores."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, parse_mail, store_contents, wait_for_mail
from .test_apikeys import key_login
from .test_authority import OK, refusal
from .test_http_gateway import http
from .test_self_service import store_writes_held

pytestmark = pytest.mark.parametrize("limited", [{"verify_new_devices": True}], indirect=True)
NEW_DEVICE = "New device: confirm it with the code we emailed you"
TOO_MANY_CODES = "Too many device codes sent; use the last one emailed or try again later"
WRONG = refusal(104, "Invalid or expired device code")


async def attempt(app: App, username: str = "alice", agent: str = "Firefox/128") -> Any:
    c = await Client.connect(app.url, user_agent_header=agent)
    payload = {"UserName": username, "Password": PASSWORD, "DeviceId": agent}
    return (await c.call("AuthenticateUser", payload)).o, c


async def code_in_mail(tmp_path: Path, count: int) -> str:
    paths = await wait_for_mail(tmp_path / "mail", count)
    mail = parse_mail(paths[-1])
    (code,) = re.findall(r"^(\d{8})$", mail["text"], re.M)
    return code


async def first_code(app: App, tmp_path: Path) -> tuple[int, str]:
    """alice made, her first login's HashCode and the code mailed for it."""
    await make_user(app.deps, "alice")
    hash_code = (await attempt(app))[0]["HashCode"]
    return hash_code, await code_in_mail(tmp_path, 1)


async def register(app: App, hash_code: Any, code: Any) -> Any:
    c = await Client.connect(app.url)
    payload = {"HashCode": hash_code, "PendingEmailCode": code}
    return (await c.call("RegisterNewDevice", payload)).o


async def test_a_new_device_is_confirmed_by_the_emailed_code_then_logs_in(
    limited: App, tmp_path: Path, clock: Clock
) -> None:
    await make_user(limited.deps, "alice")
    reply, _ = await attempt(limited)
    assert reply["Authenticated"] is False and reply["errormsg"] == NEW_DEVICE
    assert reply["SessionToken"] is None and reply["User"] is None
    hash_code = reply["HashCode"]
    assert isinstance(hash_code, int) and 0 < hash_code < 2**31
    code = await code_in_mail(tmp_path, 1)
    assert code.encode() not in await store_contents(limited.settings.db)
    assert await register(limited, hash_code, code) == OK
    reply, c = await attempt(limited)
    assert reply["Authenticated"] is True, reply
    (device,) = (await c.call("GetUserDevices")).o
    assert device["HashCode"] == hash_code and device["IsTrusted"] is True
    expected = (clock() + 30 * 86400) * 1000
    assert abs(device["ExpirationTime"] - expected) < 5000
    # Once: the same code again does nothing.
    assert await register(limited, hash_code, code) == WRONG
    # Trusted for trusted_device_days, then asked again.
    clock.advance(30 * 86400 + 1)
    reply, _ = await attempt(limited)
    assert reply["errormsg"] == NEW_DEVICE


async def test_a_wrong_password_from_a_new_device_is_a_plain_failure(
    limited: App, tmp_path: Path
) -> None:
    await make_user(limited.deps, "alice")
    c = await Client.connect(limited.url)
    payload = {"UserName": "alice", "Password": "wrong-password"}
    reply = (await c.call("AuthenticateUser", payload)).o
    assert reply["errormsg"] == "Invalid username or password" and "HashCode" not in reply
    assert not (tmp_path / "mail" / "new").exists() or not any(
        (tmp_path / "mail" / "new").iterdir()
    )


async def test_a_device_code_allows_five_tries_and_fifteen_minutes(
    limited: App, tmp_path: Path, clock: Clock
) -> None:
    await make_user(limited.deps, "alice")
    hash_code = (await attempt(limited))[0]["HashCode"]
    code = await code_in_mail(tmp_path, 1)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    for _ in range(5):
        assert await register(limited, hash_code, wrong) == WRONG
    assert await register(limited, hash_code, code) == WRONG  # out of tries
    # A new login mails a new code (the old one void), with its tries anew; it expires.
    assert (await attempt(limited))[0]["HashCode"] == hash_code
    newer = await code_in_mail(tmp_path, 2)
    clock.advance(15 * 60 + 1)
    assert await register(limited, hash_code, newer) == WRONG
    assert (await attempt(limited))[0]["HashCode"] == hash_code
    newest = await code_in_mail(tmp_path, 3)
    assert await register(limited, str(hash_code), newest) == OK


async def test_a_device_code_works_once_under_twenty_simultaneous_uses(
    limited: App, tmp_path: Path
) -> None:
    hash_code, code = await first_code(limited, tmp_path)
    answers = await asyncio.gather(*(register(limited, hash_code, code) for _ in range(20)))
    assert sum(a == OK for a in answers) == 1
    assert all(a in (OK, WRONG) for a in answers)


async def test_register_new_device_refuses_bad_input(limited: App) -> None:
    bad_hash = refusal(100, "Invalid value provided for HashCode")
    bad_code = refusal(100, "Invalid value provided for PendingEmailCode")
    assert await register(limited, "abc", "12345678") == bad_hash
    assert await register(limited, 0, "12345678") == bad_hash
    assert await register(limited, 2**31, "12345678") == bad_hash
    assert await register(limited, 5, None) == bad_code
    assert await register(limited, 5, "12 34") == bad_code
    assert (await register(limited, [1], "12345678"))["errorcode"] == 100
    assert await register(limited, 5, "12345678") == WRONG


async def test_api_key_logins_never_ask_to_confirm_a_device(limited: App, tmp_path: Path) -> None:
    await make_user(limited.deps, "alice")
    hash_code = (await attempt(limited))[0]["HashCode"]
    assert await register(limited, hash_code, await code_in_mail(tmp_path, 1)) == OK
    _, owner = await attempt(limited)
    key = (await owner.call("AddUserAPIKey", {"Permissions": ["Trading"]})).o
    bot = await Client.connect(limited.url, user_agent_header="bot/1")
    assert (await bot.call("AuthenticateUser", key_login(key, 1))).o["Authenticated"]
    await asyncio.sleep(0.2)
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 1  # the one code, no more


async def test_a_device_is_confirmed_over_http_by_post_never_get(
    limited: App, tmp_path: Path
) -> None:
    await make_user(limited.deps, "alice")
    login = {"UserName": "alice", "Password": PASSWORD, "DeviceId": "bot-box"}
    json_body = {"Content-Type": "application/json"}
    status, reply = await http(
        limited, "POST", "/AP/AuthenticateUser", body=orjson.dumps(login), headers=json_body
    )
    assert status == 200 and reply["errormsg"] == NEW_DEVICE and reply["HashCode"] > 0
    code = await code_in_mail(tmp_path, 1)
    query = {"HashCode": str(reply["HashCode"]), "PendingEmailCode": code}
    status, refused = await http(limited, "GET", "/AP/RegisterNewDevice", query=query)
    assert status == 405 and refused["errorcode"] == 106
    body = orjson.dumps(query)
    status, answer = await http(
        limited, "POST", "/AP/RegisterNewDevice", body=body, headers=json_body
    )
    assert status == 200 and answer == OK
    status, reply = await http(
        limited, "POST", "/AP/AuthenticateUser", body=orjson.dumps(login), headers=json_body
    )
    assert reply["Authenticated"] is True


async def test_a_user_is_mailed_at_most_five_device_codes_an_hour(
    limited: App, tmp_path: Path, clock: Clock
) -> None:
    # Each right-password login from a new device would mail a new code with 5 new tries:
    # a stolen password would flood the inbox and guess without bound.
    await make_user(limited.deps, "alice")
    replies = [(await attempt(limited, agent=f"bot/{i}"))[0] for i in range(8)]
    assert [r["errormsg"] for r in replies] == [NEW_DEVICE] * 5 + [TOO_MANY_CODES] * 3
    assert all(r["SessionToken"] is None and r["HashCode"] > 0 for r in replies)
    await wait_for_mail(tmp_path / "mail", 5)
    await asyncio.sleep(0.2)
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 5
    # The last code mailed still trusts its device; an hour later codes are mailed again.
    code = await code_in_mail(tmp_path, 5)
    assert await register(limited, replies[4]["HashCode"], code) == OK
    clock.advance(3601)
    assert (await attempt(limited, agent="bot/9"))[0]["errormsg"] == NEW_DEVICE


async def test_a_made_up_hash_code_is_answered_without_a_store_write(
    limited: App, tmp_path: Path
) -> None:
    # RegisterNewDevice needs no login: a HashCode with no live code must cost a read, not a
    # write (an anonymous flood would otherwise queue writes ahead of every login).
    hash_code, code = await first_code(limited, tmp_path)
    made_up = hash_code % (2**31 - 1) + 1
    async with store_writes_held(limited.settings.db, "devices"):
        answers = [await asyncio.wait_for(register(limited, made_up, code), 30) for _ in range(3)]
    assert answers == [WRONG] * 3
    assert await register(limited, hash_code, code) == OK  # no try of it was counted
