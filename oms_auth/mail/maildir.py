"""Delivery into a standard Maildir (tmp/ -> new/), once per outbox message."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from email.message import EmailMessage
from pathlib import Path

__all__ = ["MaildirTransport"]


class MaildirTransport:
    """Writes each message to ``PATH/new``. The file name carries the outbox id, so a message
    delivered just before a crash (and claimed again after it) is not written twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def _ensure(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def _already(self, mail_id: int) -> bool:
        tag = f".oms-auth-{mail_id}."
        return any(tag in p.name for sub in ("new", "cur") for p in (self.path / sub).iterdir())

    def _deliver(self, message: EmailMessage, mail_id: int) -> None:
        self._ensure()
        if self._already(mail_id):
            return
        name = f"{int(time.time())}.oms-auth-{mail_id}.{self._host}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(message.as_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path / "new" / name)

    async def send(self, message: EmailMessage, mail_id: int) -> None:
        await asyncio.to_thread(self._deliver, message, mail_id)

    async def close(self) -> None:
        return None
