"""The way back for a user who lost the phone: CreateRecoveryCodes, GetRecoveryCodesLeft, a
login with a recovery code, ResetUser2FA (docs/protocol.md, "Recovery codes and
ResetUser2FA")."""

from __future__ import annotations

from typing import Any

from ..kit import Options, expect
from ..probe import Probe
from ..registry import case
from .checks import check_refusal, check_success
from .mailbox import NEW_USER_PASSWORD, invited_user

__all__: list[str] = []


async def _with_totp(options: Options, c: Probe, name: str) -> str:
    """Log ``c`` in as ``name`` and turn TOTP on there; the secret."""
    import pyotp

    await c.login((name, NEW_USER_PASSWORD), "invited user")
    secret = str((await c.call("EnableGoogle2FA", {}))["o"]["ManualCode"])
    done = (await c.call("Authenticate2FA", {"Code": pyotp.TOTP(secret).now()}))["o"]
    expect(done.get("Authenticated") is True, f"the enrolment's code was refused: {done!r}")
    return secret


async def _second_step(c: Probe, name: str, code: str) -> dict[str, Any]:
    """A password login of ``name`` on ``c``, then Authenticate2FA with ``code``."""
    first = await c.call("AuthenticateUser", {"UserName": name, "Password": NEW_USER_PASSWORD})
    expect(first["o"].get("Requires2FA") is True, "a login does not ask for the second step")
    return dict((await c.call("Authenticate2FA", {"Code": code}))["o"])


@case("recovery-codes", "CreateRecoveryCodes answers 10 codes once; GetRecoveryCodesLeft counts")
async def _recovery_codes(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await c.login((name, NEW_USER_PASSWORD), "invited user")
        check_refusal(await c.call("CreateRecoveryCodes", {}), 1, 101)  # TOTP is off
        expect((await c.call("GetRecoveryCodesLeft", {}))["o"] == {"Left": 0}, "Left is not 0")
    async with Probe(options, evidence) as c:
        await _with_totp(options, c, name)
        made = (await c.call("CreateRecoveryCodes", {}))["o"]
        codes = made.get("RecoveryCodes") if isinstance(made, dict) else None
        expect(
            isinstance(codes, list) and len(set(codes)) == 10, f"not 10 codes: {len(codes or [])}"
        )
        expect((await c.call("GetRecoveryCodesLeft", {}))["o"] == {"Left": 10}, "Left is not 10")
    async with Probe(options, evidence) as anonymous:
        check_refusal(await anonymous.call("GetRecoveryCodesLeft", {}), 1, 20)


@case("recovery-code-login", "a recovery code finishes a login in place of a TOTP code, once")
async def _recovery_login(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        _, name = await invited_user(options, p)
    async with Probe(options, evidence) as c:
        await _with_totp(options, c, name)
        code = (await c.call("CreateRecoveryCodes", {}))["o"]["RecoveryCodes"][0]
    async with Probe(options, evidence) as c:
        done = await _second_step(c, name, code)
        expect(done.get("Authenticated") is True and bool(done.get("SessionToken")), "refused")
        expect((await c.call("GetRecoveryCodesLeft", {}))["o"] == {"Left": 9}, "Left is not 9")
    async with Probe(options, evidence) as c:
        again = await _second_step(c, name, code)
        expect(again.get("Authenticated") is False, "a used recovery code logged in again")


@case("reset-user-2fa", "ResetUser2FA: an Operator turns a user's TOTP off and logs it off")
async def _reset_user_2fa(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        user_id, name = await invited_user(options, p)
        async with Probe(options, evidence) as c:
            await _with_totp(options, c, name)
            check_refusal(await c.call("ResetUser2FA", {"UserId": user_id}), 1, 20)
            check_success(await p.call("ResetUser2FA", {"UserId": user_id}))
            event = await c.event()
            expect(event.get("n") == "LogoutEvent", f"no LogoutEvent: {event!r}")
            check_refusal(await c.call("GetUserInfo", {}), 1, 20)
        check_refusal(await p.call("ResetUser2FA", {"UserId": user_id}), 1, 101)
    async with Probe(options, evidence) as c:
        login = await c.login((name, NEW_USER_PASSWORD), "invited user")
        expect(login.get("Requires2FA") is False, "a login still asks for the TOTP code")
