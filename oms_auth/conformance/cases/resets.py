"""Resets: who may start one, the code and its link, ResetPassword2's checks, lockout
(docs/rules.md, "Who may start a reset", "The code and the link", "ResetPassword2: the checks
in order", "Lockout")."""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
import uuid
from typing import Any

from ..kit import Options, Skip, expect
from ..probe import Probe
from ..registry import case
from .checks import check_refusal, check_success, missing_name
from .mailbox import mailed_link

__all__: list[str] = []


async def refuses_missing_user(p: Probe, code: int, detail: str) -> None:
    """ResetPassword on p's session, for a user that does not exist, is refused with ``code``."""
    check_refusal(await p.call("ResetPassword", {"UserName": missing_name()}), 1, code, detail)


@case("reset-self-service-uniform", "self-service ResetPassword answers success for anyone")
async def _self_service(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        a = await p.call("ResetPassword", {"UserName": missing_name()})
        check_success(a)
        if options.target:
            b = await p.call("ResetPassword", {"UserName": options.target})
            expect(
                b["o_raw"] == a["o_raw"], "an existing user's answer differs from a missing user's"
            )


@case("reset-operator", "an Operator asking for a missing user gets 104 Username does not exist")
async def _operator(options: Options, evidence: list[str]) -> None:
    # Its success for a real user is shown by reset-link, which mails the target: the server
    # allows few requests per user and hour, so this case does not spend one.
    async with Probe(options, evidence) as p:
        await p.login(options.operator, "operator")
        await refuses_missing_user(p, 104, "Username does not exist")


@case("reset-trading", "a Trading user resets itself; a user outside its accounts is 20")
async def _trading(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.login(options.trader, "trader")
        await refuses_missing_user(
            p, 20, "You do not have permission to request password reset for this user"
        )
        assert options.trader is not None
        check_success(await p.call("ResetPassword", {"UserName": options.trader[0]}))


@case("unlock-needs-operator", "UnlockUser without an Operator session is 20")
async def _unlock(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(await p.call("UnlockUser", {"UserId": 1}), 1, 20)


INVALID_KEY = "Invalid password recovery key"


TOTP_REQUIRED = "Time-based One Time Password authentication is required to log in with this user"


@case("reset2-payload", "ResetPassword2 without a password is 100, before the code is looked at")
async def _reset2_payload(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call("ResetPassword2", {"UserId": 1, "PendingCode": "x"}),
            1,
            100,
            "Invalid value provided for Password",
        )


@case("reset2-invalid-code", "an unknown PendingCode is 104 in every function that takes one")
async def _invalid_code(options: Options, evidence: list[str]) -> None:
    code = str(uuid.uuid4())
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call(
                "ResetPassword2", {"UserId": 1, "Password": "Abcdefgh1!x", "PendingCode": code}
            ),
            1,
            104,
            INVALID_KEY,
        )
        for name in ("GetUserIdForPasswordSet", "GetRequirementsForPasswordSet"):
            check_refusal(await p.call(name, {"PendingCode": code}), 1, 104, INVALID_KEY)


@case("reset-link", "the emailed link's code looks up the user and is not used up by reading it")
async def _link(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, code, link = await mailed_link(options, p)
        for _ in range(2):
            answer = await p.call("GetUserIdForPasswordSet", {"PendingCode": code})
            expect(answer["o"] == {"UserId": user_id}, f"expected UserId {user_id}")
        await asyncio.to_thread(_fetch, link)  # what a mail scanner does
        p.note(f"> GET {link.split('?')[0]}?... (as a mail scanner would)")
        req = await p.call("GetRequirementsForPasswordSet", {"PendingCode": code})
        keys = {
            "UserId",
            "SecurityQuestion",
            "Requires2FA",
            "TwoFAType",
            "PasswordRules",
            "ExpiresAt",
        }
        expect(keys <= set(req["o"]), f"requirements lack {sorted(keys - set(req['o']))}")
        weak = await p.call(
            "ResetPassword2", {"UserId": str(user_id), "Password": "short", "PendingCode": code}
        )
        check_refusal(weak, 1, *_first_refusal(req["o"]))


def _first_refusal(requirements: dict[str, Any]) -> tuple[int, str | None]:
    if requirements.get("SecurityQuestion"):
        return 20, "Invalid answer provided for security question"
    if requirements.get("Requires2FA"):
        return 20, TOTP_REQUIRED
    return 100, None


def _fetch(link: str) -> None:
    try:
        urllib.request.urlopen(link, timeout=10).read()
    except OSError:
        pass  # the page may live elsewhere; the code must survive either way


@case("reset-newer-voids-older", "a newer reset code voids the older one")
async def _newer(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, first, _ = await mailed_link(options, p)
        _, second, _ = await mailed_link(options, p, fresh=True)
        check_refusal(
            await p.call("GetUserIdForPasswordSet", {"PendingCode": first}), 1, 104, INVALID_KEY
        )
        expect(
            "UserId" in (await p.call("GetUserIdForPasswordSet", {"PendingCode": second}))["o"],
            "the newer code failed",
        )


@case("reset-lockout", "five wrong answers lock the target (101); an Operator unlocks it")
async def _lockout(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, code, _ = await mailed_link(options, p)
        req = (await p.call("GetRequirementsForPasswordSet", {"PendingCode": code}))["o"]
        if not req.get("SecurityQuestion"):
            raise Skip("the target has no security question to answer wrongly")
        payload = {
            "UserId": user_id,
            "Password": "Conformance-Pass9",
            "PendingCode": code,
            "SecurityQuestionAnswer": "certainly-not-" + secrets.token_hex(4),
        }
        for _ in range(5):
            check_refusal(
                await p.call("ResetPassword2", payload),
                1,
                20,
                "Invalid answer provided for security question",
            )
        check_refusal(
            await p.call("ResetPassword2", payload),
            1,
            101,
            "Account has been locked for 30 minutes",
        )
        check_success(await p.call("UnlockUser", {"UserId": user_id}))
        check_refusal(
            await p.call("ResetPassword2", payload),
            1,
            20,
            "Invalid answer provided for security question",
        )
        check_success(await p.call("UnlockUser", {"UserId": user_id}))  # leave it unlocked
