"""Delivery into a standard Maildir (tmp/ -> new/), once per outbox message."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
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
_FOLDER = os.O_RDONLY | os.O_DIRECTORY


def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): flush one file system in one call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return cast(Callable[[int], int], libc.syncfs)
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def _flush(folder: int) -> None:
    """Make what was written into the open folder ``folder`` (files, and its entries)
    durable."""
    if _SYNCFS is not None:
        if _SYNCFS(folder) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    else:
        os.fsync(folder)  # the files were fsynced one by one; this is the folder's entries


def _umask_keeps_private() -> bool:
    """Whether this process's umask leaves a file made with mode 0600 at exactly 0600, so no
    chmod is needed after creating one (Linux says the umask in /proc; elsewhere: False)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & PRIVATE == 0
    except (OSError, ValueError, IndexError):
        pass
    return False


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
        # A new file's mode is 0600 cut by the umask; when the umask cuts nothing from it, the
        # chmod each message would otherwise need (a system call each) is left out.
        self._private = _umask_keeps_private()

    def _ensure(self) -> None:
        if self._ready:
            return
        for sub in ("tmp", "new", "cur"):
            # 0700: the messages (0600) hold links that reset passwords.
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ready = True

    def _known(self) -> set[int]:
        """The ids already in the Maildir (under ``_lock``)."""
        if self._delivered is None:
            self._delivered = {
                int(m[1])
                for sub in ("new", "cur")
                for p in (self.path / sub).iterdir()
                if (m := _ID.search(p.name))
            }
        return self._delivered

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
            tmp = os.open(self.path / "tmp", _FOLDER)
        except OSError as exc:  # the Maildir cannot be made: every message fails alike
            return [exc] * len(batch)
        try:
            new = os.open(self.path / "new", _FOLDER)
        except OSError as exc:
            os.close(tmp)
            return [exc] * len(batch)
        try:
            return self._deliver_in(tmp, new, batch)
        finally:
            os.close(tmp)
            os.close(new)

    def _deliver_in(
        self, tmp: int, new: int, batch: list[tuple[Outgoing, int]]
    ) -> list[Exception | None]:
        """:meth:`_deliver_all` with ``tmp/`` and ``new/`` open: each name is looked up in its
        folder alone, not walked from the root for every call."""
        outcomes: list[Exception | None] = [None] * len(batch)
        with self._lock:
            done = self._known()
            todo = [k for k, (_, mail_id) in enumerate(batch) if mail_id not in done]
        # The writer's pid is in the name, so files a dead writer left in tmp/ are known.
        tail = f".P{os.getpid()}.{self._host}"
        stamp = int(time.time())
        written: list[tuple[int, str, int]] = []
        for k in todo:
            message, mail_id = batch[k]
            name = f"{stamp}.oms-auth-{mail_id}{tail}"
            try:
                self._write(tmp, name, message.data.replace(b"\r\n", b"\n"))  # Maildir: LF
            except OSError as exc:  # one message's failure is its own
                outcomes[k] = exc
                continue
            written.append((k, name, mail_id))
        if not written:
            return outcomes
        try:
            _flush(tmp)
        except OSError as exc:  # nothing is known to be durable: none of them went
            return [outcomes[k] or exc for k in range(len(batch))]
        moved: list[int] = []
        for k, name, mail_id in written:
            try:
                os.rename(name, name, src_dir_fd=tmp, dst_dir_fd=new)
            except OSError as exc:
                outcomes[k] = exc
                continue
            moved.append(mail_id)
        _flush(new)
        # Known as delivered once the moves are durable: after a failed flush the outbox tries
        # again and the message is written again (twice at worst, never lost).
        with self._lock:
            self._known().update(moved)
        return outcomes

    def _write(self, folder: int, name: str, data: bytes) -> None:
        """One message's file in the open folder ``folder``, mode exactly 0600; a file that
        could not be written whole is removed (it holds the link in plain text)."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE, dir_fd=folder)
        try:
            if not self._private:
                os.fchmod(fd, PRIVATE)  # exactly 0600, whatever the umask left of it
            if os.write(fd, data) != len(data):  # a regular file writes short only when full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if not _SYNCFS:
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder)
            raise
        finally:
            os.close(fd)

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
