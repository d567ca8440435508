"""Who may do what (docs/rules.md, "Fresh proof for account-security changes" and "Who may
start a reset"), end to end over real sockets on both stores, and every write re-checking its
caller's authority in its own transaction (issue 22):

- a stolen session token alone (a connection resumed by token, an HTTP call with an APToken)
  or an older login cannot add or remove keys or enrol an authenticator;
- a session opened with an API key holds only the key's permissions that the user still holds;
- a write racing the reset of its caller's password lands before the reset or not at all.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pyotp
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, settings_for, sql
from .test_accounts import ONLY_RELATED
from .test_apikeys import INVALID, key_login
from .test_http_gateway import http
from .test_races import code_for as reset_link

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
NEW = "Fresh-Start42"
OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}


def refusal(code: int, detail: str) -> dict[str, Any]:
    texts = {20: "Not Authorized", 100: "Invalid Response", 101: "Operation Failed"}
    texts |= {104: "Resource Not Found", 106: "Operation Not Supported"}
    return {"result": False, "errormsg": texts[code], "errorcode": code, "detail": detail}


CONFIRM = refusal(20, "Confirm your password first: log in again on this connection")
KEY_SESSION = refusal(
    20,
    "A session opened with an API key cannot change account security; log in with the password",
)
ONLY_OPERATORS = refusal(20, "Only an Operator may do this")


async def logged_in(app: App, username: str) -> tuple[Client, str]:
    """A connection that proved the password just now, and its session token."""
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"] and reply.o["SessionToken"], reply.o
    return c, reply.o["SessionToken"]


async def resumed(app: App, token: str) -> Client:
    """A connection that only holds the token (a thief's)."""
    c = await Client.connect(app.url)
    reply = await c.call("WebAuthenticateUser", {"SessionToken": token})
    assert reply.o["Authenticated"] is True, reply.o
    return c


async def key_session(app: App, key: dict[str, Any], nonce: int) -> Client:
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", key_login(key, nonce))
    assert reply.o["Authenticated"] is True, reply.o
    return c


async def uses_totp(app: App, username: str) -> bool:
    user = await app.deps.store.user_by_name(username)
    assert user is not None
    return user.uses_totp


# -- fresh proof (docs/rules.md, "Fresh proof for account-security changes") --


async def test_a_session_resumed_by_token_cannot_add_or_remove_keys_or_enrol_totp(
    app: App,
) -> None:
    uid = await make_user(app.deps, "owner")
    owner, token = await logged_in(app, "owner")
    async with owner, await resumed(app, token) as thief:
        key = (await owner.call("AddUserAPIKey", {"Permissions": []})).o
        assert "APISecret" in key, key
        for name, payload in [
            ("AddUserAPIKey", {"Permissions": ["Trading"]}),
            ("AddUserAPIKey", {"UserId": uid, "Permissions": []}),
            ("RemoveUserAPIKey", {"APIKey": key["APIKey"]}),
            ("EnableGoogle2FA", {}),
        ]:
            assert (await thief.call(name, payload)).o == CONFIRM, (name, payload)
        # It may still read what the session may read.
        assert (await thief.call("GetUserInfo", {})).o["UserId"] == uid
    assert [k.key for k in await app.deps.store.api_keys(uid)] == [key["APIKey"]]
    assert not await uses_totp(app, "owner")


async def test_a_thief_resuming_a_session_cannot_enrol_its_own_authenticator(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "owner")
    owner, token = await logged_in(app, "owner")
    async with owner, await resumed(app, token) as thief:
        enrolled = (await thief.call("EnableGoogle2FA", {})).o
        assert enrolled == CONFIRM
        # Had it been given a secret, its first code would now make TOTP the thief's.
        if "ManualCode" in enrolled:
            code = pyotp.TOTP(enrolled["ManualCode"]).at(clock.now)
            await thief.call("Authenticate2FA", {"Code": code})
    assert not await uses_totp(app, "owner")
    async with await Client.connect(app.url) as c:
        again = await c.call("AuthenticateUser", {"UserName": "owner", "Password": PASSWORD})
        assert again.o["Authenticated"] is True and again.o["Requires2FA"] is False


async def test_an_aptoken_over_http_mints_no_key_that_outlives_the_owners_logout(
    app: App,
) -> None:
    uid = await make_user(app.deps, "owner")
    owner, token = await logged_in(app, "owner")
    headers = {"APToken": token, "Content-Type": "application/json"}
    body = orjson.dumps({"UserId": uid, "Permissions": ["Trading"]})
    async with owner:
        status, answer = await http(app, "POST", "/AP/AddUserAPIKey", body=body, headers=headers)
        assert (status, answer) == (200, CONFIRM)
        status, answer = await http(
            app, "GET", "/AP/AddUserAPIKey", query={"UserId": uid}, headers={"APToken": token}
        )
        assert (status, answer) == (200, CONFIRM)
        assert (await owner.call("LogOut", {})).o == OK
    assert await app.deps.store.api_keys(uid) == []


async def test_a_login_older_than_fresh_auth_seconds_must_log_in_again_on_that_connection(
    app: App, clock: Clock
) -> None:
    uid = await make_user(app.deps, "owner")
    c, _ = await logged_in(app, "owner")
    async with c:
        key = (await c.call("AddUserAPIKey", {"Permissions": []})).o
        clock.advance(app.settings.fresh_auth_seconds + 1)
        assert (await c.call("AddUserAPIKey", {"Permissions": []})).o == CONFIRM
        assert (await c.call("RemoveUserAPIKey", {"APIKey": key["APIKey"]})).o == CONFIRM
        assert (await c.call("EnableGoogle2FA", {})).o == CONFIRM
        login = await c.call("AuthenticateUser", {"UserName": "owner", "Password": PASSWORD})
        assert login.o["Authenticated"] is True
        assert (await c.call("RemoveUserAPIKey", {"APIKey": key["APIKey"]})).o == OK
        assert "APISecret" in (await c.call("AddUserAPIKey", {"Permissions": []})).o
    assert len(await app.deps.store.api_keys(uid)) == 1


async def test_fresh_auth_seconds_is_a_setting(tmp_path: Path, clock: Clock, db: str) -> None:
    app = App(settings_for(tmp_path, db=db, fresh_auth_seconds=60), clock=clock, login_delay=0)
    await app.start()
    try:
        await make_user(app.deps, "owner")
        c, _ = await logged_in(app, "owner")
        async with c:
            clock.advance(59)
            assert "APISecret" in (await c.call("AddUserAPIKey", {"Permissions": []})).o
            clock.advance(2)
            assert (await c.call("AddUserAPIKey", {"Permissions": []})).o == CONFIRM
    finally:
        await app.stop()


async def test_the_current_password_in_the_payload_is_proof_enough(app: App) -> None:
    uid = await make_user(app.deps, "owner")
    owner, token = await logged_in(app, "owner")
    async with owner, await resumed(app, token) as c:
        wrong = {"Permissions": [], "Password": "Not-the-one1"}
        assert (await c.call("AddUserAPIKey", wrong)).o == refusal(
            20, "The password given is not the current password"
        )
        key = (await c.call("AddUserAPIKey", {"Permissions": [], "Password": PASSWORD})).o
        assert "APISecret" in key, key
        payload = {"APIKey": key["APIKey"], "Password": PASSWORD}
        assert (await c.call("RemoveUserAPIKey", payload)).o == OK
        enrolled = (await c.call("EnableGoogle2FA", {"Password": PASSWORD})).o
        assert "ManualCode" in enrolled, enrolled
    assert await app.deps.store.api_keys(uid) == []


async def test_disable2fa_without_a_code_needs_a_fresh_login_on_that_connection(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    async with await Client.connect(app.url) as owner:
        step = await owner.call("AuthenticateUser", {"UserName": "trader", "Password": PASSWORD})
        assert step.o["Requires2FA"] is True
        done = await owner.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).at(clock.now)})
        token = done.o["SessionToken"]
        async with await resumed(app, token) as thief:
            assert (await thief.call("Disable2FA", {})).o == CONFIRM
        assert await uses_totp(app, "trader")
        clock.advance(app.settings.fresh_auth_seconds + 1)
        assert (await owner.call("Disable2FA", {})).o == CONFIRM
        assert await uses_totp(app, "trader")
        # A current code is proof enough, on any connection.
        code = pyotp.TOTP(SECRET).at(clock.now)
        assert (await owner.call("Disable2FA", {"Code": code})).o == OK
    assert not await uses_totp(app, "trader")


