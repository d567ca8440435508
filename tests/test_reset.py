"""docs/rules.md, "Who may start a reset" to "Lockout": the shared reset engine, end to end through
a real socket and store."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from oms_auth.app import App
from oms_auth.store import AuditEntry
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, parse_mail, wait_for_mail

OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
NEW = "Fresh-Start42"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
INVALID_KEY = {
    "result": False,
    "errormsg": "Resource Not Found",
    "errorcode": 104,
    "detail": "Invalid password recovery key",
}


def refusal(code: int, detail: str) -> dict:
    texts = {
        20: "Not Authorized",
        100: "Invalid Response",
        101: "Operation Failed",
        104: "Resource Not Found",
    }
    return {"result": False, "errormsg": texts[code], "errorcode": code, "detail": detail}


@dataclass
class World:
    app: App
    maildir: Path
    ids: dict[str, int]

    async def client(self, username: str | None = None) -> Client:
        c = await Client.connect(self.app.url)
        if username is not None:
            reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
            assert reply.o["Authenticated"], reply.o
        return c

    async def reset(self, caller: str | None, target: str) -> dict:
        c = await self.client(caller)
        try:
            answer = await c.call("ResetPassword", {"UserName": target})
            assert answer.m == 1
            return answer.o
        finally:
            await c.close()

    async def mails(self, count: int) -> list[dict]:
        await self.app.resets.drain()
        return [parse_mail(p) for p in await wait_for_mail(self.maildir, count)]

    async def code_for(self, target: str, caller: str | None = "op") -> dict:
        """Request a reset and return the emailed link's fields."""
        before = len(list((self.maildir / "new").glob("*"))) if self.maildir.exists() else 0
        assert await self.reset(caller, target) == OK
        mail = (await self.mails(before + 1))[-1]
        assert "link" in mail, mail["text"]
        return mail

    async def reset2(self, c: Client | None = None, **payload: object) -> dict:
        own = c is None
        c = c or await self.client()
        try:
            answer = await c.call("ResetPassword2", payload)
            assert answer.m == 1
            return answer.o
        finally:
            if own:
                await c.close()


@pytest.fixture
async def world(app: App, tmp_path: Path) -> World:
    d = app.deps
    ids = {
        "op": await make_user(d, "op", permissions=["Operator"], accounts=[1]),
        "op2": await make_user(d, "op2", permissions=["Operator"], oms=2, accounts=[2]),
        "trader": await make_user(d, "trader", permissions=["Trading"], accounts=[10]),
        "mate": await make_user(d, "mate", permissions=["Trading"], accounts=[11, 10]),
        "stranger": await make_user(d, "stranger", permissions=["Trading"], accounts=[20]),
        "plain": await make_user(d, "plain", accounts=[10]),
        "foreign": await make_user(d, "foreign", permissions=["Trading"], oms=2, accounts=[30]),
        "guarded": await make_user(
            d,
            "guarded",
            accounts=[40],
            totp_secret=SECRET,
            question="First pet?",
            answer="Rex the Dog",
        ),
    }
    return World(app, tmp_path / "mail", ids)


# -- who may start a reset (docs/rules.md, "Who may start a reset") -------------------------

NOT_PERMITTED = refusal(20, "You do not have permission to request password reset for this user")
NO_SUCH_USER = refusal(104, "Username does not exist")

MATRIX = [
    # caller, target, answer
    (None, "trader", OK),
    (None, "nobody", OK),
    ("op", "op", OK),
    ("op", "trader", OK),
    ("op", "stranger", OK),
    ("op", "foreign", NO_SUCH_USER),
    ("op", "nobody", NO_SUCH_USER),
    ("op2", "foreign", OK),
    ("op2", "trader", NO_SUCH_USER),
    ("trader", "trader", OK),
    ("trader", "mate", OK),
    ("trader", "plain", OK),
    ("trader", "stranger", NOT_PERMITTED),
    ("trader", "op", NOT_PERMITTED),
    ("trader", "foreign", NOT_PERMITTED),
    ("trader", "nobody", NOT_PERMITTED),
    ("plain", "plain", OK),
    ("plain", "trader", NOT_PERMITTED),
    ("plain", "nobody", NOT_PERMITTED),
]


