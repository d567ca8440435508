"""docs/operations.md, "Mail": the outbox: mail is stored before the answer and retried until
delivered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from oms_auth.app import App
from oms_auth.crypto import mail_context
from protocol.client import Client

from .helpers import (
    Clock,
    eventually,
    is_postgres,
    make_user,
    oms_auth,
    parse_mail,
    pg_connect,
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


_OUTBOX_ROW = "SELECT created_at, due_at, attempts, state, sealed FROM outbox"


@contextlib.asynccontextmanager
async def outbox_reader(db: str) -> AsyncIterator[Callable[[], Awaitable[tuple[Any, ...]]]]:
    """Reads the outbox's one message over one connection of its own (hundreds of reads)."""
    if is_postgres(db):
        conn = await pg_connect(db)
        try:
            yield lambda: conn.fetchrow(_OUTBOX_ROW)
        finally:
            await conn.close()
        return
    import aiosqlite

    async with aiosqlite.connect(db) as lite:

        async def read() -> tuple[Any, ...]:
            (row,) = await lite.execute_fetchall(_OUTBOX_ROW)
            return tuple(row)

        yield read


async def test_failing_mail_is_retried_with_backoff_capped_at_15_minutes_for_mail_max_age(
    tmp_path: Path, clock: Clock, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "oms_auth")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the Maildir's parent should be: every delivery fails")
    mail = f"maildir:{blocker / 'mail'}"
    app = App(settings_for(tmp_path, db=db, mail=mail, mail_retry_seconds=5), clock=clock)
    await app.start()
    try:
        # The test alone delivers, pass by pass on its clock: no background pass races it.
        assert app.outbox is not None
        worker = app.outbox
        await worker.stop()
        op = await make_user(app.deps, "op", permissions=["Operator"])
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": "Correct-Horse9"})
            assert (await c.call("ResetPassword", {"UserName": "op"})).o["result"] is True
        async with outbox_reader(db) as outbox_row:
            created, _, _, _, sealed = await outbox_row()
            assert sealed is not None
            opened = app.deps.sealer.open(sealed, mail_context(op, "reset"))
            code = msgspec.json.decode(opened)["code"]
            max_age = app.settings.mail_max_age
            assert max_age == 72 * 3600  # the default
            delays, state = [], "queued"
            while state == "queued":
                _, due, _, _, _ = await outbox_row()
                clock.now = max(clock.now, due)
                tried_at = clock.now
                assert await worker.deliver_due()
                _, due, attempts, state, _ = await outbox_row()
                if state == "queued":
                    assert tried_at < created + max_age  # still trying before its time is up
                    delays.append(due - tried_at)
            _, _, _, state, sealed = await outbox_row()
        assert tried_at >= created + max_age  # given up only once mail_max_age has passed
        assert attempts > 12 and len(delays) == attempts - 1
        assert delays[:3] == pytest.approx([5, 10, 20])
        assert max(delays) == pytest.approx(15 * 60)  # the cap
        assert all(a < b + 1e-3 for a, b in zip(delays, delays[1:-1], strict=False))  # backing off
        assert state == "failed" and sealed is None
        assert app.metrics.events["mail_retried"] == attempts - 1
        assert "oms_auth_mail_failed_total 1\n" in await metrics(app)
        actions = [r.action for r in await app.deps.store.audit_rows()]
        assert "reset-mail-failed" in actions
        gave_up = [r for r in caplog.records if "failed for good" in r.getMessage()]
        assert len(gave_up) == 1
        assert code not in caplog.text and "PendingCode" not in caplog.text
    finally:
        await app.stop()


async def metrics(app: App) -> str:
    def get() -> str:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    return await asyncio.to_thread(get)


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
    """docs/rules.md, "Concurrency: what holds ..." (after a crash): mail a dead process had claimed
    goes out at once after a restart (not after its 120 s lease), once; the files it left
    half-written in Maildir/tmp (plain links) are gone."""
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


# -- templates: brand, support, locale, an exchange's own --------------------------------------


def templates_render(t: Any, kind: str, **public: object) -> dict[str, object]:
    secret = (
        {"link": "https://auth.example/reset?UserId=1&PendingCode=c0de"}
        if kind
        in (
            "reset",
            "invite",
        )
        else {}
    )
    import email
    from email import policy

    out = t.render(
        kind,
        {"username": "alice", **public},
        secret,
        sender="x@example.test",
        recipient="alice@example.test",
    )
    # What a mail reader makes of the bytes: the message must parse without defects.
    msg = email.message_from_bytes(out.data, policy=policy.default)
    assert not msg.defects and all(not part.defects for part in msg.walk())
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return {"subject": msg["Subject"], "text": text, "html": html, "lang": msg["Content-Language"]}


