"""docs/operations.md, "Mail": the SMTP transport, against a real SMTP server (aiosmtpd) started
here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oms_auth.app import App
from oms_auth.mail.smtp import SmtpTransport
from protocol.client import Client

from .helpers import PASSWORD, Clock, eventually, make_user, settings_for, sql


class Inbox:
    """An aiosmtpd handler that refuses the first ``refuse`` messages with a 451, then keeps
    what it gets."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.messages: list[Any] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            return "451 4.3.0 Try again later"
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        self.arrived.set()
        return "250 OK"


def free_port() -> int:
    # aiosmtpd's Controller cannot bind port 0 (it connects to its own port to check it is up).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_smtp(inbox: Inbox, **kwargs: Any) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


async def request_reset(app: App, username: str = "alice") -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, username)
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        assert (await c.call("ResetPassword", {"UserName": username})).o["result"] is True


async def test_the_reset_email_is_delivered_over_smtp(tmp_path: Path, db: str) -> None:
    inbox = Inbox()
    smtp = start_smtp(inbox)
    app = App(settings_for(tmp_path, db=db, mail=f"smtp://127.0.0.1:{smtp.port}"), login_delay=0)
    await app.start()
    try:
        await request_reset(app)
        await asyncio.wait_for(inbox.arrived.wait(), 10)
        (msg,) = inbox.messages
        assert msg["To"] == "alice@example.test" and msg["Message-ID"]
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert "/reset?UserId=" in text and "PendingCode=" in text and "expires at" in text
        assert "<img" not in html and "http" in html  # the link, and no tracking pixel
    finally:
        await app.stop()
        smtp.stop()


async def test_a_server_that_refuses_at_first_gets_the_message_later(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    inbox = Inbox(refuse=2)
    smtp = start_smtp(inbox)
    app = App(
        settings_for(tmp_path, db=db, mail=f"smtp://127.0.0.1:{smtp.port}"),
        clock=clock,
        login_delay=0,
    )
    await app.start()
    try:
        await request_reset(app)
        for attempt in (1, 2):
            await eventually(lambda n=attempt: app.metrics.events["mail_retried"] == n)
            clock.advance(3600)  # past any backoff
            app.outbox.wake()
        await asyncio.wait_for(inbox.arrived.wait(), 10)
        counts = {"queued": 0, "sent": 1, "failed": 0}

        async def delivered() -> bool:
            return await app.deps.store.mail_counts() == counts

        await eventually(delivered)
        assert len(inbox.messages) == 1 and app.metrics.events["mail_retried"] == 2
    finally:
        await app.stop()
        smtp.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_starttls_and_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[str, str]] = []

    def authenticator(
        server: object, session: object, envelope: object, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password == b"mail-pass")

    inbox = Inbox()
    smtp = start_smtp(
        inbox,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    monkeypatch.setenv("OMS_AUTH_SMTP_PASSWORD", "mail-pass")
    uri = f"smtp://relay@127.0.0.1:{smtp.port}?starttls=1&cafile={cert}"
    app = App(settings_for(tmp_path, db=db, mail=uri), login_delay=0)
    await app.start()
    try:
        await request_reset(app)
        await asyncio.wait_for(inbox.arrived.wait(), 10)
        assert logins == [("relay", "mail-pass")]
    finally:
        await app.stop()
        smtp.stop()


def test_smtp_uris_are_parsed_and_bad_ones_refused() -> None:
    t = SmtpTransport("smtp://user:p%40ss@mail.example:587?starttls=1")
    assert (t.host, t.port, t.start_tls, t.username) == ("mail.example", 587, True, "user")
    assert "p@ss" not in repr(t)
    assert SmtpTransport("smtps://mail.example").port == 465
    with pytest.raises(ValueError, match="smtp://host:port"):
        SmtpTransport("smtp://")


class Stalled(Inbox):
    """A server that holds every message's DATA until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.arrived.set()
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return "451 4.3.0 Try again later"


async def test_a_stopping_node_hands_its_mail_claims_back_due_at_once(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    inbox = Stalled()
    smtp = start_smtp(inbox)
    mail = f"smtp://127.0.0.1:{smtp.port}"
    app = App(settings_for(tmp_path, db=db, mail=mail), clock=clock, login_delay=0)
    await app.start()
    try:
        await request_reset(app)
        await eventually(inbox.arrived.is_set)  # claimed, and in delivery
        claim = await sql(db, "SELECT claimed, due_at FROM outbox WHERE kind = 'reset'")
        assert claim[0][0] == 1 and claim[0][1] > clock()  # due again only after the lease
        # The stalled server does not hold the stop: its connection is dropped, not QUIT
        # politely (which waited out the 30 s SMTP timeout, past drain_seconds).
        async with asyncio.timeout(app.settings.drain_seconds):
            await app.stop()
        # Not left until its lease ends: due now, for whichever node looks next.
        assert await sql(db, "SELECT claimed, due_at FROM outbox WHERE kind = 'reset'") == [
            (0, clock())
        ]
    finally:
        inbox.release.set()
        await app.stop()
        smtp.stop()
