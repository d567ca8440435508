"""docs/operations.md, "Files on disk", files on disk: the SQLite store, its -wal and
-shm, the key file and the Maildir messages are mode 0600 whatever the umask and whatever folder
they are in (looser files found at open are tightened); a serve whose store folder is read-only, or
whose store file cannot be opened, exits 2 with one line instead of a traceback or a hang."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oms_auth.mail.maildir import MaildirTransport
from oms_auth.mail.templates import Outgoing

from .helpers import ServerProcess, oms_auth, wait_for_mail


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Commands started inside run with this umask (a child inherits it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def sqlite_files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.key")]


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask022", "umask000"])
async def test_the_store_its_wal_and_shm_the_key_and_mail_are_created_0600_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # a folder everyone may enter: the files themselves must be closed
    db, mail = data / "auth.sqlite3", data / "mail"
    with umask(mask):
        oms_auth(tmp_path, "demo", "--db", str(db))  # queues an invitation
        server = ServerProcess(tmp_path, "--db", str(db), "--mail", f"maildir:{mail}")
        await server.start()
    try:
        (message,) = await wait_for_mail(mail, 1)
        for path in [*sqlite_files(db), message]:
            assert mode(path) == 0o600, (path.name, oct(mode(path)))
    finally:
        await server.stop()


@pytest.mark.parametrize("mask", [0o277, 0o022], ids=["umask277", "umask022"])
async def test_a_maildir_message_is_0600_even_when_the_umask_cuts_the_owners_bits(
    tmp_path: Path, mask: int
) -> None:
    """The chmod after creating a message is left out only when the umask leaves 0600 whole."""
    with umask(mask):
        transport = MaildirTransport(tmp_path / "mail")
        await transport.send(Outgoing("a@example.com", "b@example.com", b"Subject: x\r\n"), 7)
    (message,) = (tmp_path / "mail" / "new").iterdir()
    assert mode(message) == 0o600
    assert message.read_bytes() == b"Subject: x\n"


async def test_a_message_that_cannot_be_written_whole_is_not_delivered_nor_left_in_tmp(
    tmp_path: Path,
) -> None:
    """A short write (a full disk; here the file size limit) fails that message: no cut copy in
    new/, and no copy of its link in tmp/."""
    transport = MaildirTransport(tmp_path / "mail")
    big = Outgoing("a@example.com", "b@example.com", b"x" * 5000)
    small = Outgoing("a@example.com", "b@example.com", b"Subject: y\r\n")
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write, not a signal
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        outcomes = await transport.send_batch([(big, 1), (small, 2)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert isinstance(outcomes[0], OSError) and outcomes[1] is None
    assert [p.read_bytes() for p in (tmp_path / "mail" / "new").iterdir()] == [b"Subject: y\n"]
    assert list((tmp_path / "mail" / "tmp").iterdir()) == []


async def test_existing_files_with_looser_modes_are_tightened_at_open(tmp_path: Path) -> None:
    db = tmp_path / "oms-auth.sqlite3"
    oms_auth(tmp_path, "demo")
    crashed = ServerProcess(tmp_path)
    await crashed.start()
    await crashed.kill()  # a crash leaves the -wal and -shm behind
    files = sqlite_files(db)
    for path in files:
        path.chmod(0o644)
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        for path in files:
            assert mode(path) == 0o600, (path.name, oct(mode(path)))
    finally:
        await server.stop()
    for path in (db, Path(f"{db}.key")):
        path.chmod(0o666)
    oms_auth(tmp_path, "user", "list")  # any command that opens the store tightens them
    assert [mode(p) for p in (db, Path(f"{db}.key"))] == [0o600, 0o600]


# -- a store that cannot be written or opened ---------------------------------------------------


def _try(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path, how: str = "immutable") -> Iterator[None]:
    """Make ``folder`` refuse new entries in a way that holds for root too (tests run as root,
    which ignores permission bits): the immutable attribute, or a read-only bind mount; as
    another user, the permission bits suffice."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = [("chmod", "755", str(folder))]
    elif how == "immutable" and shutil.which("chattr") and _try("chattr", "+i", str(folder)):
        undo = [("chattr", "-i", str(folder))]
    elif how == "read-only mount" and _try("mount", "--bind", str(folder), str(folder)):
        undo = [("umount", str(folder))]
        if not _try("mount", "-o", "remount,bind,ro", str(folder)):
            _try(*undo[0])
            pytest.skip("cannot remount a folder read-only here")
    else:
        pytest.skip(f"cannot make a folder read-only for root here ({how})")
    try:
        with pytest.raises(OSError):
            (folder / "probe").touch()
        yield
    finally:
        for cmd in undo:
            _try(*cmd)


def serve_refused(tmp_path: Path, *args: str) -> str:
    """``serve`` exits 2, soon, with one line (log lines aside) and no traceback; that line."""
    started = time.monotonic()
    try:
        result = oms_auth(tmp_path, "serve", "--port", "0", *args, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("serve neither listened nor exited: it hung")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if not line.startswith("20")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("how", ["immutable", "read-only mount"])
def test_serve_on_a_store_in_a_read_only_folder_exits_2_with_one_line(
    tmp_path: Path, how: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "auth.sqlite3"
    oms_auth(tmp_path, "user", "add", "--db", str(db), "--username", "alice",
             "--email", "a@x.test", "--password", "Sekrit-Pass1")  # fmt: skip
    with read_only(data, how):
        line = serve_refused(tmp_path, "--db", str(db))
    assert str(db) in line and "read-only" in line


def test_serve_creating_a_store_in_a_read_only_folder_exits_2_with_one_line(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "auth.sqlite3"
    with read_only(data):
        line = serve_refused(tmp_path, "--db", str(db))
    assert str(data) in line and "cannot listen" not in line


@pytest.mark.parametrize("what", ["a folder", "not a database"])
def test_serve_on_a_store_file_that_cannot_be_opened_exits_2_with_one_line(
    tmp_path: Path, what: str
) -> None:
    db = tmp_path / "auth.sqlite3"
    if what == "a folder":
        db.mkdir()
    else:
        db.write_bytes(os.urandom(8192))
    line = serve_refused(tmp_path, "--db", str(db))
    assert str(db) in line
