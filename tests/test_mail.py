"""SPEC section 5, the outbox: mail is stored before the answer and retried until delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

from oms_auth.app import App
from protocol.client import Client

from .helpers import (
    Clock,
    eventually,
    is_postgres,
    make_user,
    oms_auth,
    parse_mail,
    settings_for,
    wait_for_mail,
)


async def test_delivery_is_retried_with_backoff_until_the_transport_works(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the Maildir's parent should be")
    maildir = blocker / "mail"
    app = App(settings_for(tmp_path, db=db, mail=f"maildir:{maildir}"), clock=clock, login_delay=0)
    await app.start()
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        await make_user(app.deps, "alice")
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": "Correct-Horse9"})
            assert (await c.call("ResetPassword", {"UserName": "alice"})).o["result"] is True
        await eventually(lambda: app.metrics.events["mail_retried"] == 1)  # the first try fails
        assert (await app.deps.store.mail_counts())["queued"] == 1
        blocker.unlink()
        clock.advance(app.settings.mail_retry_seconds)
        app.outbox.wake()
        (path,) = await wait_for_mail(maildir, 1)
        assert parse_mail(path)["to"] == "alice@example.test"
        sent = {"queued": 0, "sent": 1, "failed": 0}

        async def delivered() -> bool:  # the file lands a moment before the row is marked
            return await app.deps.store.mail_counts() == sent

        await eventually(delivered)
    finally:
        await app.stop()


async def test_a_message_that_keeps_failing_is_marked_failed(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("")
    app = App(
        settings_for(tmp_path, db=db, mail=f"maildir:{blocker / 'mail'}", mail_max_attempts=3),
        clock=clock,
        login_delay=0,
    )
    await app.start()
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": "Correct-Horse9"})
            await c.call("ResetPassword", {"UserName": "op"})
        for _ in range(3):
            clock.advance(3600)
            await app.outbox.deliver_due()
        assert (await app.deps.store.mail_counts())["failed"] == 1
        actions = [r.action for r in await app.deps.store.audit_rows()]
        assert "reset-mail-failed" in actions
    finally:
        await app.stop()


async def test_queued_mail_survives_a_restart_and_is_delivered_once(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    settings = settings_for(tmp_path, db=db)
    app = App(settings, clock=clock, login_delay=0)
    await app.start()
    await make_user(app.deps, "op", permissions=["Operator"])
    await app.outbox.stop()  # the process "dies" before delivering
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": "Correct-Horse9"})
        assert (await c.call("ResetPassword", {"UserName": "op"})).o["result"] is True
    await app.stop()
    assert not (tmp_path / "mail" / "new").exists()
    again = App(settings, clock=clock, login_delay=0)
    await again.start()
    try:
        await wait_for_mail(tmp_path / "mail", 1)
        await asyncio.sleep(0.2)
        assert len(list((tmp_path / "mail" / "new").iterdir())) == 1
    finally:
        await again.stop()


def test_the_audit_command_prints_the_trail_without_secrets(tmp_path: Path, db: str) -> None:
    def run(*args: str) -> str:
        return oms_auth(tmp_path, *args, "--db", db).stdout

    run("user", "add", "--username", "alice", "--email", "a@x.test", "--password", "Pw-secret-1")

    async def reset() -> None:
        # The key the commands made in tmp_path, whichever store.
        key = tmp_path / ("oms-auth.key" if is_postgres(db) else "oms-auth.sqlite3.key")
        app = App(settings_for(tmp_path, db=db, secret_key_file=str(key)), login_delay=0)
        await app.start()
        try:
            async with await Client.connect(app.url) as c:
                await c.call("AuthenticateUser", {"UserName": "alice", "Password": "Pw-secret-1"})
                await c.call("ResetPassword", {"UserName": "alice"})
            await wait_for_mail(tmp_path / "mail", 1)
            await asyncio.sleep(0.1)
        finally:
            await app.stop()

    asyncio.run(reset())
    trail = run("audit", "--user", "alice")
    for action in ("user-created", "login", "reset-requested", "reset-emailed"):
        assert action in trail
    assert "Pw-secret-1" not in trail
    assert len(run("audit", "--limit", "2").strip().splitlines()) == 2