@pytest.mark.parametrize(
    ("kind", "public", "en", "de"),
    [
        ("reset", {"expires_at": 1_800_000_000}, "Reset your Acme password", "zurücksetzen"),
        ("invite", {"expires_at": 1_800_000_000}, "new Acme account", "neues Konto"),
        (
            "password-changed",
            {"changed_at": 1_800_000_000, "api_keys": "revoked"},
            "changed",
            "geändert",
        ),
        ("password-changed", {"changed_at": 1_800_000_000, "first": True}, "was set", "festgelegt"),
        ("2fa-enabled", {"at": 1_800_000_000}, "turned on", "eingeschaltet"),
        ("2fa-disabled", {"at": 1_800_000_000}, "turned off", "ausgeschaltet"),
        ("questions-set", {"at": 1_800_000_000}, "security questions", "Sicherheitsfragen"),
        ("forced-logoff", {"at": 1_800_000_000}, "logged off", "abgemeldet"),
    ],
)
def test_every_message_ships_in_english_and_german_with_the_brand_and_support(
    kind: str, public: dict[str, object], en: str, de: str
) -> None:
    from oms_auth.mail.templates import Templates

    t = Templates(
        brand="Acme", support_email="help@acme.example", support_url="https://acme.example/help"
    )
    english = templates_render(t, kind, **public)
    assert en in str(english["subject"]) and english["lang"] == "en"
    for part in ("text", "html"):
        assert "Acme" in str(english[part]) and "help@acme.example" in str(english[part])
        assert "https://acme.example/help" in str(english[part])
    german = templates_render(t, kind, locale="de", **public)
    assert de in str(german["subject"]) + str(german["text"]) and german["lang"] == "de"
    assert "Support" in str(german["text"])
    if "expires_at" in public:
        assert "2027-01-15 08:00 UTC" in str(english["text"])
        assert "15.01.2027, 08:00 UTC" in str(german["text"])
        assert "https://auth.example/reset?UserId=1&PendingCode=c0de" in str(german["text"])
    # A language not shipped (and not a tag at all) falls back to English.
    assert templates_render(t, kind, locale="pt-BR", **public)["subject"] == english["subject"]
    assert templates_render(t, kind, locale="<x>", **public)["subject"] == english["subject"]


def test_an_exchange_replaces_templates_file_by_file_and_html_is_escaped(tmp_path: Path) -> None:
    from oms_auth.mail.templates import Templates

    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "reset.txt").write_text(
        "Subject: {{ brand }}: your reset link\n\nHi {{ username }}: {{ link }}\n"
    )
    t = Templates(str(tmp_path), brand="Acme")
    mine = templates_render(t, "reset", expires_at=1_800_000_000)
    assert mine["subject"] == "Acme: your reset link"
    assert str(mine["text"]).startswith("Hi alice: https://auth.example/reset")
    assert "Choose a new password" in str(mine["html"])  # the shipped HTML still serves
    hostile = templates_render(t, "2fa-enabled", username="<script>x</script>", at=0)
    assert "<script>" not in str(hostile["html"]) and "&lt;script&gt;" in str(hostile["html"])
    with pytest.raises(ValueError, match="not a folder"):
        Templates(str(tmp_path / "missing"))


async def test_a_user_gets_mail_in_its_language(tmp_path: Path, clock: Clock) -> None:
    app = App(
        settings_for(tmp_path, brand_name="Acme", support_email="help@acme.example"),
        clock=clock,
        login_delay=0,
    )
    await app.start()
    try:
        await make_user(app.deps, "op", permissions=["Operator"])
        async with await Client.connect(app.url) as c:
            await c.call("AuthenticateUser", {"UserName": "op", "Password": "Correct-Horse9"})
            made = await c.call(
                "CreateUser", {"UserName": "hans", "Email": "hans@example.test", "Locale": "de"}
            )
            assert made.o["UserId"]
            bad = await c.call(
                "CreateUser", {"UserName": "x", "Email": "x@example.test", "Locale": "not a tag"}
            )
            assert bad.o["errorcode"] == 100 and "Locale" in bad.o["detail"]
        mail = parse_mail((await wait_for_mail(tmp_path / "mail", 1))[0])
        assert mail["msg"]["Subject"] == "Passwort für Ihr neues Konto bei Acme festlegen"
        assert "help@acme.example" in mail["text"] and mail["code"]
    finally:
        await app.stop()


@pytest.mark.parametrize("locale", ["en", "de"])
def test_a_pre_rendered_message_is_the_template_rendered_in_full(locale: str) -> None:
    """Each message fills a shape rendered once; what it gets is exactly what rendering its
    templates for it would give, for every kind and structure, escaping included."""
    from oms_auth.mail.templates import Templates

    t = Templates(brand="Acme <Exchange>", support_email="help@acme.example")
    link = {"link": "https://auth.example/reset?UserId=1&PendingCode=c0de&x=<y>"}
    cases: list[tuple[str, dict[str, object], dict[str, object]]] = [
        ("reset", {"expires_at": 1_800_000_000.5}, link),
        ("invite", {"expires_at": 1_800_000_000.0}, link),
        ("password-changed", {"changed_at": 1_800_000_000, "api_keys": "kept"}, {}),
        ("password-changed", {"changed_at": 1_800_000_000, "first": True}, {}),
        ("2fa-enabled", {"at": 1_800_000_000}, {}),
        ("forced-logoff", {"at": 1_800_000_000}, {}),
    ]
    for kind, extra, secret in cases:
        for name in ("alice", "<b>&\"bob'</b>", "jörg ü"):
            public = {"username": name, "locale": locale, **extra}
            base, _, values = t.values(kind, public, secret, "r@example.test")
            full = t._full(base, locale, values)
            shape = t._shape(base, locale, values)
            assert shape is not False
            assert shape.fill(values, t._fmt(locale)) == full, (kind, name)


def test_a_template_that_transforms_a_value_is_rendered_in_full(tmp_path: Path) -> None:
    from oms_auth.mail.templates import Templates

    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "reset.txt").write_text(
        "Subject: Hi {{ username | upper }}\n\n{{ link }} {{ username[:2] }}\n"
    )
    t = Templates(str(tmp_path))
    msg = templates_render(t, "reset", username="alice", expires_at=0)
    assert msg["subject"] == "Hi ALICE" and "https://auth.example/reset" in str(msg["text"])
    assert str(msg["text"]).rstrip().endswith(" al")
