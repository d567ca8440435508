"""A ``--db`` whose SQLite store does not exist (docs/operations.md, "The command line"): only
the commands that bring users create it (``serve``, ``demo``, ``user add|import``), saying so
on stderr; every other command that opens the store (``user list``, ``audit``, ``user
export``, ...) refuses with one line instead of leaving an empty store behind."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import Settings
from ..store import StoreError, is_postgres_url, sqlite_path

__all__ = ["missing_store", "check_missing", "say_created"]

# The commands that may create a store; backup and restore say themselves what is missing.
CREATORS = {("serve", None), ("demo", None), ("user", "add"), ("user", "import")}
UNCHECKED = {"backup", "restore", "conformance"}


def missing_store(settings: Settings) -> str | None:
    """The SQLite store's path (as given) when there is no file there yet; None otherwise
    (PostgreSQL included: its schema is made by whichever node comes first)."""
    if is_postgres_url(settings.db):
        return None
    path = sqlite_path(settings.db)
    return None if Path(path).exists() else path


def check_missing(args: argparse.Namespace, settings: Settings) -> str | None:
    """StoreError for a read-only command on a missing store; else the path a writing command
    will create (None when the store is there)."""
    path = missing_store(settings)
    if path is None:
        return None
    sub = getattr(args, "user_command", None) if args.command == "user" else None
    if (args.command, sub) in CREATORS:
        return path
    if args.command not in UNCHECKED and getattr(args, "key_command", None) != "list":
        raise StoreError(
            f"there is no store at {path}: give --db the store's path (a read-only command"
            " creates none)"
        )
    return None


def say_created(path: str | None) -> None:
    if path is not None and Path(path).exists():
        print(f"created a new store at {path}", file=sys.stderr)