@pytest.mark.parametrize(("caller", "target", "expected"), MATRIX)
async def test_permission_matrix(
    world: World, caller: str | None, target: str, expected: dict
) -> None:
    assert await world.reset(caller, target) == expected


@pytest.mark.parametrize("caller", [None, "op", "trader", "plain"])
@pytest.mark.parametrize("payload", [{}, {"UserName": ""}, {"UserName": "   "}, {"UserName": None}])
async def test_a_missing_username_is_code_100_for_every_caller(
    world: World, caller: str | None, payload: dict
) -> None:
    c = await world.client(caller)
    try:
        answer = await c.call("ResetPassword", payload)
    finally:
        await c.close()
    assert answer.o == refusal(100, "Invalid value provided for Username")


async def test_a_username_of_the_wrong_type_is_code_100_naming_it(world: World) -> None:
    c = await world.client()
    answer = await c.call("ResetPassword", {"UserName": 42})
    await c.close()
    assert answer.o == refusal(100, "UserName must be a string, not an integer")


async def test_the_email_goes_to_the_target_with_a_one_time_link(world: World) -> None:
    mail = await world.code_for("trader")
    assert mail["to"] == "trader@example.test"
    assert mail["user_id"] == world.ids["trader"]
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", mail["code"]
    )
    assert mail["link"].startswith(world.app.public_url + "/reset?UserId=")
    assert mail["link"] in mail["html"].replace("&amp;", "&")
    assert mail["msg"]["Message-ID"] and "expires at" in mail["text"]


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        (
            dict(auth_source="openidconnect"),
            "This user is authenticated by OpenIdConnect and must use the OpenIdConnect"
            " provider to change their password",
        ),
        (
            dict(auth_source="saml"),
            "This user is authenticated by SAML Federation and must use the SAML Federation"
            " provider to change their password",
        ),
        (dict(active=False), "Your request cannot be processed. Please contact support"),
    ],
)
async def test_federated_and_inactive_users_are_refused_with_the_seed_texts(
    world: World, spec: dict, detail: str
) -> None:
    await make_user(world.app.deps, "special", **spec)
    assert await world.reset("op", "special") == refusal(101, detail)
    assert await world.reset(None, "special") == OK  # self-service still says nothing
    await world.app.resets.drain()
    assert not (world.maildir / "new").exists() or not list((world.maildir / "new").iterdir())


async def test_a_master_user_who_logged_in_needs_security_questions(world: World) -> None:
    await make_user(world.app.deps, "boss", master=True)
    # Never logged in: a new master user may reset.
    assert await world.reset("op", "boss") == OK
    await (await world.client("boss")).close()  # logging in makes last_login known
    assert await world.reset("op", "boss") == refusal(
        101, "You must have security questions set on your account before changing your password"
    )
    await make_user(world.app.deps, "boss2", master=True, question="Q?", answer="A")
    await (await world.client("boss2")).close()
    assert await world.reset("op", "boss2") == OK


async def test_more_than_three_requests_an_hour_are_refused_for_authenticated_callers(
    world: World, clock: Clock
) -> None:
    for _ in range(3):
        assert await world.reset("op", "trader") == OK
    too_many = await world.reset("op", "TRADER ")  # counted by the trimmed, case-folded name
    assert too_many["errorcode"] == 101 and "Too many" in too_many["detail"]
    clock.advance(3601)
    assert await world.reset("op", "trader") == OK


async def test_self_service_limit_sends_nothing_more_and_never_blocks_an_operator(
    world: World,
) -> None:
    for _ in range(5):
        assert await world.reset(None, "trader") == OK
    await world.mails(3)
    await asyncio.sleep(0.2)
    assert len(list((world.maildir / "new").iterdir())) == 3
    assert await world.reset("op", "trader") == OK
    await world.mails(4)


