"""Files that hold secrets, and whether a folder takes a write.

Rules (docs/operations.md, "Files on disk"): the SQLite store, its ``-wal`` and ``-shm``, the
key file
and the Maildir messages are mode 0600. A mode given to ``open(2)`` is cut by the umask but never
widened, so new files are made with 0600 and then set to exactly 0600 (a umask such as 0277 would
otherwise leave them unwritable to us). Files found with bits for the group or others are tightened,
never widened; one that cannot be (another owner, a read-only mount) is logged and left as it is,
since refusing to start over it would take the service down for a warning.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

__all__ = ["PRIVATE", "tighten", "tighten_path", "create_private", "probe_write"]

log = logging.getLogger("oms_auth")

PRIVATE = 0o600
# A probe writes one page: an empty file costs no data block, so it would pass on a full disk.
PROBE_BYTES = 4096


def tighten(fd: int, name: str | os.PathLike[str]) -> None:
    """Take the group's and others' bits off the open file ``fd`` (named ``name`` in the log)."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        try:
            os.fchmod(fd, mode & 0o700)
        except OSError as exc:
            log.warning("%s is mode %o and cannot be made 0600: %s", name, mode, exc.strerror)


def tighten_path(path: str | os.PathLike[str]) -> None:
    """:func:`tighten` a file by its path; nothing when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none there (or a link, which SQLite would not open either)
        return
    try:
        tighten(fd, path)
    finally:
        os.close(fd)


def create_private(path: str | os.PathLike[str]) -> None:
    """Make sure ``path`` exists as a regular file of mode 0600 at most: created as exactly 0600
    whatever the umask, tightened when found looser. OSError when it cannot be opened or made."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
        created = False
    else:
        created = True
    try:
        if created:
            os.fchmod(fd, PRIVATE)
        elif not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        else:
            tighten(fd, path)
    finally:
        os.close(fd)


def probe_write(folder: str | os.PathLike[str], prefix: str) -> None:
    """Create a file in ``folder``, write a page into it and remove it: OSError when the folder
    does not take a new entry (read-only, immutable) or its disk is full."""
    probe = Path(folder) / f"{prefix}{secrets.token_hex(6)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
    finally:
        probe.unlink(missing_ok=True)