# -- a key session holds only its key's permissions --------------------------------------------
# (docs/rules.md, "API-key sessions hold their key's permissions")


@pytest.fixture
async def ids(app: App) -> dict[str, int]:
    d = app.deps
    return {
        "op": await make_user(d, "op", permissions=["Operator"], accounts=[1]),
        "other": await make_user(d, "other", permissions=["Trading"], accounts=[10]),
    }


async def operator_key(app: App, permissions: list[str]) -> dict[str, Any]:
    c, _ = await logged_in(app, "op")
    async with c:
        key = (await c.call("AddUserAPIKey", {"Permissions": permissions})).o
    assert "APISecret" in key, key
    return dict(key)


async def test_an_operator_key_made_with_no_permissions_has_no_operator_power(
    app: App, ids: dict[str, int]
) -> None:
    key = await operator_key(app, [])
    other, _ = await logged_in(app, "other")
    users_before = len(await app.deps.store.list_users())
    async with other, await key_session(app, key, 1) as bot:
        new_user = {"UserName": "minted", "Email": "minted@example.test"}
        assert (await bot.call("CreateUser", new_user)).o == ONLY_OPERATORS
        assert (await bot.call("ForceUserLogoff", {"UserId": ids["other"]})).o == ONLY_OPERATORS
        assert (await bot.call("GetLockedUsers", {})).o == ONLY_OPERATORS
        assert (await bot.call("UnlockUser", {"UserId": ids["other"]})).o == refusal(
            20, "Only an Operator may unlock users"
        )
        for name in ("GetUserInfo", "GetUserPermissions", "GetUserAccounts"):
            answer = (await bot.call(name, {"UserId": ids["other"]})).o
            assert answer == refusal(20, ONLY_RELATED)
        assert (await bot.call("ResetPassword", {"UserName": "other"})).o == KEY_SESSION
        # Itself it may still read.
        assert (await bot.call("GetUserInfo", {})).o["UserId"] == ids["op"]
        # The other user was not logged off.
        assert (await other.call("GetUserInfo", {})).o["UserId"] == ids["other"]
    assert len(await app.deps.store.list_users()) == users_before