async def test_self_service_answers_are_identical_whether_or_not_the_user_exists(
    world: World,
) -> None:
    c = await world.client()
    frames = []
    for name in ("trader", "nobody-at-all"):
        await c.send_raw('{"m":0,"i":0,"n":"ResetPassword","o":"{\\"UserName\\":\\"%s\\"}"}' % name)
        frames.append(await c.next_unmatched())
    await c.close()
    assert frames[0] == frames[1]
    mails = await world.mails(1)
    await asyncio.sleep(0.2)
    assert len(list((world.maildir / "new").iterdir())) == 1 and mails[0]["to"].startswith("trader")


async def test_self_service_can_be_turned_off(world: World) -> None:
    world.app.settings.self_service_reset = False
    assert await world.reset(None, "trader") == refusal(
        20, "Self-service password reset is turned off; ask an operator"
    )


async def test_a_per_address_limit_stops_one_client_spraying_usernames(world: World) -> None:
    limit = world.app.settings.reset_requests_per_source
    for n in range(limit + 5):
        assert await world.reset(None, f"user{n}") == OK
    await world.app.resets.drain()
    assert await world.reset(None, "trader") == OK
    await world.app.resets.drain()
    await asyncio.sleep(0.2)
    assert not (world.maildir / "new").exists() or not list((world.maildir / "new").iterdir())
    # Throttled requests are counted, not audited one by one (tests/test_self_service.py).
    assert world.app.metrics.events["resets_throttled"] == 6
    rows = await world.app.deps.store.audit_rows(limit=None)
    assert [r.detail for r in rows if r.action == "reset-refused"] == ["no such user"] * limit


# -- PendingCode ------------------------------------------------------------------------------


async def test_the_code_is_stored_only_as_a_digest(world: World) -> None:
    from .helpers import store_contents

    mail = await world.code_for("trader")
    raw = await store_contents(world.app.settings.db)
    assert mail["code"].encode() not in raw and mail["code"].replace("-", "").encode() not in raw


async def test_a_code_is_valid_for_24_hours(world: World, clock: Clock) -> None:
    mail = await world.code_for("trader")
    clock.advance(24 * 3600 - 5)
    c = await world.client()
    assert (await c.call("GetUserIdForPasswordSet", {"PendingCode": mail["code"]})).o == {
        "UserId": world.ids["trader"]
    }
    clock.advance(10)
    assert (await c.call("GetUserIdForPasswordSet", {"PendingCode": mail["code"]})).o == INVALID_KEY
    await c.close()
    assert (
        await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"])
        == INVALID_KEY
    )


async def test_a_newer_code_voids_the_older_ones(world: World) -> None:
    first = await world.code_for("trader")
    second = await world.code_for("trader")
    assert (
        await world.reset2(UserId=first["user_id"], Password=NEW, PendingCode=first["code"])
        == INVALID_KEY
    )
    assert (
        await world.reset2(UserId=second["user_id"], Password=NEW, PendingCode=second["code"]) == OK
    )


async def test_of_concurrent_redemptions_of_one_code_exactly_one_succeeds(world: World) -> None:
    mail = await world.code_for("trader")
    clients = [await world.client() for _ in range(20)]
    payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
    answers = await asyncio.gather(*(c.call("ResetPassword2", payload) for c in clients))
    for c in clients:
        await c.close()
    outcomes = sorted(a.o["errorcode"] for a in answers)
    assert outcomes == [0] + [104] * 19
    assert all(a.o == INVALID_KEY for a in answers if a.o["errorcode"])


