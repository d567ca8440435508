"""``oms-auth user import FILE|-`` and ``oms-auth user export`` (docs/import.md)."""

from __future__ import annotations

import argparse
import atexit
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

import msgspec

from ..config import Settings
from ..engine import transfer
from ..engine.deps import Deps
from ..store import User

__all__ = ["add_commands", "check_before_opening", "run", "TransferError"]


class TransferError(Exception):
    """The command cannot run (exit 2, one line)."""


def add_commands(
    add_parser: Callable[..., argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``user import`` and ``user export``, with ``add_parser`` of the ``user`` subparsers."""
    imp = add_parser(
        "import", help="import users from JSON Lines (a file, or - for standard input)"
    )
    common(imp)
    imp.add_argument("file", metavar="FILE|-")
    imp.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    imp.add_argument(
        "--invite-without-hash",
        action="store_true",
        help="mail an invitation to each imported user that has no PasswordHash",
    )
    exp = add_parser("export", help="write users as JSON Lines in the import format")
    common(exp)
    exp.add_argument("--user", action="append", default=[], metavar="U", help="only these")
    exp.add_argument(
        "--include-secrets", action="store_true", help="TOTP secrets too, in the clear"
    )


def check_before_opening(
    args: argparse.Namespace, settings: Settings, missing: Path | None
) -> Settings:
    """Refusals that must come before the store is opened (and maybe created); the settings
    to open it with: a dry run where no store is checks against a throwaway one, and leaves
    none behind."""
    if args.user_command == "import" and args.file != "-" and not Path(args.file).is_file():
        raise TransferError(f"no file {args.file}")
    if args.user_command == "import" and args.dry_run and missing is not None:
        folder = tempfile.mkdtemp(prefix="oms-auth-dry-run-")
        atexit.register(shutil.rmtree, folder, True)
        db = str(Path(folder) / "dry-run.sqlite3")
        return msgspec.structs.replace(settings, db=db, secret_key_file=db + ".key")
    return settings


async def run(deps: Deps, args: argparse.Namespace) -> int:
    if args.user_command == "export":
        return await _export(deps, args)
    return await _import(deps, args)


def _lines(source: BinaryIO) -> Iterator[bytes]:
    yield from source


def _progress(stack: ExitStack) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda n: None
    # tqdm: rows, rows/s and (for a file) nothing more to say; a small, well-kept library with
    # no dependencies, which rich is not (see pyproject.toml)
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    bar = stack.enter_context(tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True))

    def update(n: int) -> None:
        bar.update(n)

    return update


# Young objects a collection of the cycle collector waits for during an import (Python's
# default: 700). An import allocates a batch's users and rows, then frees them, so with the
# default a collection ran every few rows and the full ones walked every object of the process
# (its modules, ICU's data): about 6% of an import's CPU. With this one collections are a few
# per million rows; a cycle left behind is still found at the next one, so memory stays flat.
_IMPORT_GC_THRESHOLD = 10_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(_IMPORT_GC_THRESHOLD, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


async def _import(deps: Deps, args: argparse.Namespace) -> int:
    started = time.monotonic()

    def refuse(line: int, reason: str) -> None:
        print(f"line {line}: {reason}", file=sys.stderr)

    with ExitStack() as stack:
        stack.enter_context(_fewer_collections())
        source = (
            sys.stdin.buffer
            if args.file == "-"
            else stack.enter_context(
                open(args.file, "rb")  # noqa: SIM115 (closed by the stack)
            )
        )
        tally = await transfer.import_lines(
            deps,
            _lines(source),
            refuse=refuse,
            dry_run=args.dry_run,
            invite_without_hash=args.invite_without_hash,
            progress=_progress(stack),
        )
    seconds = time.monotonic() - started
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{verb} {tally.imported}, already there {tally.already}, refused {tally.refused}"
        f" (see above), in {seconds:.1f} s"
    )
    if tally.invited:
        print(f"invitations queued: {tally.invited}", file=sys.stderr)
    return 0


async def _export(deps: Deps, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if args.user:
        wanted = []
        for name in args.user:
            user = await deps.store.user_by_name(name)
            if user is None:
                raise TransferError(f"no user named {name!r}")
            wanted.append(user)
        users = _listed(wanted)
    else:
        users = transfer.all_users(deps)
    async for line in transfer.export_rows(deps, users, include_secrets=args.include_secrets):
        out.write(line)
    out.flush()
    return 0


async def _listed(users: list[User]) -> AsyncIterator[User]:
    for user in users:
        yield user
