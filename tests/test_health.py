"""``GET /healthz`` (docs/operations.md, "Health and metrics"): 200 only when the store takes a
write (one it rolls back) and the mail transport's folder takes a write; 503 with the reason
otherwise, e.g. with the disk full. The disks here are real: a 1 MiB tmpfs filled to the last
byte."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from oms_auth.app import App

from .helpers import Clock, is_postgres, settings_for, sql


@contextlib.contextmanager
def small_disk(folder: Path) -> Iterator[Path]:
    """A 1 MiB file system mounted at ``folder`` (root only; skipped elsewhere)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write into ``folder`` until its disk is full, to the last byte; the file that did it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


async def healthz(app: App) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            answer = conn.getresponse()
            return answer.status, answer.read().decode()
        finally:
            conn.close()

    return await asyncio.to_thread(get)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    app = App(settings_for(tmp_path, **settings), clock=Clock(), login_delay=0)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_healthz_is_503_naming_the_store_when_the_store_disk_is_full(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        async with running(tmp_path, db=str(disk / "auth.sqlite3")) as app:
            assert await healthz(app) == (200, "ok\n")
            filler = fill(disk)
            status, reason = await healthz(app)
            assert status == 503 and "store" in reason and "mail" not in reason, reason
            filler.unlink()
            assert await healthz(app) == (200, "ok\n")


async def test_healthz_is_503_naming_the_mail_folder_when_its_disk_is_full(
    tmp_path: Path, db: str
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        async with running(tmp_path, db=db, mail=f"maildir:{disk / 'mail'}") as app:
            assert await healthz(app) == (200, "ok\n")
            filler = fill(disk)
            status, reason = await healthz(app)
            assert status == 503 and "mail" in reason and "store" not in reason, reason
            assert not list((disk / "mail" / "tmp").iterdir())  # the probe left nothing
            filler.unlink()
            assert await healthz(app) == (200, "ok\n")


# A database that answers reads and refuses every write, with the error a full disk gives.
REFUSE_WRITES = {
    "postgres": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON meta"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON meta"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    ],
}


async def test_healthz_is_503_naming_the_store_when_the_database_refuses_writes(
    tmp_path: Path, db: str
) -> None:
    """The database answers reads but refuses every write (as PostgreSQL does out of disk, or
    read-only): made so by a trigger on the table the probe writes to."""
    async with running(tmp_path, db=db) as app:
        assert await healthz(app) == (200, "ok\n")
        for statement in REFUSE_WRITES["postgres" if is_postgres(db) else "sqlite"]:
            await sql(db, statement)
        status, reason = await healthz(app)
        assert status == 503 and "store" in reason, reason
        assert "No space left" in reason or "disk is full" in reason
        await sql(db, "DROP TRIGGER refuse" + (" ON meta" if is_postgres(db) else ""))
        assert await healthz(app) == (200, "ok\n")


async def test_healthz_is_503_when_the_maildir_takes_no_new_file(tmp_path: Path, db: str) -> None:
    """Root ignores permission bits; the immutable attribute holds for root too."""
    async with running(tmp_path, db=db) as app:
        assert await healthz(app) == (200, "ok\n")
        tmp = tmp_path / "mail" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(tmp)], capture_output=True).returncode:
                pytest.skip("chattr +i does not work here")
            undo = ["chattr", "-i", str(tmp)]
        else:
            tmp.chmod(0o555)
            undo = ["chmod", "755", str(tmp)]
        try:
            status, reason = await healthz(app)
        finally:
            subprocess.run(undo, check=True)
        assert status == 503 and "mail" in reason, reason