async def test_opening_the_link_or_reading_requirements_never_consumes_the_code(
    world: World,
) -> None:
    import urllib.request

    mail = await world.code_for("trader")

    def scan() -> int:  # what a mail scanner does with a link
        with urllib.request.urlopen(mail["link"], timeout=5) as page:
            page.read()
            return int(page.status)

    for _ in range(3):
        # In a thread: the server runs on this test's event loop.
        assert await asyncio.to_thread(scan) == 200
    c = await world.client()
    for _ in range(3):
        assert (await c.call("GetUserIdForPasswordSet", {"PendingCode": mail["code"]})).m == 1
        assert (await c.call("GetRequirementsForPasswordSet", {"PendingCode": mail["code"]})).o[
            "UserId"
        ] == mail["user_id"]
    await c.close()
    assert await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"]) == OK


async def test_requirements_tell_the_page_what_to_ask(world: World, clock: Clock) -> None:
    mail = await world.code_for("guarded")
    c = await world.client()
    reply = (await c.call("GetRequirementsForPasswordSet", {"PendingCode": mail["code"]})).o
    await c.close()
    assert reply["UserId"] == world.ids["guarded"]
    assert reply["SecurityQuestion"] == "First pet?"
    assert (reply["Requires2FA"], reply["TwoFAType"]) == (True, "Google")
    assert reply["PasswordRules"][0] == "be over eight characters long"
    assert "not be a commonly used password" in reply["PasswordRules"]
    assert abs(reply["ExpiresAt"] - (clock() + 86400) * 1000) < 5000
    plain = await world.code_for("trader")
    c = await world.client()
    reply = (await c.call("GetRequirementsForPasswordSet", {"PendingCode": plain["code"]})).o
    await c.close()
    assert (reply["SecurityQuestion"], reply["Requires2FA"], reply["TwoFAType"]) == (
        None,
        False,
        None,
    )


@pytest.mark.parametrize("code", [None, "", "not-a-code", "00000000-0000-4000-8000-000000000000"])
async def test_lookups_with_an_invalid_code_answer_104(world: World, code: str | None) -> None:
    c = await world.client()
    for name in ("GetUserIdForPasswordSet", "GetRequirementsForPasswordSet"):
        assert (await c.call(name, {"PendingCode": code})).o == INVALID_KEY
    await c.close()


# -- ResetPassword2, in the order of docs/rules.md ("ResetPassword2: the checks in order") --


@pytest.mark.parametrize("password", [None, ""])
async def test_a_missing_password_is_100_before_anything_else(
    world: World, password: str | None
) -> None:
    assert await world.reset2(UserId=1, Password=password, PendingCode="bogus") == refusal(
        100, "Invalid value provided for Password"
    )


async def test_a_key_of_the_wrong_type_is_100_naming_it(world: World) -> None:
    answer = await world.reset2(UserId=1, Password=NEW, PendingCode=["x"])
    assert answer == refusal(100, "PendingCode must be a string, not an array")


async def test_every_invalid_code_case_answers_with_one_text(world: World, clock: Clock) -> None:
    trader = await world.code_for("trader")
    mate = await world.code_for("mate")
    cases = [
        dict(UserId=trader["user_id"], Password=NEW),  # no code
        dict(UserId=trader["user_id"], Password=NEW, PendingCode="nonsense"),
        dict(UserId=trader["user_id"], Password=NEW, PendingCode=mate["code"]),  # not theirs
        dict(UserId=str(2**70), Password=NEW, PendingCode=trader["code"]),
    ]
    for payload in cases:
        assert await world.reset2(**payload) == INVALID_KEY
    assert (
        await world.reset2(UserId=str(trader["user_id"]), Password=NEW, PendingCode=trader["code"])
        == OK
    )  # UserId as the link's string
    assert (
        await world.reset2(
            UserId=trader["user_id"], Password="Another-One77", PendingCode=trader["code"]
        )
        == INVALID_KEY
    )  # used


