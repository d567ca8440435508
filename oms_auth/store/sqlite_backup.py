"""A consistent copy of a SQLite store while it serves, and its restore (docs/operations.md,
"Backing up and restoring").

Rules:

- A backup reads the store through a connection of its own with SQLite's online backup API:
  one read transaction (in WAL mode it blocks no writer) gives a copy of one committed state.
  It is written under a temporary name (mode 0600 whatever the umask), synced, renamed into
  place and its folder synced: DEST is whole or absent. The key ring is never in it (the store
  holds only the key's fingerprint and id).
- A restore is refused while a node serves the store: it takes the serve lock every
  ``oms-auth serve`` holds (``SERVE_LOCK``) and keeps it until done, so no node starts
  meanwhile either. The copy is checked (``PRAGMA quick_check``, and that it is an oms-auth
  store) before the store is replaced, through the backup API into the store's own file, so
  its ``-wal`` cannot be replayed onto the wrong data.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ..files import PRIVATE, create_private
from .records import StoreError

__all__ = ["SERVE_LOCK", "backup", "restore", "serve_lock"]

SERVE_LOCK: Final = ".serve.lock"  # beside the store: held by the node serving it


@contextlib.contextmanager
def serve_lock(path: str) -> Iterator[None]:
    """Hold the store's serve lock; StoreError when a node holds it (it serves the store)."""
    lock = path + SERVE_LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE)
    except OSError as exc:
        raise StoreError(f"cannot create {lock}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"a node is serving {path} (it holds {lock}): stop every oms-auth serve on it first"
            ) from None
        yield
    finally:
        os.close(fd)


def _read_only(path: str) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


def _fsync(path: str | Path) -> None:
    """Sync a file, or a folder (what names its files), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: sqlite3.Connection, dest: str) -> None:
    target = sqlite3.connect(dest, isolation_level=None)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        target.close()


def backup(store: str, dest: Path) -> int:
    """Copy ``store`` to ``dest`` (see the rules); its size in bytes. StoreError when the store
    cannot be read or ``dest`` written; ``dest`` is never left half written."""
    if not Path(store).exists():
        raise StoreError(f"there is no store at {store}")
    if dest.exists():
        raise StoreError(f"{dest} exists already: name a new file")
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        create_private(tmp)
        source = sqlite3.connect(_read_only(store), uri=True, isolation_level=None)
        try:
            _copy(source, str(tmp))
        finally:
            source.close()
        _fsync(tmp)
        os.link(tmp, dest)  # never over a file that appeared meanwhile
        _fsync(dest.parent)
        return dest.stat().st_size
    except sqlite3.Error as exc:
        raise StoreError(f"cannot back up {store}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check(source: sqlite3.Connection, src: Path) -> None:
    try:
        ((verdict,),) = source.execute("PRAGMA quick_check").fetchall()
        tables = {r[0] for r in source.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise StoreError(f"{src} is not a SQLite store: {exc}") from None
    if verdict != "ok":
        raise StoreError(f"{src} is damaged: {verdict}")
    if not {"meta", "users", "audit"} <= tables:
        raise StoreError(f"{src} is not an oms-auth store")


def restore(src: Path, store: str) -> None:
    """Replace ``store`` by the backup ``src`` (see the rules). StoreError when a node serves
    it, or ``src`` is not a sound oms-auth store: the store is left as it was then."""
    if not src.is_file():
        raise StoreError(f"there is no backup at {src}")
    with serve_lock(store):
        try:
            source = sqlite3.connect(_read_only(str(src)), uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {src}: {exc}") from None
        try:
            _check(source, src)
            create_private(store)
            target = sqlite3.connect(store, isolation_level=None)
            try:
                source.backup(target)
                target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                target.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot restore into {store}: {exc}") from None
        finally:
            source.close()
        _fsync(store)
