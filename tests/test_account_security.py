"""The account functions around a reset (docs/protocol.md, "Functions"): TOTP enrolment
(EnableGoogle2FA, then Authenticate2FA on the same connection) and removal (Disable2FA), security
questions, the master user's notice, invitations (CreateUser, ``user add --invite``),
ForceUserLogoff and GetLockedUsers. Through real sockets on both stores; every change is audited and
mailed."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path
from typing import Any

import pyotp
import pytest

from oms_auth.app import App
from oms_auth.store import AuditEntry
from protocol.client import Answer, Client

from .helpers import (
    PASSWORD,
    Clock,
    make_user,
    oms_auth,
    parse_mail,
    settings_for,
    wait_for_mail,
)

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
NEW = "Fresh-Start42"
OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
# A connection that did not itself prove the password recently
# (docs/rules.md, "Fresh proof for account-security changes").
CONFIRM = "Confirm your password first: log in again on this connection"


def refusal(code: int, detail: str) -> dict[str, Any]:
    texts = {20: "Not Authorized", 100: "Invalid Response", 101: "Operation Failed"}
    texts |= {104: "Resource Not Found", 106: "Operation Not Supported"}
    return {"result": False, "errormsg": texts[code], "errorcode": code, "detail": detail}


def code_at(secret: str, clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now + 30 * steps)


async def logged_in(app: App, username: str, password: str = PASSWORD) -> Client:
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": password})
    assert reply.o["Authenticated"] and reply.o["SessionToken"], reply.o
    return c


async def login(app: App, username: str, password: str = PASSWORD) -> dict[str, Any]:
    async with await Client.connect(app.url) as c:
        reply = await c.call("AuthenticateUser", {"UserName": username, "Password": password})
        return dict(reply.o)


async def with_totp(app: App, username: str, clock: Clock) -> tuple[Client, str]:
    """A connection logged in with the password and the current code, and its session token."""
    c = await Client.connect(app.url)
    first = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert first.o["Requires2FA"] is True, first.o
    second = await c.call("Authenticate2FA", {"Code": code_at(SECRET, clock)})
    assert second.o["Authenticated"] is True, second.o
    return c, second.o["SessionToken"]


def maildir(app: App) -> Path:
    return Path(app.settings.mail.removeprefix("maildir:"))


async def mails(app: App, count: int) -> list[dict[str, Any]]:
    return [parse_mail(p) for p in await wait_for_mail(maildir(app), count)]


async def actions(app: App, username: str) -> list[str]:
    rows = await app.deps.store.audit_rows(user=username, limit=None, oldest_first=True)
    return [row.action for row in rows]


async def next_event(c: Client) -> Answer:
    event = await c.next_unmatched(timeout=5)
    assert (event.m, event.n) == (3, "LogoutEvent"), event
    return event


# -- TOTP enrolment -----------------------------------------------------------------------------


async def test_totp_becomes_active_only_after_a_code_on_the_connection_that_enrolled(
    app: App, clock: Clock
) -> None:
    uid = await make_user(app.deps, "trader", permissions=["Trading"])
    async with await logged_in(app, "trader") as c, await logged_in(app, "trader") as other:
        enrolled = (await c.call("EnableGoogle2FA", {})).o
        uri = urllib.parse.urlsplit(enrolled["GoogleQRCode"])
        query = urllib.parse.parse_qs(uri.query)
        assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/oms-auth:trader")
        assert query["secret"] == [enrolled["ManualCode"]] and query["issuer"] == ["oms-auth"]
        secret = enrolled["ManualCode"]
        assert len(secret) == 32 and pyotp.TOTP(secret).now()
        # Not active yet: a login needs no code, the user shows no 2FA.
        assert (await login(app, "trader"))["Requires2FA"] is False
        assert (await c.call("GetUserInfo", {})).o["Use2FA"] is False
        # Another connection of the same session cannot finish it; a wrong code does not.
        foreign = (await other.call("Authenticate2FA", {"Code": code_at(secret, clock)})).o
        assert foreign["Authenticated"] is False
        assert foreign["errormsg"] == "No two-factor authentication is pending on this connection"
        wrong = (await c.call("Authenticate2FA", {"Code": code_at(secret, clock, 5)})).o
        assert (wrong["Authenticated"], wrong["errormsg"]) == (False, "Invalid two-factor code")
        assert (await c.call("GetUserInfo", {})).o["Use2FA"] is False  # still logged in
        done = (await c.call("Authenticate2FA", {"Code": code_at(secret, clock)})).o
        assert done["Authenticated"] is True and done["UserId"] == uid
        assert done["User"]["Use2FA"] is True and done["SessionToken"]
        again = (await c.call("EnableGoogle2FA", {})).o
        assert again == refusal(
            101, "Two-factor authentication is already enabled; disable it first"
        )
    # From now on a login asks for the second step, and a reset for the code.
    first = await login(app, "trader")
    assert first["Requires2FA"] is True and first["SessionToken"] is None
    async with await Client.connect(app.url) as anonymous:
        assert (await anonymous.call("ResetPassword", {"UserName": "trader"})).ok
    await app.resets.drain()
    sent = await mails(app, 2)
    notice = next(m for m in sent if "turned on" in m["msg"]["Subject"])
    assert notice["to"] == "trader@example.test" and "authenticator app" in notice["text"]
    link = next(m for m in sent if "link" in m)
    async with await Client.connect(app.url) as c:
        req = await c.call("GetRequirementsForPasswordSet", {"PendingCode": link["code"]})
        assert req.o["Requires2FA"] is True and req.o["TwoFAType"] == "Google"
    assert "2fa-enabled" in await actions(app, "trader")


async def test_the_code_that_proved_an_enrolment_cannot_log_in_again(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader")
    async with await logged_in(app, "trader") as c:
        secret = (await c.call("EnableGoogle2FA", {})).o["ManualCode"]
        code = code_at(secret, clock)
        assert (await c.call("Authenticate2FA", {"Code": code})).o["Authenticated"] is True
    async with await Client.connect(app.url) as c:
        assert (await c.call("AuthenticateUser", {"UserName": "trader", "Password": PASSWORD})).o[
            "Requires2FA"
        ]
        replayed = (await c.call("Authenticate2FA", {"Code": code})).o
        assert (replayed["Authenticated"], replayed["errormsg"]) == (
            False,
            "Invalid two-factor code",
        )
        clock.advance(30)
        fresh = (await c.call("Authenticate2FA", {"Code": code_at(secret, clock)})).o
        assert fresh["Authenticated"] is True


async def test_an_enrolment_waits_ten_minutes_for_its_code(app: App, clock: Clock) -> None:
    await make_user(app.deps, "trader")
    async with await logged_in(app, "trader") as c:
        secret = (await c.call("EnableGoogle2FA", {})).o["ManualCode"]
        clock.advance(601)
        late = (await c.call("Authenticate2FA", {"Code": code_at(secret, clock)})).o
        assert late["errormsg"] == "No two-factor authentication is pending on this connection"
    assert (await login(app, "trader"))["Requires2FA"] is False


async def test_enrolment_needs_a_websocket_connection(app: App) -> None:
    import base64
    import urllib.request

    await make_user(app.deps, "trader")
    base = app.url.replace("ws://", "http://").replace("/WSGateway/", "")
    basic = base64.b64encode(f"trader:{PASSWORD}".encode()).decode()

    def get(path: str, headers: dict[str, str]) -> Any:
        import json

        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers)) as r:
            return json.loads(r.read())

    token = (await asyncio.to_thread(get, "/AP/Authenticate", {"Authorization": "Basic " + basic}))[
        "SessionToken"
    ]
    answer = await asyncio.to_thread(get, "/AP/EnableGoogle2FA", {"APToken": token})
    assert answer == refusal(
        106,
        "EnableGoogle2FA needs a WebSocket connection: the code that proves it follows on the"
        " same connection",
    )


# -- Disable2FA ---------------------------------------------------------------------------------


async def test_disable2fa_right_after_a_2fa_needs_no_code(app: App, clock: Clock) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    c, _ = await with_totp(app, "trader", clock)
    async with c:
        clock.advance(9 * 60)
        assert (await c.call("Disable2FA", {})).o == OK
        assert (await c.call("GetUserInfo", {})).o["Use2FA"] is False
        assert (await c.call("Disable2FA", {})).o == refusal(
            101, "Two-factor authentication is not enabled for this user"
        )
    assert (await login(app, "trader"))["Requires2FA"] is False
    notice = (await mails(app, 1))[0]
    assert notice["msg"]["Subject"] == "Two-factor authentication was turned off"
    assert "2fa-disabled" in await actions(app, "trader")


async def test_disable2fa_elsewhere_needs_a_current_code_never_a_used_one(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    used = code_at(SECRET, clock)
    first, token = await with_totp(app, "trader", clock)
    async with first, await Client.connect(app.url) as c:
        # The same session resumed on another connection: it proved nothing, so without a
        # code it must log in again (fresh proof); a current code is proof enough.
        assert (await c.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
        assert (await c.call("Disable2FA", {})).o == refusal(20, CONFIRM)
        assert (await c.call("Disable2FA", {"Code": used})).o == refusal(
            20, "Invalid two-factor code"
        )
        clock.advance(30)
        assert (await c.call("Disable2FA", {"Code": code_at(SECRET, clock)})).o == OK
    assert (await login(app, "trader"))["Requires2FA"] is False


async def test_disable2fa_long_after_the_2fa_needs_a_code(app: App, clock: Clock) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    c, _ = await with_totp(app, "trader", clock)
    async with c:
        clock.advance(11 * 60)
        # An older login than fresh_auth_seconds: log in again, or give a current code.
        assert (await c.call("Disable2FA", {})).o["detail"] == CONFIRM
        assert (await c.call("Disable2FA", {"Code": code_at(SECRET, clock)})).o == OK


async def test_one_code_raced_over_many_connections_disables_once(app: App, clock: Clock) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    first, token = await with_totp(app, "trader", clock)
    conns = [first]
    for _ in range(5):
        c = await Client.connect(app.url)
        assert (await c.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
        conns.append(c)
    clock.advance(11 * 60)  # past the recent-2FA window: every call needs the code
    code = code_at(SECRET, clock)
    try:
        answers = await asyncio.gather(*(c.call("Disable2FA", {"Code": code}) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert [a.o for a in answers].count(OK) == 1, [a.o for a in answers]
    for a in answers:
        assert a.o == OK or a.o["detail"] in (
            "Invalid two-factor code",
            "Two-factor authentication is not enabled for this user",
        ), a.o
    assert (await actions(app, "trader")).count("2fa-disabled") == 1


async def test_wrong_disable2fa_codes_in_a_burst_check_at_most_the_login_limit(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    c, _ = await with_totp(app, "trader", clock)
    clock.advance(11 * 60)
    right = code_at(SECRET, clock)
    wrong = [f"{n:06d}" for n in range(40) if f"{n:06d}" != right][:30]
    before = app.metrics.events["totp_checks"]
    try:
        answers = await asyncio.gather(*(c.call("Disable2FA", {"Code": w}) for w in wrong))
    finally:
        await c.close()
    checked = app.metrics.events["totp_checks"] - before
    assert checked <= app.settings.login_failures_per_user
    details = [a.o["detail"] for a in answers]
    assert details.count("Too many failed login attempts; try again later") >= 30 - checked
    assert (await login(app, "trader"))["Authenticated"] is False  # the limit holds for logins


# -- security questions -----------------------------------------------------------------------


async def test_security_questions_are_set_with_the_password_and_shown_without_answers(
    app: App,
) -> None:
    await make_user(app.deps, "trader", question="Old question?", answer="old")
    questions = [
        {"Question": "First pet?", "Answer": "  Rex  "},
        {"question": "Street you grew up on?", "answer": "Elm"},
    ]
    async with await logged_in(app, "trader") as c:
        assert (await c.call("GetSecurityQuestions", {})).o == {"Questions": ["Old question?"]}
        wrong = {"Password": "Not-the-one1", "Questions": questions}
        assert (await c.call("SetSecurityQuestions", wrong)).o == refusal(
            20, "The password given is not the current password"
        )
        ok = {"Password": PASSWORD, "Questions": questions}
        assert (await c.call("SetSecurityQuestions", ok)).o == OK
        assert (await c.call("GetSecurityQuestions", {})).o == {
            "Questions": ["First pet?", "Street you grew up on?"]
        }
        assert (await c.call("GetUserInfo", {})).o["HasSecurityQuestions"] is True
    user = await app.deps.store.user_by_name("trader")
    assert user is not None
    stored = await app.deps.store.security_questions(user.id)
    assert [q.answer_hash[:10] for q in stored] == ["$argon2id$"] * 2
    # A reset now asks the first question; its answer compares trimmed and case-folded.
    async with await Client.connect(app.url) as anonymous:
        assert (await anonymous.call("ResetPassword", {"UserName": "trader"})).ok
    await app.resets.drain()
    sent = await mails(app, 2)
    assert any(m["msg"]["Subject"] == "Your security questions were changed" for m in sent)
    link = next(m for m in sent if "link" in m)
    async with await Client.connect(app.url) as c:
        req = (await c.call("GetRequirementsForPasswordSet", {"PendingCode": link["code"]})).o
        assert req["SecurityQuestion"] == "First pet?"
        done = await c.call(
            "ResetPassword2",
            {
                "UserId": user.id,
                "PendingCode": link["code"],
                "Password": NEW,
                "SecurityQuestionAnswer": "REX",
            },
        )
        assert done.o == OK
    assert (await actions(app, "trader")).count("questions-set") == 1


@pytest.mark.parametrize(
    ("questions", "detail"),
    [
        ([], "give 1 to 3 questions"),
        ([{"Question": f"Q{n}?", "Answer": "a"} for n in range(4)], "give 1 to 3 questions"),
        ([{"Question": "Q?"}], "question 1 needs an Answer"),
        ([{"Question": "Q?", "Answer": "   "}], "question 1 needs an Answer"),
        ([{"Answer": "a"}], "question 1 needs a Question text"),
        (["Q?"], "Questions must be an object"),
        ([{"Question": "Q?", "Answer": "a"}, {"Question": "q?", "Answer": "b"}], "question 2"),
        ([{"Question": "Q\u202e?", "Answer": "a"}], "question 1 needs a Question text"),
    ],
)
async def test_bad_questions_are_refused_naming_the_problem_and_change_nothing(
    app: App, questions: list[Any], detail: str
) -> None:
    await make_user(app.deps, "trader", question="Kept?", answer="kept")
    async with await logged_in(app, "trader") as c:
        answer = (
            await c.call("SetSecurityQuestions", {"Password": PASSWORD, "Questions": questions})
        ).o
        assert answer["errorcode"] == 100
        assert "Questions" in answer["detail"] and detail in answer["detail"], answer
        assert (await c.call("GetSecurityQuestions", {})).o == {"Questions": ["Kept?"]}
        typed = (await c.call("SetSecurityQuestions", {"Password": PASSWORD, "Questions": 7})).o
        assert typed["errorcode"] == 100 and "Questions" in typed["detail"]
        missing = (await c.call("SetSecurityQuestions", {"Questions": questions})).o
        assert missing["errorcode"] == 100


async def test_wrong_passwords_for_questions_count_as_failed_logins_even_in_a_burst(
    app: App,
) -> None:
    await make_user(app.deps, "trader")
    payload = {"Password": "Wrong-Pass99", "Questions": [{"Question": "Q?", "Answer": "a"}]}
    c = await logged_in(app, "trader")
    before = app.deps.hasher.checks
    try:
        answers = await asyncio.gather(
            *(c.call("SetSecurityQuestions", payload) for _ in range(25))
        )
    finally:
        await c.close()
    checked = app.deps.hasher.checks - before
    assert checked <= app.settings.login_failures_per_user
    details = [a.o["detail"] for a in answers]
    assert details.count("Too many failed login attempts; try again later") == 25 - checked
    assert (await login(app, "trader"))["errormsg"] == (
        "Too many failed login attempts; try again later"
    )


async def test_no_one_sets_or_reads_the_questions_of_another_user(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    other = await make_user(app.deps, "other", question="Theirs?", answer="x")
    payload = {
        "UserId": other,
        "Password": PASSWORD,
        "Questions": [{"Question": "Q?", "Answer": "a"}],
    }
    only_own = refusal(20, "Only the user itself may change or see its account security")
    async with await logged_in(app, "op") as c:
        assert (await c.call("SetSecurityQuestions", payload)).o == only_own
        assert (await c.call("GetSecurityQuestions", {"UserId": other})).o == only_own
        assert (await c.call("EnableGoogle2FA", {"UserId": other})).o == only_own
        assert (await c.call("Disable2FA", {"UserId": other, "Code": "123456"})).o == only_own
    async with await Client.connect(app.url) as anonymous:
        for name in ("SetSecurityQuestions", "GetSecurityQuestions", "EnableGoogle2FA"):
            assert (await anonymous.call(name, {})).o == refusal(20, "Not logged in")
    stored = await app.deps.store.security_questions(other)
    assert [q.question for q in stored] == ["Theirs?"]


async def test_a_master_user_without_questions_is_told_at_login_and_logout(app: App) -> None:
    await make_user(app.deps, "boss", master=True)
    await make_user(app.deps, "plain")
    must = (
        "Set your security questions before you log out: a master user answers one to reset"
        " its password"
    )
    async with await Client.connect(app.url) as c:
        reply = await c.call("AuthenticateUser", {"UserName": "boss", "Password": PASSWORD})
        assert reply.o["Authenticated"] is True and reply.o["NeedsSecurityQuestions"] is True
        resumed = await c.call("WebAuthenticateUser", {"SessionToken": reply.o["SessionToken"]})
        assert resumed.o["NeedsSecurityQuestions"] is True
        logout = (await c.call("LogOut", {})).o
        assert logout == {"result": True, "errormsg": None, "errorcode": 0, "detail": must}
    assert (await login(app, "plain"))["NeedsSecurityQuestions"] is False
    async with await logged_in(app, "boss") as c:
        qs = [{"Question": "First car?", "Answer": "Beetle"}]
        assert (
            await c.call("SetSecurityQuestions", {"Password": PASSWORD, "Questions": qs})
        ).o == OK
        assert (await c.call("LogOut", {})).o == OK
    assert (await login(app, "boss"))["NeedsSecurityQuestions"] is False


# -- invitations --------------------------------------------------------------------------------


async def test_an_operator_invites_a_user_who_sets_a_first_password_by_the_link(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"], accounts=[1])
    async with await logged_in(app, "op") as c:
        created = await c.call(
            "CreateUser",
            {
                "UserName": "newhire",
                "Email": "new@example.test",
                "AccountId": 7,
                "Permissions": ["trading"],
            },
        )
        uid = created.o["UserId"]
        assert created.m == 1 and isinstance(uid, int)
        info = (await c.call("GetUserInfo", {"UserId": uid})).o
        assert (info["UserName"], info["AccountId"], info["Permissions"]) == (
            "newhire",
            7,
            ["Trading"],
        )
    invite = (await mails(app, 1))[0]
    assert invite["to"] == "new@example.test" and invite["user_id"] == uid
    assert invite["msg"]["Subject"] == "Set the password of your new OMS Exchange account"
    assert "username newhire" in invite["text"]
    # No usable password until the link is followed: a login fails like a wrong password.
    for guess in (PASSWORD, "Anything-1x"):
        assert (await login(app, "newhire", guess))["errormsg"] == "Invalid username or password"
    async with await Client.connect(app.url) as c:
        req = (await c.call("GetRequirementsForPasswordSet", {"PendingCode": invite["code"]})).o
        assert req["UserId"] == uid
        assert abs(req["ExpiresAt"] / 1000 - (clock.now + 72 * 3600)) < 5
        weak = {"UserId": str(uid), "PendingCode": invite["code"], "Password": "short"}
        assert (await c.call("ResetPassword2", weak)).o["errorcode"] == 100
        ok = {"UserId": str(uid), "PendingCode": invite["code"], "Password": NEW}
        assert (await c.call("ResetPassword2", ok)).o == OK
        assert (await c.call("ResetPassword2", ok)).o["errorcode"] == 104
    assert (await login(app, "newhire", NEW))["Authenticated"] is True
    assert {"user-created", "invited", "password-set"} <= set(await actions(app, "newhire"))
    set_mail = (await mails(app, 2))[1]
    assert set_mail["msg"]["Subject"] == "Your OMS Exchange password was set"


async def test_an_invitation_link_lives_72_hours(app: App, clock: Clock) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    async with await logged_in(app, "op") as c:
        uid = (await c.call("CreateUser", {"UserName": "late", "Email": "l@example.test"})).o[
            "UserId"
        ]
    invite = (await mails(app, 1))[0]
    clock.advance(72 * 3600 + 1)
    async with await Client.connect(app.url) as c:
        payload = {"UserId": uid, "PendingCode": invite["code"], "Password": NEW}
        assert (await c.call("ResetPassword2", payload)).o == refusal(
            104, "Invalid password recovery key"
        )


async def test_a_new_invitation_voids_the_older_link(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    async with await logged_in(app, "op") as c:
        uid = (await c.call("CreateUser", {"UserName": "newhire", "Email": "n@example.test"})).o[
            "UserId"
        ]
        first = (await mails(app, 1))[0]
        # Asked again (the Operator's ResetPassword), an invited user is invited again.
        assert (await c.call("ResetPassword", {"UserName": "newhire"})).o == OK
    second = next(m for m in await mails(app, 2) if m["code"] != first["code"])
    assert second["msg"]["Subject"] == "Set the password of your new OMS Exchange account"
    async with await Client.connect(app.url) as c:
        old = {"UserId": uid, "PendingCode": first["code"], "Password": NEW}
        assert (await c.call("ResetPassword2", old)).o["errorcode"] == 104
        new = {"UserId": uid, "PendingCode": second["code"], "Password": NEW}
        assert (await c.call("ResetPassword2", new)).o == OK


@pytest.mark.parametrize(
    ("payload", "code", "detail"),
    [
        ({"Email": "a@example.test"}, 100, "Invalid value provided for Username: it must not"),
        ({"UserName": " ", "Email": "a@example.test"}, 100, "Invalid value provided for Username"),
        ({"UserName": "a\u202eb", "Email": "a@example.test"}, 100, "control or format"),
        ({"UserName": "x" * 65, "Email": "a@example.test"}, 100, "at most 64 characters"),
        ({"UserName": "fresh"}, 100, "Invalid value provided for Email"),
        ({"UserName": "fresh", "Email": "not-an-address"}, 100, "name@example.com"),
        ({"UserName": "fresh", "Email": "a@b@c.test"}, 100, "Invalid value provided for Email"),
        # Held by another OMS: the same answer as for a name of the caller's OMS (and another
        # OMS's account 9 is not this one's: tests/test_usernames.py).
        ({"UserName": "Taken", "Email": "a@example.test"}, 101, "That username is not available"),
        ({"UserName": "fresh", "Email": "a@example.test", "AccountId": -1}, 100, "AccountId"),
        ({"UserName": "fresh", "Email": "a@example.test", "Permissions": [""]}, 100, "Perm"),
        ({"UserName": "fresh", "Email": "a@example.test", "Permissions": "x"}, 100, "Perm"),
        ({"UserName": 5, "Email": "a@example.test"}, 100, "UserName"),
    ],
)
async def test_create_user_refuses_bad_input_naming_it_and_creates_nothing(
    app: App, payload: dict[str, Any], code: int, detail: str
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "taken", oms=2, accounts=[9])
    before = len(await app.deps.store.list_users())
    async with await logged_in(app, "op") as c:
        answer = (await c.call("CreateUser", payload)).o
    assert answer["errorcode"] == code and detail in answer["detail"], answer
    assert len(await app.deps.store.list_users()) == before
    assert not (maildir(app) / "new").exists() or not list((maildir(app) / "new").iterdir())


async def test_only_an_operator_creates_users_and_only_in_its_own_oms(app: App) -> None:
    await make_user(app.deps, "op2", permissions=["Operator"], oms=2)
    await make_user(app.deps, "trader", permissions=["Trading"])
    async with await logged_in(app, "trader") as c:
        answer = (await c.call("CreateUser", {"UserName": "x", "Email": "x@example.test"})).o
        assert answer == refusal(20, "Only an Operator may do this")
    async with await logged_in(app, "op2") as c:
        payload = {"UserName": "x", "Email": "x@example.test", "OMSId": 1}
        uid = (await c.call("CreateUser", payload)).o["UserId"]
    created = await app.deps.store.user_by_id(uid)
    assert created is not None and created.oms_id == 2  # the caller's OMS, whatever was sent


async def test_user_add_invite_and_user_invite_on_the_command_line(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.sqlite3")
    added = oms_auth(
        tmp_path,
        "user",
        "add",
        "--db",
        db,
        "--username",
        "cli",
        "--email",
        "cli@example.test",
        "--invite",
    )
    assert "invitation queued for cli@example.test" in added.stdout
    uid = int(added.stdout.split()[-1])
    again = oms_auth(tmp_path, "user", "invite", "--db", db, "cli")
    assert "older links of cli are void" in again.stdout
    both = oms_auth(
        tmp_path,
        "user",
        "add",
        "--db",
        db,
        "--username",
        "x",
        "--email",
        "x@example.test",
        "--invite",
        "--password",
        "Whatever-12",
        check=False,
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr
    app = App(settings_for(tmp_path, db=db, mail=f"maildir:{tmp_path / 'mail'}"))
    await app.start()
    try:
        first, second = [parse_mail(p) for p in await wait_for_mail(tmp_path / "mail", 2)]
        assert first["user_id"] == second["user_id"] == uid
        assert first["link"].startswith(app.public_url)
        async with await Client.connect(app.url) as c:
            # Both went out at once (in either order): one link is void, the newer works.
            looked = [
                (await c.call("GetUserIdForPasswordSet", {"PendingCode": m["code"]})).o
                for m in (first, second)
            ]
            assert sorted(str(o) for o in looked) == sorted(
                [str({"UserId": uid}), str(refusal(104, "Invalid password recovery key"))]
            )
            live = first if looked[0] == {"UserId": uid} else second
            new = {"UserId": uid, "PendingCode": live["code"], "Password": NEW}
            assert (await c.call("ResetPassword2", new)).o == OK
    finally:
        await app.stop()
    done = oms_auth(tmp_path, "user", "invite", "--db", db, "cli", check=False)
    assert done.returncode != 0 and "has set a password" in done.stderr


# -- operators: forced logoff, locked users -------------------------------------------------------


async def test_force_user_logoff_ends_every_session_of_the_user_with_an_event(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    uid = await make_user(app.deps, "trader")
    cs = [await logged_in(app, "trader") for _ in range(3)]
    token = None
    try:
        async with await Client.connect(app.url) as c:
            r = await c.call("AuthenticateUser", {"UserName": "trader", "Password": PASSWORD})
            token = r.o["SessionToken"]
        async with await logged_in(app, "op") as op:
            assert (await op.call("ForceUserLogoff", {"UserId": uid})).o == OK
            for c in cs:
                assert (await next_event(c)).o == {"Reason": "ForcedLogoff"}
                assert (await c.call("GetUserInfo", {})).o == refusal(20, "Not logged in")
            assert (await op.call("ForceUserLogoff", {"UserName": "TRADER"})).o == OK
    finally:
        await asyncio.gather(*(c.close() for c in cs))
    async with await Client.connect(app.url) as c:
        resumed = await c.call("WebAuthenticateUser", {"SessionToken": token})
        assert resumed.o["Authenticated"] is False
    notices = [
        m for m in await mails(app, 2) if m["msg"]["Subject"] == "Your sessions were logged off"
    ]
    assert len(notices) == 2
    assert "forced-logoff" in await actions(app, "trader")
    assert (await login(app, "trader"))["Authenticated"] is True  # the password still works


async def test_force_user_logoff_is_an_operators_for_users_of_its_oms(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    mate = await make_user(app.deps, "mate", permissions=["Trading"], accounts=[10])
    far = await make_user(app.deps, "far", oms=2)
    async with await logged_in(app, "trader") as c:
        assert (await c.call("ForceUserLogoff", {"UserId": mate})).o == refusal(
            20, "Only an Operator may do this"
        )
        assert (await c.call("GetLockedUsers", {})).o == refusal(20, "Only an Operator may do this")
    async with await logged_in(app, "op") as c:
        for payload in (
            {"UserId": far},
            {"UserName": "far"},
            {"UserId": 999999},
            {"UserName": "x"},
        ):
            assert (await c.call("ForceUserLogoff", payload)).o == refusal(
                104, "User does not exist"
            ), payload
        assert (await c.call("ForceUserLogoff", {"UserId": "x"})).o == refusal(
            100, "Invalid value provided for UserId"
        )


async def test_get_locked_users_lists_the_locked_users_of_the_callers_oms(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    uid = await make_user(app.deps, "locked")
    far = await make_user(app.deps, "far", oms=2)
    await make_user(app.deps, "free")
    until = clock.now + app.settings.lockout_seconds
    for who in (uid, far):
        await app.deps.store.set_lock(who, until, AuditEntry(action="locked", target_id=who))
    async with await logged_in(app, "op") as c:
        listed = (await c.call("GetLockedUsers", {})).o
        assert [(u["UserId"], u["UserName"], u["Email"]) for u in listed] == [
            (uid, "locked", "locked@example.test")
        ]
        from datetime import datetime

        started = datetime.fromisoformat(listed[0]["LockedDateTime"].replace("Z", "+00:00"))
        ends = datetime.fromisoformat(listed[0]["LockedUntil"].replace("Z", "+00:00"))
        assert abs(ends.timestamp() - until) < 1 and abs(started.timestamp() - clock.now) < 1
        assert listed[0]["LockedUntil"].endswith("Z")
        assert (await c.call("UnlockUser", {"UserId": uid})).o == OK
        assert (await c.call("GetLockedUsers", {})).o == []
        clock.advance(app.settings.lockout_seconds + 1)
        assert (await c.call("GetLockedUsers", {})).o == []