async def test_the_checks_run_in_order_question_totp_rules_then_set(
    world: World, clock: Clock
) -> None:
    mail = await world.code_for("guarded")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"])
    totp = pyotp.TOTP(SECRET)
    assert await world.reset2(**base, Password="x") == refusal(
        20, "Invalid answer provided for security question"
    )
    assert await world.reset2(**base, Password="x", SecurityQuestionAnswer="Cat") == refusal(
        20, "Invalid answer provided for security question"
    )
    right = dict(base, SecurityQuestionAnswer="  rex THE   dog ")
    assert await world.reset2(**right, Password="x") == refusal(
        20, "Time-based One Time Password authentication is required to log in with this user"
    )
    assert await world.reset2(**right, Password="x", Code="123456") == refusal(
        20, "Invalid two-factor code"
    )
    code = totp.at(int(clock()))
    answer = await world.reset2(**right, Password="short", Code=code)
    assert answer["errorcode"] == 100
    assert answer["detail"] == (
        "Your portal password must be over eight characters long; contain at least one uppercase"
        " letter; contain at least one number; contain one of the special characters "
        "_ - | @ . , ? / ! ~ # $ % ^ & * ( ) { } [ ] \\ + ="
    )
    assert await world.reset2(**right, Password=NEW, Code=int(code)) == OK


@pytest.mark.parametrize(
    ("password", "broken"),
    [
        ("Abcdefg1!", None),
        ("Abcdef1!", "be over eight characters long"),
        ("Abcdefghijklmnopq1!", None),
        ("Abcdefghijklmnopqr1!", "be under twenty characters long"),
        ("abcdefgh1!", "contain at least one uppercase letter"),
        ("ABCDEFGH1!", "contain at least one lowercase letter"),
        ("Abcdefghi!", "contain at least one number"),
        ("Abcdefghi1", "contain one of the special characters"),
        ("Summer2024!", "not be a commonly used password"),
        ("P@ssw0rd123!", "not be a commonly used password"),
    ],
)
async def test_each_password_rule(world: World, password: str, broken: str | None) -> None:
    mail = await world.code_for("trader")
    answer = await world.reset2(UserId=mail["user_id"], Password=password, PendingCode=mail["code"])
    if broken is None:
        assert answer == OK
    else:
        assert answer["errorcode"] == 100
        assert answer["detail"].startswith("Your portal password must " + broken)


async def test_a_password_equal_to_the_username_is_refused(world: World) -> None:
    await make_user(world.app.deps, "Longname-12x")
    mail = await world.code_for("longname-12X")
    answer = await world.reset2(
        UserId=mail["user_id"], Password="lONGNAME-12x", PendingCode=mail["code"]
    )
    assert answer == refusal(100, "Your portal password must not match your username")


async def test_the_nist_policy_checks_length_and_the_blocklist_only(world: World) -> None:
    world.app.settings.password_policy = "nist"
    mail = await world.code_for("trader")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"])
    assert (await world.reset2(**base, Password="short"))["detail"] == (
        "Your portal password must be at least eight characters long"
    )
    assert (await world.reset2(**base, Password="password1"))["detail"] == (
        "Your portal password must not be a commonly used password"
    )
    assert await world.reset2(**base, Password="lowercase only words") == OK


# -- on success --------------------------------------------------------------------------------


async def test_success_sets_the_password_and_logs_every_session_off(world: World) -> None:
    elsewhere = await world.client("trader")
    token_client = await world.client()
    reply = await token_client.call(
        "AuthenticateUser", {"UserName": "trader", "Password": PASSWORD}
    )
    token = reply.o["SessionToken"]
    mail = await world.code_for("trader")
    assert await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"]) == OK
    # The open connection is logged off, and the token no longer resumes.
    assert (await elsewhere.call("LogOut")).o["errorcode"] == 20
    fresh = await world.client()
    assert (await fresh.call("WebAuthenticateUser", {"SessionToken": token})).o[
        "Authenticated"
    ] is False
    old = await fresh.call("AuthenticateUser", {"UserName": "trader", "Password": PASSWORD})
    new = await fresh.call("AuthenticateUser", {"UserName": "trader", "Password": NEW})
    assert (old.o["Authenticated"], new.o["Authenticated"]) == (False, True)
    for c in (elsewhere, token_client, fresh):
        await c.close()
    changed = (await world.mails(2))[-1]
    assert changed["msg"]["Subject"] == "Your OMS Exchange password was changed"
    assert "link" not in changed


