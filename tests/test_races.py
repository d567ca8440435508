"""docs/rules.md, "Concurrency: what holds under bursts and across nodes": bursts of simultaneous
requests over several real connections, on both stores, then a count of the checks that actually
ran.

Each rule here was also run once against a deliberately broken engine (the reservation moved
after the check, the in-transaction lock check removed, the password-version check removed, the
TOTP step not remembered, the registry by user only); each of those variants fails its test.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from oms_auth.app import App
from protocol.client import Answer, Client

from .helpers import PASSWORD, Clock, make_user, parse_mail, settings_for, sql, wait_for_mail
from .store_helpers import login

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
NEW = "Fresh-Start42"
TOO_MANY_LOGINS = "Too many failed login attempts; try again later"
LOCKED = {
    "result": False,
    "errormsg": "Operation Failed",
    "errorcode": 101,
    "detail": "Account has been locked for 30 minutes",
}


async def started(tmp_path: Path, clock: Clock, db: str, **overrides: Any) -> App:
    app = App(settings_for(tmp_path, db=db, **overrides), clock=clock, login_delay=0)
    await app.start()
    return app


@pytest.fixture
async def app(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    service = await started(tmp_path, clock, db)
    try:
        yield service
    finally:
        await service.stop()


async def clients(app: App, n: int, host: str = "127.0.0.1") -> list[Client]:
    return [await Client.connect(app.url) for _ in range(n)]


async def close_all(cs: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in cs))


async def burst(cs: list[Client], calls: list[tuple[str, dict[str, Any]]]) -> list[Answer]:
    """Send every call at once, spread round-robin over the connections; answers in order."""
    return list(
        await asyncio.gather(
            *(c.call(name, payload) for c, (name, payload) in zip(itertools.cycle(cs), calls))
        )
    )


async def code_for(app: App, username: str) -> dict[str, Any]:
    """A self-service reset's emailed link fields for ``username``: the message with a link to
    that user's address (mail still on its way, such as the "password changed" message of a
    reset a test just did, may arrive before it or in the same batch)."""
    user = await app.deps.store.user_by_name(username)
    assert user is not None
    maildir = Path(app.settings.mail.removeprefix("maildir:"))
    before = len(list((maildir / "new").glob("*"))) if (maildir / "new").exists() else 0
    async with await Client.connect(app.url) as c:
        assert (await c.call("ResetPassword", {"UserName": username})).ok
    await app.resets.drain()
    count = before + 1
    while True:
        arrived = [parse_mail(p) for p in (await wait_for_mail(maildir, count))[before:]]
        links = [m for m in arrived if "link" in m and m["to"] == user.email]
        if links:
            return links[-1]
        count += 1


async def stored_hash(app: App, user_id: int) -> str:
    user = await app.deps.store.user_by_id(user_id)
    assert user is not None
    return user.password_hash


# -- logins -----------------------------------------------------------------------------------


async def test_a_login_burst_checks_at_most_the_per_user_limit_of_passwords(app: App) -> None:
    await make_user(app.deps, "victim")
    limit = app.settings.login_failures_per_user
    cs = await clients(app, 8)
    try:
        before = app.deps.hasher.checks
        calls = [
            ("AuthenticateUser", {"UserName": "victim", "Password": f"guess{n}"})
            for n in range(199)
        ]
        calls.append(("AuthenticateUser", {"UserName": "victim", "Password": PASSWORD}))
        answers = await burst(cs, calls)
    finally:
        await close_all(cs)
    checked = app.deps.hasher.checks - before
    assert checked <= limit
    assert not answers[-1].o["Authenticated"]  # the right password came too late
    refused = [a for a in answers if a.o["errormsg"] == TOO_MANY_LOGINS]
    assert len(refused) == len(answers) - checked
    metrics = app.metrics.render()
    assert f'oms_auth_logins_total{{outcome="failed"}} {checked}' in metrics
    assert f'oms_auth_logins_total{{outcome="throttled"}} {len(refused)}' in metrics


async def test_a_login_burst_from_one_address_checks_at_most_the_per_address_limit(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(tmp_path, clock, db, login_failures_per_source=12)
    try:
        cs = await clients(app, 6)
        before = app.deps.hasher.checks
        answers = await burst(
            cs,
            [
                ("AuthenticateUser", {"UserName": f"user{n}", "Password": "guess"})
                for n in range(60)
            ],
        )
        await close_all(cs)
        assert app.deps.hasher.checks - before <= 12
        assert sum(a.o["errormsg"] == TOO_MANY_LOGINS for a in answers) >= 48
    finally:
        await app.stop()


async def test_a_successful_login_gives_its_reservation_back(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(tmp_path, clock, db, login_failures_per_source=5)
    try:
        await make_user(app.deps, "alice")
        cs = await clients(app, 5)
        login = ("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
        # Four waves of five right passwords from one address: a limit of five in the window
        # would refuse the second wave if the successes kept their reservations.
        for _ in range(4):
            answers = await burst(cs, [login] * 5)
            assert all(a.o["Authenticated"] for a in answers)
        await close_all(cs)
    finally:
        await app.stop()


# -- ResetPassword2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("right", ["last", "first"])
async def test_a_reset2_burst_checks_at_most_the_lockout_and_a_lock_sets_no_password(
    app: App, right: str
) -> None:
    uid = await make_user(app.deps, "guarded", question="First pet?", answer="Rex")
    link = await code_for(app, "guarded")
    old = await stored_hash(app, uid)
    base = {"UserId": uid, "PendingCode": link["code"], "Password": NEW}
    wrong = [("ResetPassword2", dict(base, SecurityQuestionAnswer=f"cat{n}")) for n in range(39)]
    good = ("ResetPassword2", dict(base, SecurityQuestionAnswer="rex"))
    calls = wrong + [good] if right == "last" else [good] + wrong
    cs = await clients(app, 8)
    before = app.deps.hasher.checks
    try:
        answers = await burst(cs, calls)
    finally:
        await close_all(cs)
    assert app.deps.hasher.checks - before <= app.settings.lockout_failures + 1  # + the new hash
    rows = await app.deps.store.audit_rows(user="guarded", limit=None)
    actions = [r.action for r in rows]
    assert actions.count("reset-attempt-failed") <= app.settings.lockout_failures
    good_answer = answers[-1] if right == "last" else answers[0]
    failed = actions.count("reset-attempt-failed")
    if "locked" in actions:
        # A burst that reached the lockout set no password, whatever its order. (Four wrong
        # answers lock too when the right one's slot was still in flight: slots in flight count.)
        assert failed >= app.settings.lockout_failures - 1
        assert "password-set" not in actions
        assert await stored_hash(app, uid) == old
        assert good_answer.o == LOCKED
    else:
        # The right answer took one of the slots: the lockout was not reached.
        assert failed < app.settings.lockout_failures
        assert good_answer.ok and await stored_hash(app, uid) != old
    details = [a.o["detail"] for a in answers]
    assert details.count("Invalid answer provided for security question") == failed
    # Everything else was refused unchecked: locked, or (after a success) a used code, and
    # past 20 of those the address's limit of invalid codes.
    assert set(details) <= {
        None,
        "Invalid answer provided for security question",
        LOCKED["detail"],
        "Invalid password recovery key",
        "Too many invalid password recovery keys from this address; try again later",
    }
    # One lock, never after the password was set (a success and a lock are ordered).
    assert actions.count("locked") <= 1
    if "password-set" in actions:
        assert "locked" not in actions


async def test_a_lock_set_while_a_right_code_is_in_flight_sets_no_password(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    # A TOTP code is checked at once, while the right attempt's new password takes a hash of
    # about a tenth of a second: four wrong codes sent meanwhile lock the user (the right
    # attempt's slot counts, it is in flight) before that attempt reaches its transaction.
    app = await started(
        tmp_path, clock, db, hash_workers=1, argon2_time_cost=3, argon2_memory_kib=32768
    )
    try:
        uid = await make_user(app.deps, "guarded", totp_secret=SECRET)
        link = await code_for(app, "guarded")
        old = await stored_hash(app, uid)
        base = {"UserId": uid, "PendingCode": link["code"], "Password": NEW}
        right = pyotp.TOTP(SECRET).at(clock.now)
        wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, 5)]
        cs = await clients(app, 5)
        good = asyncio.ensure_future(cs[0].call("ResetPassword2", dict(base, Code=right)))
        await asyncio.sleep(0.02)
        refused = await burst(cs[1:], [("ResetPassword2", dict(base, Code=w)) for w in wrong])
        answer = await good
        await close_all(cs)
        assert [r.o["detail"] for r in refused] == ["Invalid two-factor code"] * 4
        assert answer.o == LOCKED  # the store re-read the lock where it would set the password
        assert await stored_hash(app, uid) == old
        user = await app.deps.store.user_by_id(uid)
        assert user is not None and user.locked(clock.now)
    finally:
        await app.stop()


async def test_invalid_codes_from_one_address_check_at_most_the_limit(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(tmp_path, clock, db, invalid_codes_per_source=7)
    try:
        uid = await make_user(app.deps, "alice")
        cs = await clients(app, 5)
        answers = await burst(
            cs,
            [
                ("ResetPassword2", {"UserId": uid, "Password": NEW, "PendingCode": f"no-{n}"})
                for n in range(50)
            ],
        )
        await close_all(cs)
        invalid = [a for a in answers if a.o["errorcode"] == 104]
        throttled = [a for a in answers if a.o["errorcode"] == 101]
        assert len(invalid) == 7 and len(throttled) == 43
    finally:
        await app.stop()


# -- TOTP ------------------------------------------------------------------------------------


async def password_step(c: Client, username: str) -> None:
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Requires2FA"] is True and reply.o["SessionToken"] is None, reply.o


async def test_one_totp_code_logs_in_once_however_many_connections_send_it(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "totp", totp_secret=SECRET)
    cs = await clients(app, 6)
    try:
        for c in cs:
            await password_step(c, "totp")
        code = pyotp.TOTP(SECRET).at(clock.now)
        answers = await asyncio.gather(*(c.call("Authenticate2FA", {"Code": code}) for c in cs))
        assert sum(bool(a.o["Authenticated"]) for a in answers) == 1
        assert {a.o["errormsg"] for a in answers if not a.o["Authenticated"]} == {
            "Invalid two-factor code"
        }
    finally:
        await close_all(cs)


async def test_a_totp_step_used_to_log_in_is_refused_by_a_reset(app: App, clock: Clock) -> None:
    uid = await make_user(app.deps, "totp", totp_secret=SECRET)
    link = await code_for(app, "totp")
    code = pyotp.TOTP(SECRET).at(clock.now)
    async with await Client.connect(app.url) as c:
        await password_step(c, "totp")
        assert (await c.call("Authenticate2FA", {"Code": code})).o["Authenticated"]
        again = await c.call(
            "ResetPassword2",
            {"UserId": uid, "PendingCode": link["code"], "Password": NEW, "Code": code},
        )
    assert again.o["detail"] == "Invalid two-factor code"


async def test_a_pending_second_step_allows_five_wrong_codes_even_in_a_burst(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "totp", totp_secret=SECRET)
    right = pyotp.TOTP(SECRET).at(clock.now)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    async with await Client.connect(app.url) as c:
        await password_step(c, "totp")
        before = app.metrics.events["totp_checks"]
        answers = await asyncio.gather(
            *(c.call("Authenticate2FA", {"Code": wrong}) for _ in range(60))
        )
        assert app.metrics.events["totp_checks"] - before <= 5
        assert sum(a.o["errormsg"] == "Invalid two-factor code" for a in answers) == 5
        last = await c.call("Authenticate2FA", {"Code": right})
    assert not last.o["Authenticated"]
    assert last.o["errormsg"] == "No two-factor authentication is pending on this connection"


async def test_a_pending_second_step_expires_after_five_minutes(app: App, clock: Clock) -> None:
    await make_user(app.deps, "totp", totp_secret=SECRET)
    async with await Client.connect(app.url) as c:
        await password_step(c, "totp")
        clock.advance(301)
        late = await c.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).at(clock.now)})
    assert not late.o["Authenticated"]


async def test_a_password_change_ends_a_pending_second_step(app: App, clock: Clock) -> None:
    uid = await make_user(app.deps, "totp", totp_secret=SECRET)
    link = await code_for(app, "totp")
    async with await Client.connect(app.url) as waiting, await Client.connect(app.url) as other:
        await password_step(waiting, "totp")
        code = pyotp.TOTP(SECRET).at(clock.now)
        done = await other.call(
            "ResetPassword2",
            {"UserId": uid, "PendingCode": link["code"], "Password": NEW, "Code": code},
        )
        assert done.ok, done.o
        clock.advance(30)  # a fresh step, so only the ended login can refuse it
        late = await waiting.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).at(clock.now)})
    assert not late.o["Authenticated"]
    assert late.o["errormsg"] == "No two-factor authentication is pending on this connection"


# -- sessions and a reset -----------------------------------------------------------------------


async def test_no_token_from_a_login_racing_a_reset_resumes_after_it(app: App) -> None:
    uid = await make_user(app.deps, "racer")
    link = await code_for(app, "racer")
    cs = await clients(app, 8)
    tokens: list[str] = []
    reset_done = asyncio.Event()

    async def keep_logging_in(c: Client) -> None:
        while not reset_done.is_set():
            reply = await c.call("AuthenticateUser", {"UserName": "racer", "Password": PASSWORD})
            if reply.o["SessionToken"]:
                tokens.append(reply.o["SessionToken"])
        for _ in range(3):  # and a few that read the old hash just before it changed
            reply = await c.call("AuthenticateUser", {"UserName": "racer", "Password": PASSWORD})
            assert not reply.o["Authenticated"]

    async def reset() -> None:
        await asyncio.sleep(0.05)
        async with await Client.connect(app.url) as c:
            answer = await c.call(
                "ResetPassword2", {"UserId": uid, "PendingCode": link["code"], "Password": NEW}
            )
        assert answer.ok, answer.o
        reset_done.set()

    try:
        await asyncio.gather(reset(), *(keep_logging_in(c) for c in cs))
    finally:
        await close_all(cs)
    assert tokens, "no login finished before the reset: the race was not run"
    async with await Client.connect(app.url) as c:
        for token in tokens:
            resumed = await c.call("WebAuthenticateUser", {"SessionToken": token})
            assert not resumed.o["Authenticated"]


async def next_event(c: Client, timeout: float = 2) -> Answer:
    while True:
        frame = await c.next_unmatched(timeout)
        if frame.m == 3:
            return frame


async def test_logout_ends_the_session_at_once_on_every_connection_holding_it(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    target = await make_user(app.deps, "someone")
    async with (
        await Client.connect(app.url) as f,
        await Client.connect(app.url) as g,
        await Client.connect(app.url) as h,
    ):
        login = await f.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        token = login.o["SessionToken"]
        for c in (g, h):
            assert (await c.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
        assert (await g.call("UnlockUser", {"UserId": target})).ok
        assert (await f.call("LogOut", {})).ok
        for c in (g, h):
            event = await next_event(c)
            assert event.n == "LogoutEvent" and event.o == {"Reason": "LoggedOutElsewhere"}
        refused = await g.call("UnlockUser", {"UserId": target})
        assert refused.o["errorcode"] == 20
        assert (await h.call("LogOut", {})).o["detail"] == "Not logged in"
    assert not app.registry.by_session and not app.registry.by_user


async def test_a_reset_sends_logout_events_to_every_connection_of_the_user(app: App) -> None:
    uid = await make_user(app.deps, "alice")
    link = await code_for(app, "alice")
    cs = await clients(app, 3)
    try:
        for c in cs:
            assert (
                await c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
            ).ok
        async with await Client.connect(app.url) as c:
            assert (
                await c.call(
                    "ResetPassword2", {"UserId": uid, "PendingCode": link["code"], "Password": NEW}
                )
            ).ok
        for c in cs:
            assert (await next_event(c)).o == {"Reason": "PasswordChanged"}
            assert (await c.call("LogOut", {})).o["detail"] == "Not logged in"
    finally:
        await close_all(cs)


async def test_racing_logins_on_one_connection_leave_it_registered_as_who_it_is(
    app: App,
) -> None:
    await make_user(app.deps, "alice")
    await make_user(app.deps, "bob")
    async with await Client.connect(app.url) as other, await Client.connect(app.url) as c:
        bob = await other.call("AuthenticateUser", {"UserName": "bob", "Password": PASSWORD})
        for _ in range(10):
            await asyncio.gather(
                c.call("WebAuthenticateUser", {"SessionToken": bob.o["SessionToken"]}),
                c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD}),
            )
            (conn,) = [
                x for x in app.gateway.connections if x.ws.remote_address == c.ws.local_address
            ]
            assert conn.user is not None
            for user_id, conns in app.registry.by_user.items():
                assert (conn in conns) == (user_id == conn.user.id)
            for token_digest, conns in app.registry.by_session.items():
                assert (conn in conns) == (token_digest == conn.token_digest)


async def test_an_expired_session_is_told_before_the_connection_is_treated_as_logged_off(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "alice")
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})).ok
        clock.advance(app.settings.session_idle_seconds + 1)
        answer = await c.call("LogOut", {})
        event = await next_event(c)
    assert event.o == {"Reason": "SessionExpired"}
    assert answer.o["detail"] == "Not logged in"


# -- found by an attack review ------------------------------------------------------------------


async def test_totp_codes_over_many_pending_steps_check_at_most_the_login_limit(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "totp", totp_secret=SECRET)
    right = pyotp.TOTP(SECRET).at(clock.now)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    cs = await clients(app, 20)
    try:
        for c in cs:  # the attacker has the password: twenty pending second steps
            await password_step(c, "totp")
        before = app.metrics.events["totp_checks"]
        await asyncio.gather(
            *(c.call("Authenticate2FA", {"Code": wrong}) for c in cs for _ in range(5))
        )
        assert app.metrics.events["totp_checks"] - before <= app.settings.login_failures_per_user
    finally:
        await close_all(cs)


async def test_an_operators_burst_of_resets_for_one_user_issues_exactly_the_limit(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    # The limit's slot is taken by the statement that counts it (store.sql,
    # insert_event_in_room), in the transaction that writes the code: 40 requests at once over
    # 8 connections, 5 allowed.
    app = await started(tmp_path, clock, db, reset_requests_per_user=5)
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        await make_user(app.deps, "trader")
        cs = await clients(app, 8)
        for c in cs:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        answers = await burst(cs, [("ResetPassword", {"UserName": "trader"})] * 40)
        await close_all(cs)
        assert sum(a.ok for a in answers) == 5
        refused = {(a.o["errorcode"], a.o["detail"]) for a in answers if not a.ok}
        assert refused == {(101, "Too many password reset requests for this user; try again later")}
        rows = await app.deps.store.audit_rows(limit=None)
        assert sum(r.action == "reset-requested" for r in rows) == 5
        assert sum(r.detail == "too many requests" for r in rows) == 35
        assert len(await wait_for_mail(Path(app.settings.mail.removeprefix("maildir:")), 5)) == 5
    finally:
        await app.stop()


@pytest.mark.parametrize("after", [0.0, 0.02])
async def test_a_burst_of_resets_racing_the_end_of_the_operators_sessions_writes_what_it_answers(
    tmp_path: Path, clock: Clock, db: str, after: float
) -> None:
    # A request whose authority is gone fails its one-trip query before the limit's slot, so it
    # writes nothing: every request answers issued, throttled or gone, and the events, codes
    # and audit rows are exactly the issued ones (on PostgreSQL a refused query leaves its
    # connection to a ROLLBACK, and the pool's next request on it must still run).
    from oms_auth.engine.reset import REQUESTS_AUTHENTICATED
    from oms_auth.engine.texts import AUTHORITY_GONE, TOO_MANY_RESETS
    from oms_auth.store import AuditEntry

    app = await started(tmp_path, clock, db, reset_requests_per_user=5)
    try:
        op = await make_user(app.deps, "op", permissions=["Operator"])
        await make_user(app.deps, "trader")
        cs = await clients(app, 8)
        for c in cs:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})

        async def end_sessions() -> None:
            await asyncio.sleep(after)
            await app.deps.store.end_sessions(op, "logout", AuditEntry(action="logged-off"))

        answers, _ = await asyncio.gather(
            burst(cs, [("ResetPassword", {"UserName": "trader"})] * 40), end_sessions()
        )
        await close_all(cs)
        issued = sum(a.ok for a in answers)
        assert issued <= 5
        refused = {(a.o["errorcode"], a.o["detail"]) for a in answers if not a.ok}
        assert refused <= {(101, TOO_MANY_RESETS), (20, AUTHORITY_GONE)}
        rows = await app.deps.store.audit_rows(limit=None)
        assert sum(r.action == "reset-requested" for r in rows) == issued
        assert await sql(db, "SELECT count(*) FROM reset_codes") == [(issued,)]
        slots = "SELECT count(*) FROM events WHERE kind = ?"
        assert await sql(db, slots, REQUESTS_AUTHENTICATED) == [(issued,)]
    finally:
        await app.stop()


async def test_one_address_cannot_crowd_others_out_of_the_self_service_queue(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(
        tmp_path,
        clock,
        db,
        self_service_queue=40,
        self_service_workers=1,
        reset_requests_per_source=10,
    )
    try:
        names = [f"user{n}" for n in range(10)]
        for name in names:
            await make_user(app.deps, name)
        flood = await clients(app, 8)  # 50 each: under the in-flight limit per connection
        others = [await Client.connect(app.url, local_addr=("127.0.0.2", 0)) for _ in range(2)]
        sent = [
            c.call("ResetPassword", {"UserName": f"nobody{n}"})
            for n, c in zip(range(400), itertools.cycle(flood))
        ]
        sent += [
            c.call("ResetPassword", {"UserName": name})
            for name, c in zip(names, itertools.cycle(others))
        ]
        answers = await asyncio.gather(*sent)
        await close_all(flood + others)
        assert all(a.ok for a in answers)
        await app.resets.drain()
        maildir = Path(app.settings.mail.removeprefix("maildir:"))
        mails = await wait_for_mail(maildir, len(names))
        assert {parse_mail(p)["to"].split("@")[0] for p in mails} == set(names)
    finally:
        await app.stop()


async def test_a_logout_event_arrives_before_the_answer_it_explains(app: App, clock: Clock) -> None:
    import json

    from websockets.asyncio.client import connect

    await make_user(app.deps, "alice")

    def request(i: int, n: str, o: dict[str, Any]) -> str:
        return json.dumps({"m": 0, "i": i, "n": n, "o": json.dumps(o)})

    async with connect(app.url) as ws:  # raw frames, in the order they arrive
        await ws.send(request(0, "AuthenticateUser", {"UserName": "alice", "Password": PASSWORD}))
        assert json.loads(json.loads(await ws.recv())["o"])["Authenticated"]
        clock.advance(59)
        await ws.send(request(2, "Ping", {}))  # activity, not yet written to the store
        await ws.recv()
        clock.advance(3542)  # the store's last_seen is past the idle limit: prune takes it
        await app.deps.store.prune(clock.now - 86400, clock.now - app.settings.session_idle_seconds)
        await ws.send(request(4, "LogOut", {}))
        first, second = json.loads(await ws.recv()), json.loads(await ws.recv())
    assert (first["m"], first["n"]) == (3, "LogoutEvent")
    assert (second["m"], second["i"]) == (1, 4)


async def test_a_connection_that_closes_during_its_login_leaves_no_trace(app: App) -> None:
    await make_user(app.deps, "alice")
    cs = await clients(app, 20)
    login = {
        "m": 0,
        "i": 0,
        "n": "AuthenticateUser",
        "o": {"UserName": "alice", "Password": PASSWORD},
    }
    import json

    for c in cs:
        await c.send_raw(json.dumps(login))
    await close_all(cs)
    await asyncio.sleep(0.5)  # the logins finish after their connections went
    assert not app.gateway.connections
    assert not app.registry.by_user and not app.registry.by_session


async def test_one_pending_second_step_opens_one_session_whatever_codes_race_on_it(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "totp", totp_secret=SECRET)
    totp = pyotp.TOTP(SECRET)
    async with await Client.connect(app.url) as c:
        await password_step(c, "totp")
        # Two valid codes (this step and the one before, within the drift) at once.
        answers = await asyncio.gather(
            c.call("Authenticate2FA", {"Code": totp.at(clock.now - 30)}),
            c.call("Authenticate2FA", {"Code": totp.at(clock.now)}),
        )
    assert sum(bool(a.o["Authenticated"]) for a in answers) == 1
    rows = await app.deps.store.audit_rows(user="totp", limit=None)
    assert [r.action for r in rows].count("login") == 1


async def test_a_login_checked_before_a_lock_opens_no_session_after_it(
    app: App, clock: Clock
) -> None:
    from oms_auth.store import AuditEntry, Outcome

    uid = await make_user(app.deps, "alice")
    user = await app.deps.store.user_by_id(uid)
    assert user is not None
    await app.deps.store.set_lock(uid, clock.now + 600, AuditEntry(action="locked", target_id=uid))
    opened = await login(app.deps.store, b"t" * 32, uid, clock.now, user.password_version)
    assert opened is Outcome.LOCKED
    assert await app.deps.store.session(b"t" * 32) is None
