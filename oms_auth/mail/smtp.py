"""Delivery to an SMTP server with aiosmtplib (``smtp://host:port``, STARTTLS and login optional).

URI forms: ``smtp://host:25``, ``smtp://user:pass@host:587?starttls=1``; ``smtps://`` for
implicit TLS; ``cafile=PATH`` trusts a private CA for the server's certificate. The password may
instead come from ``OMS_AUTH_SMTP_PASSWORD`` so that it is not on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from .templates import Outgoing

__all__ = ["SmtpTransport"]


class SmtpTransport:
    def __init__(self, uri: str, *, timeout: float = 30) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"mail URI {uri!r} must look like smtp://host:port")
        query = parse_qs(parts.query)
        self.host = parts.hostname
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.use_tls = parts.scheme == "smtps"
        self.start_tls = query.get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        self._password = password or os.environ.get("OMS_AUTH_SMTP_PASSWORD")
        self.cafile = query.get("cafile", [None])[0]
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpTransport({self.host}:{self.port})"

    async def send(self, message: Outgoing, mail_id: int) -> None:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            cert_bundle=self.cafile,
            username=self.username,
            password=self._password if self.username else None,
            timeout=self.timeout,
        )
        sender = parseaddr(message.sender)[1] or message.sender
        try:
            await client.connect()  # with STARTTLS and login, as configured
            await client.sendmail(sender, [message.recipient], message.data)
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()  # delivered: a server that fumbles QUIT changes nothing
        except BaseException:
            # Failed, or cancelled by a stopping node: the connection is dropped at once. A
            # polite QUIT would wait up to `timeout` on a stalled server and hold the node's
            # shutdown (docs/operations.md, "Restarts: SIGTERM drains").
            client.close()
            raise

    async def send_batch(self, batch: list[tuple[Outgoing, int]]) -> list[Exception | None]:
        results = await asyncio.gather(
            *(self.send(message, mail_id) for message, mail_id in batch), return_exceptions=True
        )
        return [r if isinstance(r, Exception) else None for r in results]

    async def start(self) -> None:
        return None

    async def writable(self) -> str | None:
        return None  # no folder of ours: the server's own queue is the server's business

    async def close(self) -> None:
        return None