async def test_success_voids_every_pending_code_of_the_user(world: World) -> None:
    mail = await world.code_for("trader")
    # A second link mailed later voids the first; redeeming the second voids nothing else left.
    assert await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"]) == OK
    c = await world.client()
    assert (await c.call("GetUserIdForPasswordSet", {"PendingCode": mail["code"]})).o == (
        INVALID_KEY
    )
    await c.close()


# -- lockout ---------------------------------------------------------------------------------------


async def lock_guarded(world: World) -> dict:
    mail = await world.code_for("guarded")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"], Password=NEW)
    for _ in range(5):
        assert (await world.reset2(**base, SecurityQuestionAnswer="wrong"))["errorcode"] == 20
    return base


async def test_five_wrong_answers_lock_the_user_for_30_minutes(world: World, clock: Clock) -> None:
    base = await lock_guarded(world)
    code = pyotp.TOTP(SECRET).at(int(clock()))
    locked = refusal(101, "Account has been locked for 30 minutes")
    assert await world.reset2(**base, SecurityQuestionAnswer="Rex the dog", Code=code) == locked
    c = await world.client()
    login = (await c.call("AuthenticateUser", {"UserName": "guarded", "Password": PASSWORD})).o
    assert (login["Authenticated"], login["Locked"]) == (False, True)
    await c.close()
    clock.advance(1801)
    code = pyotp.TOTP(SECRET).at(int(clock()))
    assert await world.reset2(**base, SecurityQuestionAnswer="Rex the dog", Code=code) == OK


async def test_wrong_totp_codes_count_and_missing_ones_do_not(world: World, clock: Clock) -> None:
    mail = await world.code_for("guarded")
    base = dict(
        UserId=mail["user_id"],
        PendingCode=mail["code"],
        Password=NEW,
        SecurityQuestionAnswer="rex the dog",
    )
    for _ in range(10):
        assert (await world.reset2(**base))["detail"].startswith("Time-based")  # missing
        assert (await world.reset2(**dict(base, SecurityQuestionAnswer="")))["errorcode"] == 20
    for _ in range(4):
        assert (await world.reset2(**base, Code="000000"))["detail"] == "Invalid two-factor code"
    code = pyotp.TOTP(SECRET).at(int(clock()))
    assert await world.reset2(**base, Code=code) == OK  # four failures: not locked


async def test_failures_older_than_the_window_do_not_count(world: World, clock: Clock) -> None:
    mail = await world.code_for("guarded")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"], Password=NEW)
    for _ in range(4):
        await world.reset2(**base, SecurityQuestionAnswer="wrong")
    clock.advance(1801)
    await world.reset2(**base, SecurityQuestionAnswer="wrong")
    code = pyotp.TOTP(SECRET).at(int(clock()))
    assert await world.reset2(**base, SecurityQuestionAnswer="rex the dog", Code=code) == OK


async def test_invalid_codes_never_count_against_the_user_named(world: World, clock: Clock) -> None:
    for _ in range(10):
        assert (
            await world.reset2(UserId=world.ids["guarded"], Password=NEW, PendingCode="guess")
            == INVALID_KEY
        )
    user = await world.app.deps.store.user_by_id(world.ids["guarded"])
    assert user is not None and user.locked_until is None


async def test_invalid_codes_count_against_the_source_address(world: World) -> None:
    mail = await world.code_for("trader")
    for _ in range(world.app.settings.invalid_codes_per_source):
        assert await world.reset2(UserId=1, Password=NEW, PendingCode="guess") == INVALID_KEY
    answer = await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"])
    assert answer["errorcode"] == 101 and "Too many invalid" in answer["detail"]


async def test_failed_logins_do_not_lock_the_reset(world: World) -> None:
    c = await world.client()
    for _ in range(12):
        await c.call("AuthenticateUser", {"UserName": "trader", "Password": "wrong"})
    await c.close()
    mail = await world.code_for("trader")
    assert await world.reset2(UserId=mail["user_id"], Password=NEW, PendingCode=mail["code"]) == OK