async def test_an_operator_key_holds_operator_only_while_the_user_does(
    app: App, ids: dict[str, int]
) -> None:
    key = await operator_key(app, ["Operator"])
    async with await key_session(app, key, 1) as bot:
        first = await bot.call("CreateUser", {"UserName": "first", "Email": "f@example.test"})
        assert isinstance(first.o.get("UserId"), int), first.o
        info = (await bot.call("GetUserInfo", {"UserId": ids["other"]})).o
        assert info["UserId"] == ids["other"]
        await sql(
            app.settings.db,
            "DELETE FROM user_permissions WHERE user_id = ? AND permission = 'Operator'",
            ids["op"],
        )
        second = await bot.call("CreateUser", {"UserName": "second", "Email": "s@example.test"})
        assert second.o == ONLY_OPERATORS
    assert await app.deps.store.user_by_name("second") is None


async def test_a_key_session_lists_its_own_keys_without_secrets_and_no_one_elses(
    app: App, ids: dict[str, int]
) -> None:
    key = await operator_key(app, ["Operator", "Trading"])
    async with await key_session(app, key, 1) as bot:
        listed = (await bot.call("GetUserAPIKeys", {})).o
        assert listed == [
            {"APIKey": key["APIKey"], "UserId": ids["op"], "Permissions": ["Operator", "Trading"]}
        ]
        assert (await bot.call("GetUserAPIKeys", {"UserId": ids["other"]})).o == KEY_SESSION
        assert (await bot.call("AddUserAPIKey", {"Permissions": []})).o == KEY_SESSION


# -- a reset racing a write that grants power -----------------------------------------------------


