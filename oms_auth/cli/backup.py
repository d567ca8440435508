"""``oms-auth backup DEST`` / ``oms-auth restore SRC``: a SQLite store copied while it serves,
and put back when no node serves it (docs/operations.md, "Backing up and restoring").
PostgreSQL has its own tools for both (pg_dump, pg_restore): the commands say so."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..config import Settings
from ..store import StoreError, is_postgres_url, sqlite_path
from ..store.sqlite_backup import backup, restore

__all__ = ["backup_args", "backup_command"]

_PG = (
    "--db is PostgreSQL: back up with pg_dump --format=custom and restore with pg_restore"
    ' (docs/operations.md, "Backing up and restoring")'
)


def backup_args(sub: argparse._SubParsersAction, common: object) -> None:  # type: ignore[type-arg]
    """The ``backup`` and ``restore`` commands (``common`` adds --db and --config)."""
    b = sub.add_parser("backup", help="copy the SQLite store while it serves (no key inside)")
    r = sub.add_parser("restore", help="put a backup in place of a store no node serves")
    for p, name in ((b, "dest"), (r, "src")):
        if callable(common):
            common(p)
        p.add_argument(name, metavar=name.upper(), type=Path)


async def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    if is_postgres_url(settings.db):
        raise StoreError(_PG)
    store = sqlite_path(settings.db)
    if args.command == "backup":
        size = await asyncio.to_thread(backup, store, args.dest)
        print(f"backed up {store} to {args.dest} ({size} bytes); the key ring is not in it")
        return 0
    await asyncio.to_thread(restore, args.src, store)
    print(f"restored {store} from {args.src}", file=sys.stdout)
    return 0
