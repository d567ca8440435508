"""The account functions around a reset: CreateUser, TOTP enrolment, security questions,
ForceUserLogoff, GetLockedUsers, and the user record GetUserInfo answers (docs/protocol.md,
"Functions")."""

from __future__ import annotations

import re

from ..kit import Options, expect
from ..probe import Probe
from ..registry import case
from .checks import check_refusal, check_success, missing_name
from .mailbox import NEW_USER_PASSWORD, invited_user

__all__: list[str] = []


@case("create-user-invitation", "CreateUser mails a link that sets the user's first password")
async def _create_user(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
        async with Probe(options, evidence) as q:
            reply = await q.login((name, NEW_USER_PASSWORD), "invited user")
            expect(reply.get("User", {}).get("UserName") == name, "not the invited user")
        async with Probe(options, evidence) as anonymous:
            check_refusal(
                await anonymous.call("CreateUser", {"UserName": name, "Email": "x@example.test"}),
                1,
                20,
            )


@case("totp-enrolment", "EnableGoogle2FA is active after Authenticate2FA; Disable2FA ends it")
async def _totp_enrolment(options: Options, evidence: list[str]) -> None:
    import pyotp

    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await c.login((name, NEW_USER_PASSWORD), "invited user")
        enrolled = (await c.call("EnableGoogle2FA", {}))["o"]
        uri = enrolled.get("GoogleQRCode", "") if isinstance(enrolled, dict) else ""
        expect(uri.startswith("otpauth://totp/"), f"no otpauth URI: {enrolled!r}")
        secret = enrolled["ManualCode"]
        async with Probe(options, evidence) as other:
            first = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(first["o"].get("Requires2FA") is False, "TOTP was active before its first code")
        done = (await c.call("Authenticate2FA", {"Code": pyotp.TOTP(secret).now()}))["o"]
        expect(done.get("Authenticated") is True, f"the first code was refused: {done!r}")
        expect((done.get("User") or {}).get("Use2FA") is True, "Use2FA is not true after it")
        async with Probe(options, evidence) as other:
            second = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(second["o"].get("Requires2FA") is True, "a login does not ask for the code")
        check_success(await c.call("Disable2FA", {}))  # right after a 2FA on this connection
        async with Probe(options, evidence) as other:
            third = await other.call(
                "AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD}
            )
            expect(third["o"].get("Requires2FA") is False, "TOTP still asked after Disable2FA")


@case(
    "security-questions",
    "SetSecurityQuestions needs the password; GetSecurityQuestions shows texts",
)
async def _security_questions(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await c.login((name, NEW_USER_PASSWORD), "invited user")
        questions = [{"Question": "Conformance question?", "Answer": "conformance answer"}]
        wrong = {"Password": "Not-The-Password1", "Questions": questions}
        check_refusal(await c.call("SetSecurityQuestions", wrong), 1, 20)
        check_refusal(
            await c.call("SetSecurityQuestions", {"Password": NEW_USER_PASSWORD, "Questions": []}),
            1,
            100,
        )
        ok = {"Password": NEW_USER_PASSWORD, "Questions": questions}
        check_success(await c.call("SetSecurityQuestions", ok))
        shown = (await c.call("GetSecurityQuestions", {}))["o"]
        expect(shown == {"Questions": ["Conformance question?"]}, f"not the texts: {shown!r}")


@case("force-user-logoff", "ForceUserLogoff ends every session of the user with a LogoutEvent")
async def _force_logoff(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, name = await invited_user(options, p)
        async with Probe(options, evidence) as a, Probe(options, evidence) as b:
            for c in (a, b):
                await c.login((name, NEW_USER_PASSWORD), "invited user")
            check_success(await p.call("ForceUserLogoff", {"UserId": user_id}))
            for c in (a, b):
                event = await c.event()
                expect(event.get("n") == "LogoutEvent", f"no LogoutEvent: {event!r}")
                check_refusal(await c.call("GetUserInfo", {}), 1, 20)


@case("locked-users", "GetLockedUsers answers the Operator a list; others are refused with 20")
async def _locked_users(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.login(options.operator, "operator")
        listed = await p.call("GetLockedUsers", {})
        expect(listed["m"] == 1 and isinstance(listed["o"], list), "GetLockedUsers: no list")
        for user in listed["o"]:
            keys = {"UserId", "UserName", "Email", "LockedDateTime", "LockedUntil"}
            expect(keys <= set(user), f"a locked user lacks {sorted(keys - set(user))}")
    async with Probe(options, evidence) as anonymous:
        check_refusal(await anonymous.call("GetLockedUsers", {}), 1, 20)


# The APEX user record as the official SDKs parse it: every key, with its type.
RECORD: dict[str, type] = {
    "UserId": int,
    "UserName": str,
    "Email": str,
    "PasswordHash": str,
    "PendingEmailCode": str,
    "EmailVerified": bool,
    "AccountId": int,
    "DateTimeCreated": str,
    "AffiliateId": int,
    "RefererId": int,
    "OMSId": int,
    "Use2FA": bool,
    "Salt": str,
    "PendingCodeTime": str,
    "Locked": bool,
    "LockedTime": str,
    "NumberOfFailedAttempt": int,
    "MarginBorrowerEnabled": bool,
    "MarginAcquisitionHalt": bool,
    "OperatorId": int,
}
TIMES = ("DateTimeCreated", "PendingCodeTime", "LockedTime")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@case(
    "user-record",
    "GetUserInfo answers the APEX record (every key typed, no hash or salt) of the user named",
)
async def _user_record(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        reply = await p.login(options.trader or options.operator, "trader")
        o = (await p.call("GetUserInfo", {}))["o"]
        expect(isinstance(o, dict), "GetUserInfo did not answer a record")
        missing = sorted(k for k, kind in RECORD.items() if type(o.get(k)) is not kind)
        expect(not missing, f"keys missing or of another type: {missing}")
        expect((o["PasswordHash"], o["Salt"]) == ("", ""), "a hash or salt is shown")
        bad_times = [k for k in TIMES if not ISO_UTC.fullmatch(o[k])]
        expect(not bad_times, f"not ISO 8601 UTC: {bad_times}")
        by_name = (await p.call("GetUserInfo", {"UserName": o["UserName"]}))["o"]
        expect(by_name.get("UserId") == reply.get("UserId"), "by UserName: not the user named")
        nobody = await p.call("GetUserInfo", {"UserName": missing_name()})
        check_refusal(nobody, 1, 104)  # never the caller instead