@pytest.fixture
async def roomy(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    """Limits out of the way, so a burst is bounded only by the race it runs."""
    service = App(
        settings_for(
            tmp_path,
            db=db,
            api_keys_per_user=100000,
            reset_requests_per_user=100000,
            login_failures_per_source=1000,
        ),
        clock=clock,
        login_delay=0,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def race_a_reset(
    app: App, username: str, cs: list[Client], calls: list[tuple[str, dict[str, Any]]]
) -> list[Any]:
    """Keep ``calls`` in flight on ``cs`` (each connection four at a time, round-robin) while
    ``username``'s password is reset; stop once the reset is done. Every answer, in order."""
    link = await reset_link(app, username)
    answers: list[Any] = []
    done = asyncio.Event()
    started = asyncio.Event()
    call_iter = itertools.cycle(calls)

    async def keep_calling(c: Client) -> None:
        while not done.is_set():
            name, payload = next(call_iter)
            answers.append((name, await c.call(name, payload)))
            if len(answers) >= 8:
                started.set()

    async def reset() -> None:
        await started.wait()
        async with await Client.connect(app.url) as c:
            payload = {"UserId": link["user_id"], "PendingCode": link["code"], "Password": NEW}
            assert (await c.call("ResetPassword2", payload)).o == OK
        done.set()

    await asyncio.gather(reset(), *(keep_calling(c) for c in cs for _ in range(4)))
    return answers


async def test_keys_minted_while_the_owner_resets_the_password_never_log_in_afterwards(
    roomy: App,
) -> None:
    app = roomy
    uid = await make_user(app.deps, "owner")
    cs = [(await logged_in(app, "owner"))[0] for _ in range(6)]
    try:
        answers = await race_a_reset(app, "owner", cs, [("AddUserAPIKey", {"Permissions": []})])
    finally:
        await asyncio.gather(*(c.close() for c in cs))
    minted = [a.o for _, a in answers if "APISecret" in a.o]
    assert minted, "no key was minted before the reset: the race was not run"
    assert await app.deps.store.api_keys(uid) == []
    async with await Client.connect(app.url) as c:
        for n, key in enumerate(minted, 1):
            assert (await c.call("AuthenticateUser", key_login(key, n))).o == INVALID


# -- writes in flight when the caller loses its authority ----------------------------------------

OPERATOR_WRITES = ("user-created", "forced-logoff", "unlocked", "reset-requested")


def operator_calls(victim: int) -> list[tuple[str, dict[str, Any]]]:
    names = (f"new{n}" for n in itertools.count())
    return [
        ("ForceUserLogoff", {"UserId": victim}),
        ("UnlockUser", {"UserId": victim}),
        ("ResetPassword", {"UserName": "victim"}),
        *(
            ("CreateUser", {"UserName": name, "Email": f"{name}@example.test"})
            for name in itertools.islice(names, 400)
        ),
    ]


async def writes_after_reset(app: App, op: int) -> tuple[int, list[str]]:
    """How many of the operator's writes are on record, and those recorded after its
    password was reset."""
    rows = await app.deps.store.audit_rows(limit=None, oldest_first=True)
    reset_at = next(r.id for r in rows if r.action == "password-set" and r.target_id == op)
    writes = [r for r in rows if r.actor_id == op and r.action in OPERATOR_WRITES]
    return len(writes), [f"{r.action} #{r.id}" for r in writes if r.id > reset_at]


async def test_operator_writes_in_flight_when_its_password_is_reset_land_before_it_or_not_at_all(
    roomy: App,
) -> None:
    app = roomy
    op = await make_user(app.deps, "op", permissions=["Operator"])
    victim = await make_user(app.deps, "victim")
    cs = [(await logged_in(app, "op"))[0] for _ in range(6)]
    try:
        await race_a_reset(app, "op", cs, operator_calls(victim))
    finally:
        await asyncio.gather(*(c.close() for c in cs))
    count, late = await writes_after_reset(app, op)
    assert count, "no write landed before the reset: the race was not run"
    assert late == []


# -- second factors set while the password is being reset --------------------------------------


async def test_questions_set_while_the_owner_resets_the_password_do_not_survive_it(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    """A thief who knows the password sets questions just as the owner resets it (the reset
    hashing the new password at a real Argon2id cost meanwhile): a question that landed
    between the reset's checks and its commit is put back, so the owner keeps the questions
    it had (none). A question set before the reset's checks is asked by the reset (a thief
    who acted first; not this race)."""
    settings = settings_for(
        tmp_path, db=db, argon2_time_cost=3, argon2_memory_kib=32768, login_failures_per_source=1000
    )
    app = App(settings, clock=clock, login_delay=0)
    await app.start()
    raced = 0
    try:
        # The thief's call checks the password and hashes its answer (two hashes), the reset
        # hashes one: the reset starts later by about a hash for the thief to land within. The
        # delays are in units of one hash as this machine takes it now (a loaded machine takes
        # several times longer: fixed delays missed the window there), until one race lands.
        started = time.monotonic()
        await app.deps.hasher.hash(NEW)
        unit = time.monotonic() - started
        for n, step in enumerate((0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)):
            if raced:
                break
            delay = step * unit
            uid = await make_user(app.deps, f"owner{n}")
            link = await reset_link(app, f"owner{n}")
            thief, _ = await logged_in(app, f"owner{n}")
            owner = await Client.connect(app.url)
            question = {"Question": "Thief's question?", "Answer": "thief"}

            async def recover(delay: float, link: dict[str, Any], owner: Client) -> Any:
                await asyncio.sleep(delay)
                payload = {"UserId": link["user_id"], "PendingCode": link["code"], "Password": NEW}
                return await owner.call("ResetPassword2", payload)

            payload = {"Password": PASSWORD, "Questions": [question]}
            reset, stolen = await asyncio.gather(
                recover(delay, link, owner), thief.call("SetSecurityQuestions", payload)
            )
            await asyncio.gather(thief.close(), owner.close())
            if reset.o == OK:
                raced += stolen.o == OK
                assert await app.deps.store.security_questions(uid) == [], f"delay {delay}"
    finally:
        await app.stop()
    assert raced, "no question landed during a reset: the race was not run"


async def test_an_authenticator_enrolled_while_the_owner_resets_does_not_survive_it(
    app: App,
) -> None:
    """The reset's transaction finds the second factors its checks read changed (an
    old-password session enrolled TOTP in between) and puts them back, audited; the store
    decides it, so the test writes the enrolment between the check and the commit itself."""
    from oms_auth.crypto import digest, new_pending_code
    from oms_auth.engine import totp
    from oms_auth.engine.links import user_mail
    from oms_auth.store import AccountChange, AuditEntry, Factors, Outcome, PasswordReset

    from .store_helpers import issue

    store, now = app.deps.store, app.deps.clock()
    uid = await make_user(app.deps, "owner")
    owner = await store.user_by_id(uid)
    assert owner is not None
    checked = Factors(owner.totp_sealed, ())  # what the reset's checks read: no TOTP
    code = digest(new_pending_code())
    mail = user_mail("password-changed", owner, {"changed_at": now})
    await issue(store, uid, code, now, now + 60, mail, [AuditEntry(action="test")])
    sealed = totp.seal_secret(app.deps.sealer, uid, SECRET)
    enrol = AccountChange(
        user_id=uid,
        password_version=owner.password_version,
        set_totp=True,
        totp_sealed=sealed,
        questions=(("Thief's question?", "x"),),
        audit=AuditEntry(action="2fa-enabled", target_id=uid),
    )
    assert await store.change_account(enrol, now) is Outcome.DONE
    reset = PasswordReset(
        user_id=uid,
        digest=code,
        password_hash=await app.deps.hasher.hash(NEW),
        now=now,
        mail=mail,
        audit=[AuditEntry(action="password-set", target_id=uid, target_name="owner")],
        checked=checked,
    )
    done = await store.complete_reset(reset)
    assert done is Outcome.DONE
    after = await store.user_by_id(uid)
    assert after is not None and after.totp_sealed is None
    assert await store.security_questions(uid) == []
    actions = [r.action for r in await store.audit_rows(limit=3)]
    assert "factors-restored" in actions
