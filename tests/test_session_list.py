"""docs/protocol.md, "Sessions and devices": GetUserSessions, LogOutSession and
LogOutOtherSessions end to end over real sockets, on both stores (two nodes: test_nodes)."""

from __future__ import annotations

import asyncio
import hashlib
import re

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, sql
from .test_authority import CONFIRM, OK, refusal
from .test_nodes import next_event

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def login(app: App, username: str, agent: str = "test-agent/1") -> tuple[Client, str]:
    c = await Client.connect(app.url, user_agent_header=agent)
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"], reply.o
    return c, reply.o["SessionToken"]


async def logged_in(c: Client) -> bool:
    return bool((await c.call("GetUserSessions")).o != refusal(20, "Not logged in"))


async def test_a_user_sees_its_sessions_with_device_address_and_times(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "alice")
    await make_user(app.deps, "bob")
    first, token = await login(app, "alice", "Firefox/128")
    clock.advance(5)
    second, _ = await login(app, "alice", "Safari/17")
    await login(app, "bob")
    listed = (await second.call("GetUserSessions")).o
    assert [s["DeviceName"] for s in listed] == ["Firefox/128", "Safari/17"]
    assert [s["Current"] for s in listed] == [False, True]
    for s in listed:
        assert set(s) == {
            "SessionId",
            "DeviceName",
            "IpAddress",
            "CreatedAt",
            "LastSeenAt",
            "Current",
            "ViaAPIKey",
        }
        assert s["IpAddress"] == "127.0.0.1" and s["ViaAPIKey"] is False
        assert ISO.fullmatch(s["CreatedAt"]) and ISO.fullmatch(s["LastSeenAt"])
        # Opaque: neither the token nor its digest, in any spelling.
        assert token not in s["SessionId"]
        assert s["SessionId"] != hashlib.sha256(token.encode()).hexdigest()
    assert len({s["SessionId"] for s in listed}) == 2
    # The same session is the same id on every listing.
    assert [s["SessionId"] for s in (await first.call("GetUserSessions")).o] == [
        s["SessionId"] for s in listed
    ]


async def test_log_out_session_ends_that_session_with_a_logout_event(app: App) -> None:
    await make_user(app.deps, "alice")
    other, _ = await login(app, "alice")
    me, _ = await login(app, "alice")
    listed = (await me.call("GetUserSessions")).o
    (theirs,) = [s["SessionId"] for s in listed if not s["Current"]]
    assert (await me.call("LogOutSession", {"SessionId": theirs})).o == OK
    event = await next_event(other, timeout=5)
    assert event.n == "LogoutEvent" and event.o == {"Reason": "LoggedOutElsewhere"}
    assert not await logged_in(other)
    assert [s["Current"] for s in (await me.call("GetUserSessions")).o] == [True]
    rows = await sql(
        app.settings.db, "SELECT action FROM audit WHERE action = ?", "session-logged-out"
    )
    assert len(rows) == 1


async def test_log_out_session_refuses_unknown_and_other_users_ids(app: App) -> None:
    await make_user(app.deps, "alice")
    await make_user(app.deps, "bob")
    bob, _ = await login(app, "bob")
    alice, _ = await login(app, "alice")
    (bobs,) = [s["SessionId"] for s in (await bob.call("GetUserSessions")).o]
    missing = refusal(104, "No such session")
    assert (await alice.call("LogOutSession", {"SessionId": bobs})).o == missing
    assert (await alice.call("LogOutSession", {"SessionId": "0" * 32})).o == missing
    bad = refusal(100, "Invalid value provided for SessionId")
    assert (await alice.call("LogOutSession", {})).o == bad
    assert (await alice.call("LogOutSession", {"SessionId": 5})).o["errorcode"] == 100
    assert await logged_in(bob)
    anonymous = await Client.connect(app.url)
    assert (await anonymous.call("GetUserSessions")).o == refusal(20, "Not logged in")


async def test_log_out_other_sessions_ends_all_but_the_callers_each_with_an_event(
    app: App,
) -> None:
    await make_user(app.deps, "alice")
    others = [(await login(app, "alice"))[0] for _ in range(3)]
    me, _ = await login(app, "alice")
    assert (await me.call("LogOutOtherSessions")).o == OK
    for c in others:
        event = await next_event(c, timeout=5)
        assert event.o == {"Reason": "LoggedOutElsewhere"}
        assert not await logged_in(c)
    assert [s["Current"] for s in (await me.call("GetUserSessions")).o] == [True]


async def test_log_out_other_sessions_needs_fresh_proof(app: App, clock: Clock) -> None:
    await make_user(app.deps, "alice")
    _, token = await login(app, "alice")
    other, _ = await login(app, "alice")
    thief = await Client.connect(app.url)
    assert (await thief.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
    assert (await thief.call("LogOutOtherSessions")).o == CONFIRM
    assert await logged_in(other)
    wrong = await thief.call("LogOutOtherSessions", {"Password": "not-it"})
    assert wrong.o["errorcode"] == 20 and wrong.o["detail"] != CONFIRM["detail"]
    assert (await thief.call("LogOutOtherSessions", {"Password": PASSWORD})).o == OK
    assert not await logged_in(other) and await logged_in(thief)


async def test_twenty_simultaneous_log_out_other_sessions_end_each_session_once(
    app: App,
) -> None:
    await make_user(app.deps, "alice")
    callers = [(await login(app, "alice"))[0] for _ in range(20)]
    answers = await asyncio.gather(*(c.call("LogOutOtherSessions") for c in callers))
    # Each either ended the others or found its own session ended by another first.
    assert sum(a.o == OK for a in answers) == 1
    alive = [c for c in callers if await logged_in(c)]
    assert len(alive) == 1
    rows = await sql(app.settings.db, "SELECT COUNT(*) FROM sessions")
    assert rows[0][0] == 1


async def test_expired_sessions_are_not_listed(app: App, clock: Clock) -> None:
    await make_user(app.deps, "alice")
    await login(app, "alice")
    clock.advance(app.settings.session_idle_seconds + 1)
    me, _ = await login(app, "alice")
    assert [s["Current"] for s in (await me.call("GetUserSessions")).o] == [True]
