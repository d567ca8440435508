"""No password, code, answer, TOTP secret or session token ever reaches a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from oms_auth.app import App
from oms_auth.logs import redact, request_context, setup_logging
from protocol.client import Client
from protocol.messages import AuthenticateUserRequest, PingReply

from .helpers import PASSWORD, Clock, make_user, parse_mail, settings_for, wait_for_mail

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream)
    try:
        yield stream
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


@pytest.mark.parametrize(
    "line",
    [
        "Password=hunter2!",
        '{"Password": "hunter2!"}',
        "{'SessionToken': 'abc'}",
        "code 3b0e7a4e-1234-4abc-8def-0123456789ab in link",
        "token Zmg2jWQ8z4FCWBX-5fTHILIW0X5jwSlqocRuN7mi49k",
        "totp JBSWY3DPEHPK3PXP",
        "hash $argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA",
    ],
)
def test_secret_shapes_are_redacted(line: str) -> None:
    out = redact(line)
    for secret in ("hunter2", "abc'", "3b0e7a4e", "Zmg2jWQ8", "JBSWY3DP", "aGFzaA"):
        assert secret not in out


def test_a_requests_own_secrets_are_redacted_in_any_case() -> None:
    with request_context(["Rex the Dog"]):
        assert redact("answer REX THE DOG given") == "answer [secret] given"
    assert redact("errorcode=104 i=3") == "errorcode=104 i=3"


async def test_secrets_sent_through_every_path_never_reach_the_log(
    tmp_path: Path, clock: Clock, log_stream: io.StringIO, db: str
) -> None:
    app = App(settings_for(tmp_path, db=db), clock=clock, login_delay=0)
    await app.start()

    async def boom(conn: object, req: AuthenticateUserRequest) -> PingReply:
        raise RuntimeError(f"could not use {req.Password!r} for {req.UserName}")

    app.functions.add("Boom", AuthenticateUserRequest, boom)
    secrets = [PASSWORD, "Wrong-Guess-77", "Fresh-Start42", "Rex the Dog", SECRET]
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        await make_user(app.deps, "bob", totp_secret=SECRET, question="Pet?", answer="Rex the Dog")
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "bob", "Password": "Wrong-Guess-77"})
            await c.call("AuthenticateUser", {"UserName": "bob", "Password": PASSWORD})
            code = pyotp.TOTP(SECRET).at(int(clock()))
            reply = await c.call("Authenticate2FA", {"Code": code})
            token = reply.o["SessionToken"]
            secrets += [token]
            await c.call("WebAuthenticateUser", {"SessionToken": token})
            await c.call("Boom", {"UserName": "bob", "Password": "Wrong-Guess-77"})
            await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
            await c.call("ResetPassword", {"UserName": "bob"})
            mail = parse_mail((await wait_for_mail(tmp_path / "mail", 1))[0])
            secrets += [mail["code"]]
            base = {"UserId": mail["user_id"], "PendingCode": mail["code"]}
            await c.call("GetRequirementsForPasswordSet", {"PendingCode": mail["code"]})
            await c.call(
                "ResetPassword2", {**base, "Password": "x", "SecurityQuestionAnswer": "no"}
            )
            await c.call(
                "ResetPassword2",
                {
                    **base,
                    "Password": "Fresh-Start42",
                    "SecurityQuestionAnswer": "Rex the Dog",
                    "Code": "1",
                },
            )
            code = pyotp.TOTP(SECRET).at(int(clock()))
            secrets.append(code)
            await c.call(
                "ResetPassword2",
                {
                    **base,
                    "Password": "Fresh-Start42",
                    "SecurityQuestionAnswer": "Rex the Dog",
                    "Code": code,
                },
            )
            await c.raw('{"m":0,"i":1,"n":"ResetPassword2","o":"{\\"Password\\": 5}"}')
    finally:
        await app.stop()
    log = log_stream.getvalue()
    lines = log.strip().splitlines()
    assert len(lines) > 10
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("exception" in r and "RuntimeError" in r["exception"] for r in records)
    assert any(r.get("cid") and "ResetPassword2" in r["message"] for r in records)
    for secret in secrets:
        assert secret not in log, secret
        assert secret.casefold() not in log.casefold(), secret