async def test_an_operator_of_the_users_oms_can_unlock(world: World, clock: Clock) -> None:
    base = await lock_guarded(world)
    target = {"UserId": world.ids["guarded"]}
    for caller, expected in [
        (None, refusal(20, "Only an Operator may unlock users")),
        ("trader", refusal(20, "Only an Operator may unlock users")),
        ("op2", refusal(104, "User does not exist")),
    ]:
        c = await world.client(caller)
        assert (await c.call("UnlockUser", target)).o == expected
        await c.close()
    c = await world.client("op")
    assert (await c.call("UnlockUser", {"UserId": "abc"})).o["errorcode"] == 100
    assert (await c.call("UnlockUser", {"UserId": 10**30})).o == refusal(104, "User does not exist")
    assert (await c.call("UnlockUser", target)).o == OK
    await c.close()
    code = pyotp.TOTP(SECRET).at(int(clock()))
    assert await world.reset2(**base, SecurityQuestionAnswer="rex the dog", Code=code) == OK


async def test_unlock_clears_the_failure_count(world: World) -> None:
    await world.app.deps.store.set_lock(world.ids["guarded"], None, AuditEntry(action="unlocked"))
    mail = await world.code_for("guarded")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"], Password=NEW)
    for _ in range(4):
        await world.reset2(**base, SecurityQuestionAnswer="wrong")
    await world.app.deps.store.set_lock(world.ids["guarded"], None, AuditEntry(action="unlocked"))
    for _ in range(4):
        await world.reset2(**base, SecurityQuestionAnswer="wrong")
    user = await world.app.deps.store.user_by_id(world.ids["guarded"])
    assert user is not None and user.locked_until is None


# -- secrets and the audit trail ------------------------------------------------------------


async def test_no_secret_reaches_the_store_the_log_or_the_audit_trail(
    world: World, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    from .helpers import store_contents

    caplog.set_level("DEBUG")
    mail = await world.code_for("guarded")
    base = dict(UserId=mail["user_id"], PendingCode=mail["code"])
    await world.reset2(**base, Password="Wrong-Answer-1", SecurityQuestionAnswer="Wrong answer")
    code = pyotp.TOTP(SECRET).at(int(clock()))
    await world.reset2(**base, Password=NEW, SecurityQuestionAnswer="Rex the Dog", Code=code)
    secrets = [
        mail["code"],
        NEW,
        PASSWORD,
        "Rex the Dog",
        "rex the dog",
        SECRET,
        code,
        "Wrong answer",
    ]
    rows = await world.app.deps.store.audit_rows(limit=1000)
    audit_text = " ".join(str(r) for r in rows)
    log_text = caplog.text
    raw = await store_contents(world.app.settings.db)
    for secret in secrets:
        assert secret not in audit_text and secret not in log_text
        assert secret.encode() not in raw
    actions = {r.action for r in rows}
    assert {"reset-requested", "reset-emailed", "reset-attempt-failed", "password-set"} <= actions


async def test_a_queued_link_is_sealed_until_delivered_then_erased(world: World) -> None:
    from oms_auth.crypto import mail_context

    from .helpers import sql, store_contents

    db = world.app.settings.db
    outbox = world.app.outbox
    assert outbox is not None
    await outbox.stop()  # hold delivery
    assert await world.reset("op", "trader") == OK
    ((mail_id, user_id, sealed),) = await sql(db, "SELECT id, user_id, sealed FROM outbox")
    opened = world.app.deps.sealer.open(sealed, mail_context(user_id, "reset")).decode()
    code = re.search(r'"code":"([0-9a-f-]+)"', opened)[1]  # type: ignore[index]
    assert code.encode() not in await store_contents(db)
    await outbox.deliver_due()
    assert await sql(db, "SELECT state, sealed FROM outbox") == [("sent", None)]
    assert code in parse_mail((await wait_for_mail(world.maildir, 1))[0])["code"]
