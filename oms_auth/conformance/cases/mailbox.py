"""The users and links the reset and account cases need: a user the run invites for itself,
the reset target, and the links read from the Maildir the server delivers to."""

from __future__ import annotations

import asyncio
import email
import re
from email import policy
from typing import Any

from ..kit import Failure, Options, Skip, expect
from ..probe import Probe
from .checks import check_success, missing_name

__all__ = ["NEW_USER_PASSWORD", "invited_user", "mailed_link", "run_target"]


NEW_USER_PASSWORD = "Conformance-Pass9"


async def invited_user(options: Options, p: Probe) -> tuple[int, str]:
    """A user made for this case: CreateUser as the Operator, its invitation read from the
    Maildir, its first password set by ResetPassword2. Every run makes its own, so runs repeat
    against one server; the user's name and UserId."""
    if options.maildir is None:
        raise Skip("needs --mail maildir:PATH")
    await p.login(options.operator, "operator")
    name = missing_name()
    address = f"{name}@example.test"
    before = _mail_files(options)
    created = await p.call("CreateUser", {"UserName": name, "Email": address})
    user_id = created["o"].get("UserId") if isinstance(created["o"], dict) else None
    if not isinstance(user_id, int):
        raise Failure(f"CreateUser did not answer a UserId: {created['o']!r}")
    linked, code, _ = await _link_mailed(options, p, before, to=address)
    expect(linked == user_id, "the invitation's link names another user")
    async with Probe(options, p.evidence) as anonymous:
        refused = await anonymous.call("AuthenticateUser", {"UserName": name, "Password": "x"})
        expect(refused["o"].get("Authenticated") is False, "an invited user logged in")
        payload = {"UserId": str(user_id), "PendingCode": code, "Password": NEW_USER_PASSWORD}
        check_success(await anonymous.call("ResetPassword2", payload))
    return user_id, name


async def mailed_link(options: Options, p: Probe, *, fresh: bool = False) -> tuple[int, str, str]:
    """The target's latest reset link: asked for as the Operator (unless this run already has
    one and ``fresh`` is not asked) and read from the Maildir."""
    if options.maildir is None:
        raise Skip("needs --mail maildir:PATH")
    await run_target(options, p)
    await p.login(options.operator, "operator")
    if options.latest_link is not None and not fresh:
        p.note("@ reusing this run's latest link for the target")
        return options.latest_link
    options.latest_link = await _request_link(options, p)
    return options.latest_link


async def _request_link(options: Options, p: Probe) -> tuple[int, str, str]:
    target = await run_target(options, p)
    # The target's id, so a late message of another case (another user's link) is passed over.
    info = (await p.call("GetUserInfo", {"UserName": target}))["o"]
    user_id = info.get("UserId") if isinstance(info, dict) else None
    before = _mail_files(options)
    check_success(await p.call("ResetPassword", {"UserName": target}))
    return await _link_mailed(options, p, before, user_id=user_id)


async def run_target(options: Options, p: Probe) -> str:
    """The user the reset cases mail links to: ``--target``, else one this run creates (with a
    security question, so the lockout case has one to answer wrongly)."""
    if options.target:
        return options.target
    if options.own_target is None:
        _, name = await invited_user(options, p)
        async with Probe(options, p.evidence) as own:
            await own.login((name, NEW_USER_PASSWORD), "the run's own target")
            question = [{"Question": "Conformance question?", "Answer": "conformance answer"}]
            payload = {"Password": NEW_USER_PASSWORD, "Questions": question}
            check_success(await own.call("SetSecurityQuestions", payload))
        options.own_target = name
        p.note(f"@ this run's own reset target: {name}")
    return options.own_target


def _mail_files(options: Options) -> set[Any]:
    assert options.maildir is not None
    new = options.maildir / "new"
    return set(new.iterdir()) if new.exists() else set()


async def _link_mailed(
    options: Options,
    p: Probe,
    before: set[Any],
    to: str | None = None,
    user_id: object = None,
) -> tuple[int, str, str]:
    """The link of the first message (to ``to``, and for ``user_id``, when given) that arrived
    since ``before`` and still holds a live code. A message an earlier request queued can arrive
    after ``before`` (its delivery lagged): its code was voided by the newer request, so it is
    passed over."""
    seen: set[Any] = set(before)
    for _ in range(int(options.timeout * 20)):
        for path in sorted(_mail_files(options) - seen):
            seen.add(path)
            found = _link_in(path, to)
            if found is None or (isinstance(user_id, int) and int(found[2]) != user_id):
                continue
            answer = await p.call("GetUserIdForPasswordSet", {"PendingCode": found[3]})
            if isinstance(answer["o"], dict) and "UserId" in answer["o"]:
                p.note(f"@ mail with link {found[1]}")
                return int(found[2]), found[3], found[1]
            p.note("@ passed over an older message whose code a newer request voided")
        await asyncio.sleep(0.05)
    raise Failure("no email with a live reset link arrived in the Maildir")


def _link_in(path: Any, to: str | None) -> re.Match[str] | None:
    """The reset link in a Maildir message (to ``to``, when given), else None."""
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    if to is not None and msg["To"] != to:
        return None
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return re.search(r"(\S+/reset\?UserId=(\d+)&PendingCode=([0-9A-Za-z-]+))", text)
