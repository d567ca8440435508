"""``oms-auth user import FILE|-`` and ``oms-auth user export`` (docs/import.md)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import msgspec

from ..config import Settings
from ..engine import import_rows, transfer
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


async def _import(deps: Deps, args: argparse.Namespace) -> int:
    started = time.monotonic()

    def refuse(line: int, reason: str) -> None:
        print(f"line {line}: {reason}", file=sys.stderr)

    with ExitStack() as stack:
        stack.enter_context(import_rows.fewer_collections())
        stack.enter_context(import_rows.quick_switches())
        async with _reading(args.file, args.dry_run) as read:
            tally = await transfer.import_chunks(
                deps,
                read,
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


# What the pipe from the reading process buffers before it waits for the import to take some:
# a few chunks (a chunk of 1,000 generated users is about 200 KB).
_PIPE_BUFFER = 1 << 20


@asynccontextmanager
async def _reading(file: str, dry_run: bool) -> AsyncIterator[AsyncIterator[import_rows.Chunk]]:
    """The chunks of ``file`` (- for standard input) as a process of its own reads them
    (:mod:`..engine.import_rows` says why); it is ended when the import stops early."""
    # Its modules from where this process took them, whatever the working directory.
    root = str(Path(import_rows.__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        import_rows.__name__,
        *(["--dry-run"] if dry_run else []),
        "--",  # a file whose name starts with a dash is still a file
        file,
        stdin=None if file == "-" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
        limit=_PIPE_BUFFER,
    )
    try:
        assert proc.stdout is not None
        yield _chunks(proc, proc.stdout, file)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


_CUT_SHORT = "the reading process stopped in the middle of a chunk"


async def _chunks(
    proc: asyncio.subprocess.Process, pipe: asyncio.StreamReader, file: str
) -> AsyncIterator[import_rows.Chunk]:
    while head := await _exactly(pipe, 4):
        body = await _exactly(pipe, int.from_bytes(head, "big"))
        if not body:
            raise TransferError(_CUT_SHORT)
        yield import_rows.decode_chunk(body)
    if await proc.wait() != 0:
        raise TransferError(f"reading {file} failed (see above)")


async def _exactly(pipe: asyncio.StreamReader, n: int) -> bytes:
    """``n`` bytes, or none at the end of the pipe."""
    try:
        return await pipe.readexactly(n)
    except asyncio.IncompleteReadError as end:
        if end.partial:
            raise TransferError(_CUT_SHORT) from None
        return b""


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
