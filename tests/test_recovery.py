"""The way back for a user who lost the phone (docs/protocol.md, "Recovery codes and
ResetUser2FA"): CreateRecoveryCodes and GetRecoveryCodesLeft; a recovery code accepted once
wherever a TOTP code is asked (Authenticate2FA, ResetPassword2, Disable2FA) under the same limits,
with a notice saying how many are left; ResetUser2FA for an Operator. Through real sockets on
both stores."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, sql
from .test_account_security import (
    CONFIRM,
    NEW,
    OK,
    SECRET,
    actions,
    logged_in,
    login,
    mails,
    next_event,
    refusal,
    with_totp,
)
from .test_apikeys import KEY_SESSION, key_login

CODE_SHAPE = re.compile(r"^[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}$")
TURN_ON = refusal(101, "Turn on two-factor authentication first")
WRONG_CODE = "Invalid two-factor code"


async def codes_for(app: App, username: str, clock: Clock) -> list[str]:
    """A new set for ``username`` (TOTP on), made on a connection that just proved both steps."""
    c, _ = await with_totp(app, username, clock)
    async with c:
        reply = (await c.call("CreateRecoveryCodes", {})).o
    clock.advance(30)  # the next login takes a newer TOTP step
    return list(reply["RecoveryCodes"])


async def second_step(app: App, username: str) -> Client:
    """A connection that gave the password and waits for its second step."""
    c = await Client.connect(app.url)
    first = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert first.o["Requires2FA"] is True, first.o
    return c


async def left(app: App, username: str, clock: Clock) -> int:
    c, _ = await with_totp(app, username, clock)
    async with c:
        count = (await c.call("GetRecoveryCodesLeft", {})).o["Left"]
    clock.advance(30)
    return int(count)


async def reset_link(app: App, username: str, count: int) -> dict[str, Any]:
    """The link of a new reset, the ``count``-th message sent."""
    async with await Client.connect(app.url) as anonymous:
        assert (await anonymous.call("ResetPassword", {"UserName": username})).ok
    await app.resets.drain()
    sent = await mails(app, count)
    return [m for m in sent if "link" in m][-1]


# -- CreateRecoveryCodes, GetRecoveryCodesLeft ----------------------------------------------------


async def test_recovery_codes_are_shown_once_kept_as_keyed_digests_and_a_new_set_voids_the_old(
    app: App, clock: Clock, db: str
) -> None:
    uid = await make_user(app.deps, "trader", totp_secret=SECRET)
    first = await codes_for(app, "trader", clock)
    assert len(first) == 10 and len(set(first)) == 10
    assert all(CODE_SHAPE.match(code) for code in first), first
    rows = await sql(db, "SELECT digest FROM recovery_codes WHERE user_id = ?", uid)
    stored = {bytes(row[0]) for row in rows}
    assert len(stored) == 10
    for code in first:  # neither the code nor its plain digest is in the store
        bare = code.replace("-", "").encode()
        assert not {hashlib.sha256(code.encode()).digest(), hashlib.sha256(bare).digest()} & stored
        assert all(bare not in digest and code.encode() not in digest for digest in stored)
    assert await left(app, "trader", clock) == 10
    second = await codes_for(app, "trader", clock)
    assert not set(first) & set(second)
    async with await second_step(app, "trader") as c:
        old = (await c.call("Authenticate2FA", {"Code": first[0]})).o
        assert (old["Authenticated"], old["errormsg"]) == (False, WRONG_CODE)
    assert await left(app, "trader", clock) == 10
    assert (await actions(app, "trader")).count("recovery-codes-created") == 2
    subjects = [m["msg"]["Subject"] for m in await mails(app, 2)]
    assert subjects.count("New recovery codes were made") == 2


async def test_recovery_codes_need_totp_on_a_fresh_password_proof_and_no_api_key(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "plain")
    await make_user(app.deps, "trader", totp_secret=SECRET)
    async with await Client.connect(app.url) as anonymous:
        assert (await anonymous.call("CreateRecoveryCodes", {})).o["errorcode"] == 20
        assert (await anonymous.call("GetRecoveryCodesLeft", {})).o["errorcode"] == 20
    async with await logged_in(app, "plain") as c:
        assert (await c.call("CreateRecoveryCodes", {})).o == TURN_ON
        assert (await c.call("GetRecoveryCodesLeft", {})).o == {"Left": 0}
        key = (await c.call("AddUserAPIKey", {"Permissions": ["Trading"]})).o
    async with await Client.connect(app.url) as by_key:
        assert (await by_key.call("AuthenticateUser", key_login(key, 1))).o["Authenticated"]
        assert (await by_key.call("CreateRecoveryCodes", {})).o == KEY_SESSION
    first, token = await with_totp(app, "trader", clock)
    async with first, await Client.connect(app.url) as resumed:
        assert (await resumed.call("WebAuthenticateUser", {"SessionToken": token})).o[
            "Authenticated"
        ]
        assert (await resumed.call("CreateRecoveryCodes", {})).o == refusal(20, CONFIRM)
        assert (await resumed.call("CreateRecoveryCodes", {"Password": 5})).o == refusal(
            100, "Password must be a string, not an integer"
        )
        wrong = {"Password": "Not-the-one1"}
        assert (await resumed.call("CreateRecoveryCodes", wrong)).o == refusal(
            20, "The password given is not the current password"
        )
        assert (await resumed.call("GetRecoveryCodesLeft", {})).o == {"Left": 0}
        made = (await resumed.call("CreateRecoveryCodes", {"Password": PASSWORD})).o
        assert len(made["RecoveryCodes"]) == 10
        assert (await resumed.call("GetRecoveryCodesLeft", {})).o == {"Left": 10}


# -- a recovery code in place of a TOTP code ------------------------------------------------------


async def test_a_recovery_code_logs_in_once_and_mails_how_many_are_left(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    codes = await codes_for(app, "trader", clock)
    typed = "  " + codes[3].upper().replace("-", " ") + " "  # as a person may type it
    async with await second_step(app, "trader") as c:
        done = (await c.call("Authenticate2FA", {"Code": typed})).o
        assert done["Authenticated"] is True and done["SessionToken"], done
        assert (await c.call("GetRecoveryCodesLeft", {})).o == {"Left": 9}
    async with await second_step(app, "trader") as c:
        again = (await c.call("Authenticate2FA", {"Code": codes[3]})).o
        assert (again["Authenticated"], again["errormsg"]) == (False, WRONG_CODE)
    notice = next(
        m for m in await mails(app, 2) if m["msg"]["Subject"] == "A recovery code was used"
    )
    assert "Recovery codes left: 9." in notice["text"] and codes[3] not in notice["text"]
    rows = await app.deps.store.audit_rows(user="trader", limit=None, oldest_first=True)
    assert any(r.action == "login" and r.detail == "with a recovery code" for r in rows)
    assert not any(code in repr(rows) for code in codes)


async def test_the_last_recovery_code_says_none_are_left_in_the_users_language(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "kunde", totp_secret=SECRET, locale="de")
    codes = await codes_for(app, "kunde", clock)
    for code in codes:
        async with await second_step(app, "kunde") as c:
            assert (await c.call("Authenticate2FA", {"Code": code})).o["Authenticated"]
    assert await left(app, "kunde", clock) == 0
    sent = await mails(app, 11)
    used = [m for m in sent if m["msg"]["Subject"] == "Ein Wiederherstellungscode wurde verwendet"]
    assert len(used) == 10
    assert any("Verbleibende Wiederherstellungscodes: 0." in m["text"] for m in used)
    assert any("Sie haben keine mehr" in m["text"] for m in used)


async def test_twenty_simultaneous_logins_with_one_recovery_code_succeed_once(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    code = (await codes_for(app, "trader", clock))[0]
    conns = [await second_step(app, "trader") for _ in range(20)]
    try:
        answers = await asyncio.gather(*(c.call("Authenticate2FA", {"Code": code}) for c in conns))
        assert sum(a.o["Authenticated"] is True for a in answers) == 1, [a.o for a in answers]
        # Asked on the connection that won: the 19 replays are failures that count toward the
        # login limit (docs/rules.md, "Fair limits"), so a fresh login may have to wait.
        (won,) = [c for c, a in zip(conns, answers, strict=True) if a.o["Authenticated"]]
        assert (await won.call("GetRecoveryCodesLeft", {})).o["Left"] == 9
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def test_wrong_recovery_codes_in_a_burst_check_at_most_the_login_limit(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    await codes_for(app, "trader", clock)
    conns = [await second_step(app, "trader") for _ in range(15)]
    wrong = [f"aaaa-bbbb-{n:04d}".replace("0", "a").replace("1", "b") for n in range(15)]
    before = app.metrics.events["totp_checks"]
    try:
        answers = await asyncio.gather(
            *(c.call("Authenticate2FA", {"Code": w}) for c, w in zip(conns, wrong, strict=True))
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert not any(a.o["Authenticated"] is True and a.o["SessionToken"] for a in answers)
    assert app.metrics.events["totp_checks"] - before <= app.settings.login_failures_per_user


async def test_a_recovery_code_completes_a_reset_once_and_wrong_ones_lock_the_reset(
    app: App, clock: Clock
) -> None:
    uid = await make_user(app.deps, "trader", totp_secret=SECRET)
    codes = await codes_for(app, "trader", clock)
    link = await reset_link(app, "trader", 2)
    payload = {"UserId": uid, "PendingCode": link["code"], "Password": NEW}
    async with await Client.connect(app.url) as c:
        attempts = [c.call("ResetPassword2", {**payload, "Code": codes[0]}) for _ in range(20)]
        answers = [a.o for a in await asyncio.gather(*attempts)]
    assert answers.count(OK) == 1, answers
    # The others lost the code's race, or found every lockout slot held by attempts in flight.
    losers = {WRONG_CODE, "Invalid password recovery key", "Account has been locked for 30 minutes"}
    assert all(a == OK or a["detail"] in losers for a in answers), answers
    assert (await login(app, "trader", NEW))["Requires2FA"] is True
    # Wrong recovery codes count as wrong TOTP codes do: five lock the reset.
    clock.advance(app.settings.lockout_window_seconds + 1)
    link = await reset_link(app, "trader", 5)  # after the code's notice and "password changed"
    payload = {"UserId": uid, "PendingCode": link["code"], "Password": PASSWORD}
    async with await Client.connect(app.url) as c:
        for n in range(5):
            wrong = await c.call("ResetPassword2", {**payload, "Code": f"zzzz-zzzz-zzz{n + 2}"})
            assert wrong.o == refusal(20, WRONG_CODE)
        locked = await c.call("ResetPassword2", {**payload, "Code": codes[1]})
        assert locked.o == refusal(101, "Account has been locked for 30 minutes")
    assert "locked" in await actions(app, "trader")


async def test_a_recovery_code_disables_2fa_and_takes_the_other_codes_with_it(
    app: App, clock: Clock, db: str
) -> None:
    uid = await make_user(app.deps, "trader", totp_secret=SECRET)
    codes = await codes_for(app, "trader", clock)
    first, token = await with_totp(app, "trader", clock)
    async with first, await Client.connect(app.url) as c:
        assert (await c.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
        assert (await c.call("Disable2FA", {"Code": "zzzz-zzzz-zzzz"})).o == refusal(20, WRONG_CODE)
        assert (await c.call("Disable2FA", {"Code": codes[5]})).o == OK
        assert (await c.call("GetRecoveryCodesLeft", {})).o == {"Left": 0}
    assert await sql(db, "SELECT digest FROM recovery_codes WHERE user_id = ?", uid) == []
    assert (await login(app, "trader"))["Requires2FA"] is False


# -- ResetUser2FA ---------------------------------------------------------------------------------


async def test_an_operator_resets_a_users_2fa_ending_its_sessions_with_mail_and_audit(
    app: App, clock: Clock
) -> None:
    uid = await make_user(app.deps, "trader", totp_secret=SECRET)
    await make_user(app.deps, "op", permissions=["Operator"])
    await codes_for(app, "trader", clock)
    held, _ = await with_totp(app, "trader", clock)
    async with held, await logged_in(app, "op") as op:
        assert (await op.call("ResetUser2FA", {"UserId": uid})).o == OK
        event = await next_event(held)
        assert event.o == {"Reason": "ForcedLogoff"}
        assert (await op.call("ResetUser2FA", {"UserId": uid})).o == refusal(
            101, "Two-factor authentication is not enabled for this user"
        )
    assert (await login(app, "trader"))["Requires2FA"] is False
    async with await logged_in(app, "trader") as c:
        assert (await c.call("GetRecoveryCodesLeft", {})).o == {"Left": 0}
    rows = await app.deps.store.audit_rows(user="trader", limit=None, oldest_first=True)
    reset = [r for r in rows if r.action == "2fa-reset"]
    assert len(reset) == 1 and reset[0].target_id == uid and reset[0].actor_id != uid
    subjects = [m["msg"]["Subject"] for m in await mails(app, 2)]
    assert "Two-factor authentication was reset by support" in subjects


async def test_reset_user_2fa_is_for_fresh_operators_of_the_users_oms_only(
    app: App, clock: Clock
) -> None:
    uid = await make_user(app.deps, "trader", totp_secret=SECRET)
    await make_user(app.deps, "other", permissions=["Trading"])
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "far", permissions=["Operator"], oms=2)
    async with await logged_in(app, "other") as c:
        assert (await c.call("ResetUser2FA", {"UserId": uid})).o == refusal(
            20, "Only an Operator may do this"
        )
    async with await logged_in(app, "far") as c:
        assert (await c.call("ResetUser2FA", {"UserId": uid})).o == refusal(
            104, "User does not exist"
        )
    async with await logged_in(app, "op") as c:
        assert (await c.call("ResetUser2FA", {})).o["errorcode"] == 100
        assert (await c.call("ResetUser2FA", {"UserId": "x"})).o["errorcode"] == 100
        assert (await c.call("ResetUser2FA", {"UserId": [1]})).o["errorcode"] == 100
        assert (await c.call("ResetUser2FA", {"UserId": 99999})).o["errorcode"] == 104
        key = (await c.call("AddUserAPIKey", {"Permissions": ["Operator"]})).o
        token = (await c.call("WebAuthenticateUser", {"UserName": "op", "Password": PASSWORD})).o[
            "SessionToken"
        ]
    async with await Client.connect(app.url) as by_key:
        assert (await by_key.call("AuthenticateUser", key_login(key, 1))).o["Authenticated"]
        assert (await by_key.call("ResetUser2FA", {"UserId": uid})).o == KEY_SESSION
    async with await Client.connect(app.url) as resumed:
        assert (await resumed.call("WebAuthenticateUser", {"SessionToken": token})).o[
            "Authenticated"
        ]
        assert (await resumed.call("ResetUser2FA", {"UserId": uid})).o == refusal(20, CONFIRM)
    assert (await login(app, "trader"))["Requires2FA"] is True  # nothing changed
    assert "2fa-reset" not in await actions(app, "trader")


async def test_twenty_simultaneous_disable2fa_with_one_recovery_code_disable_once(
    app: App, clock: Clock
) -> None:
    await make_user(app.deps, "trader", totp_secret=SECRET)
    code = (await codes_for(app, "trader", clock))[0]
    first, token = await with_totp(app, "trader", clock)
    conns = [first]
    for _ in range(19):
        c = await Client.connect(app.url)
        assert (await c.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
        conns.append(c)
    try:
        answers = await asyncio.gather(*(c.call("Disable2FA", {"Code": code}) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert [a.o for a in answers].count(OK) == 1, [a.o for a in answers]
    assert (await actions(app, "trader")).count("2fa-disabled") == 1
