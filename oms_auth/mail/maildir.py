"""Delivery into a standard Maildir (tmp/ -> new/), once per outbox message."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from ..files import PRIVATE, probe_write
from .templates import Outgoing

__all__ = ["MaildirTransport"]

_ID = re.compile(r"\.oms-auth-(\d+)\.")
_WRITER = re.compile(r"\.oms-auth-\d+\.P(\d+)\.(.+)$")


def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): flush one file system in one call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return cast(Callable[[int], int], libc.syncfs)
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def _flush(folder: Path) -> None:
    """Make what was written into ``folder`` (files, and its entries) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _SYNCFS is not None:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        else:
            os.fsync(fd)  # the files were fsynced one by one; this is the folder's entries
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class MaildirTransport:
    """Writes each message to ``PATH/new``. The file name carries the outbox id, so a message
    delivered just before a crash (and claimed again after it) is not written twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        # Ids already in the Maildir: read once, then kept up to date, because listing a
        # folder of thousands of messages for every delivery would stall the process.
        self._delivered: set[int] | None = None
        self._lock = threading.Lock()
        self._ready = False  # the folders exist (made once, not per message)

    def _ensure(self) -> None:
        if self._ready:
            return
        for sub in ("tmp", "new", "cur"):
            # 0700: the messages (0600) hold links that reset passwords.
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ready = True

    def _already(self, mail_id: int) -> bool:
        with self._lock:
            if self._delivered is None:
                self._delivered = {
                    int(m[1])
                    for sub in ("new", "cur")
                    for p in (self.path / sub).iterdir()
                    if (m := _ID.search(p.name))
                }
            return mail_id in self._delivered

    def _deliver(self, message: Outgoing, mail_id: int) -> None:
        (outcome,) = self._deliver_all([(message, mail_id)])
        if outcome is not None:
            raise outcome

    def _deliver_all(self, batch: list[tuple[Outgoing, int]]) -> list[Exception | None]:
        """Write the batch to ``tmp/``, make it durable with one flush of the file system
        (``syncfs``, where a file each would cost an fsync each), then move each into ``new/``
        and make the moves durable: a message is in ``new/`` only whole, and once this returns
        it survives a crash. Each message's outcome in order (None: delivered)."""
        try:
            self._ensure()
        except OSError as exc:  # the Maildir cannot be made: every message fails alike
            return [exc] * len(batch)
        outcomes: list[Exception | None] = [None] * len(batch)
        written: list[tuple[int, Path, str, int]] = []
        pid = os.getpid()
        for k, (message, mail_id) in enumerate(batch):
            if self._already(mail_id):
                continue
            # The writer's pid is in the name, so files a dead writer left in tmp/ are known.
            name = f"{int(time.time())}.oms-auth-{mail_id}.P{pid}.{self._host}"
            tmp = self.path / "tmp" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
                try:
                    os.fchmod(fd, PRIVATE)  # exactly 0600, whatever the umask left of it
                    os.write(fd, message.data.replace(b"\r\n", b"\n"))  # Maildir: LF lines
                    if not _SYNCFS:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # one message's failure is its own
                outcomes[k] = exc
                continue
            written.append((k, tmp, name, mail_id))
        if not written:
            return outcomes
        try:
            _flush(self.path / "tmp")
        except OSError as exc:  # nothing is known to be durable: none of them went
            return [outcomes[k] or exc for k in range(len(batch))]
        for k, tmp, name, mail_id in written:
            try:
                os.rename(tmp, self.path / "new" / name)
            except OSError as exc:
                outcomes[k] = exc
                continue
            with self._lock:
                assert self._delivered is not None
                self._delivered.add(mail_id)
        _flush(self.path / "new")
        return outcomes

    def _clear_leftovers(self) -> int:
        """Remove this host's files in ``tmp/`` whose writer is no longer running: a message
        cut off mid-write (it holds the link in plain text; the outbox delivers it again)."""
        self._ensure()
        gone = 0
        for path in (self.path / "tmp").iterdir():
            found = _WRITER.search(path.name)
            if found and found[2] == self._host and not _alive(int(found[1])):
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    async def start(self) -> None:
        await asyncio.to_thread(self._clear_leftovers)

    def _probe(self) -> None:
        self._ready = False  # made again if someone removed them
        self._ensure()
        probe_write(self.path / "tmp", ".healthz-")

    async def writable(self) -> str | None:
        """None when a file can be made, written a page and removed in ``tmp/``, where every
        message is first written; else why not."""
        try:
            await asyncio.to_thread(self._probe)
        except OSError as exc:
            return f"the Maildir takes no write: {exc.strerror or exc}"
        return None

    async def send(self, message: Outgoing, mail_id: int) -> None:
        await asyncio.to_thread(self._deliver, message, mail_id)

    async def send_batch(self, batch: list[tuple[Outgoing, int]]) -> list[Exception | None]:
        """Several messages in one trip to a thread; each outcome in order (None: delivered)."""
        return await asyncio.to_thread(self._deliver_all, batch)

    async def close(self) -> None:
        return None
