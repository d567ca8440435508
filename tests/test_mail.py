"""SPEC section 5, the outbox: mail is stored before the answer and retried until delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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
    new = tmp_path / "mail" / "new"
    assert not new.exists() or not list(new.iterdir())
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


async def test_a_single_node_takes_back_a_dead_process_claims_and_tmp_leftovers_at_start(
    tmp_path: Path, clock: Clock
) -> None:
    """SPEC 6a: mail a dead process had claimed goes out at once after a restart (not after its
    120 s lease), once; the files it left half-written in Maildir/tmp (plain links) are gone."""
    import socket
    import subprocess
    import sys

    settings = settings_for(tmp_path)  # SQLite, the default lease (120 s)
    assert settings.mail_lease_seconds == 120
    app = App(settings, clock=clock, login_delay=0)
    await app.start()
    assert app.outbox is not None
    await app.outbox.stop()  # this process will "die" holding claims
    for n in range(3):
        await make_user(app.deps, f"u{n}")
        async with await Client.connect(app.url) as c:
            assert (await c.call("ResetPassword", {"UserName": f"u{n}"})).ok
    await app.resets.drain()
    claimed = await app.deps.store.claim_mail(clock(), settings.mail_lease_seconds, 10)
    assert len(claimed) == 3
    await app.stop()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = socket.gethostname()
    tmp = tmp_path / "mail" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    leftover = tmp / f"1.oms-auth-{claimed[0].id}.P{dead.stdout.strip()}.{host}"
    leftover.write_text("To: u0@example.test\n\nhttp://x/reset?UserId=1&PendingCode=secret\n")
    other = tmp / f"1.oms-auth-99.P{dead.stdout.strip()}.another-host"  # not ours to touch
    other.write_text("x")
    again = App(settings, clock=clock, login_delay=0)
    await again.start()
    try:
        delivered = await wait_for_mail(tmp_path / "mail", 3, timeout=5)
        await asyncio.sleep(0.3)
        assert len(list((tmp_path / "mail" / "new").iterdir())) == len(delivered) == 3
        assert not leftover.exists() and other.exists()
        assert {parse_mail(p)["to"] for p in delivered} == {f"u{n}@example.test" for n in range(3)}
    finally:
        await again.stop()


async def test_a_second_serve_on_one_sqlite_store_is_refused(tmp_path: Path) -> None:
    from oms_auth.store import StoreError

    settings = settings_for(tmp_path)
    first = App(settings, login_delay=0)
    await first.start()
    try:
        with pytest.raises(StoreError, match="another oms-auth serve is using"):
            await App(settings, login_delay=0).start()
        done = oms_auth(tmp_path, "serve", "--port", "0", "--db", settings.db, check=False)
        assert done.returncode == 2 and "another oms-auth serve is using" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        await first.stop()
    second = App(settings, login_delay=0)  # the lock went with the first
    await second.start()
    await second.stop()
