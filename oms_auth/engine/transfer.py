"""Users in and out as JSON Lines (docs/import.md): ``oms-auth user import`` and ``export``.

A row is read and checked by :mod:`.import_rows` (the rules of ``user add``, a hash that
:mod:`.legacy_hashes` knows, a name unlike the names of the earlier rows of its batch: earlier
batches are in the store, which compares against them). Rows go to the store in batches, one
transaction each; a refused row writes nothing and the others go on. Answers are hashed
(Argon2id, in the hashing pool) and TOTP secrets sealed as the batch is built; the plain values
never reach the store.

Running a file again finds its users there ("already there"), so an import cut short (Ctrl-C,
SIGKILL) is finished by running it again. One batch is written while the next is read: memory
stays flat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from ..store import AuditEntry, Imported, ImportItem, User
from . import totp
from .deps import Deps
from .import_rows import BATCH, Chunk, Parsed, Question, Row, chunks
from .users import invite

__all__ = [
    "Row",
    "Question",
    "Tally",
    "import_lines",
    "import_chunks",
    "export_rows",
    "all_users",
    "BATCH",
]


@dataclass
class Tally:
    """What an import did (the summary line)."""

    imported: int = 0
    already: int = 0
    refused: int = 0
    invited: int = 0
    writing: asyncio.Future[None] | None = None  # the batch written last
    before: asyncio.Future[None] | None = None  # the one before it, when still being written


@dataclass
class _Pending:
    line: int
    item: ImportItem
    answers: list[tuple[str, str]]  # (question, normalised answer), hashed before the write


def _pending(deps: Deps, parsed: Parsed) -> _Pending:
    """A read row as the store takes it: its audit row, and its TOTP secret to be sealed for
    the id the store gives it."""
    user, secret, sealer = parsed.user, parsed.totp, deps.sealer
    seal = None if secret is None else lambda uid: totp.seal_secret(sealer, uid, secret)
    audit = AuditEntry(action="user-imported", target_name=user.username, source="cli")
    names = (parsed.key, parsed.skeleton)
    item = ImportItem(user=user, audit=audit, seal_totp=seal, names=names)
    return _Pending(parsed.line, item, parsed.answers)


async def _hashed(deps: Deps, pending: _Pending) -> None:
    """The row's answers hashed into its user."""
    if await deps.store.user_by_name(pending.item.user.username) is not None:
        # Already there, or the name taken: the store says which and writes nothing, so a run
        # that finishes an interrupted one does not pay the answers' Argon2id again.
        return
    hashes = [(q, await deps.hasher.hash(a)) for q, a in pending.answers]
    pending.item.user.questions += tuple(hashes)


_OUTCOME_REASON = {
    Imported.TAKEN: "that username is taken by a user with another email",
    Imported.LOOKALIKE: "the username looks like an existing username",
}


async def _write(
    deps: Deps,
    batch: list[_Pending],
    tally: Tally,
    refuse: Callable[[int, str], None],
    invite_without_hash: bool,
) -> None:
    outcomes = await deps.store.import_users([p.item for p in batch])
    for pending, (outcome, user_id) in zip(batch, outcomes, strict=True):
        if outcome is Imported.DONE:
            tally.imported += 1
        elif outcome is Imported.ALREADY:
            tally.already += 1
        else:
            tally.refused += 1
            refuse(pending.line, _OUTCOME_REASON[outcome])
        if outcome is Imported.DONE and invite_without_hash and not pending.item.user.password_hash:
            created = await deps.store.user_by_id(user_id or 0)
            if created is not None:
                await invite(deps, created, actor_id=None, source="cli")
                tally.invited += 1


async def import_lines(
    deps: Deps,
    lines: Iterable[bytes],
    *,
    refuse: Callable[[int, str], None],
    dry_run: bool = False,
    invite_without_hash: bool = False,
    progress: Callable[[int], None] = lambda n: None,
    batch_size: int = BATCH,
) -> Tally:
    """Import the users of ``lines`` (1-based line numbers in ``refuse(line, reason)``), read
    in this process."""
    return await import_chunks(
        deps,
        _in_turns(chunks(lines, dry_run=dry_run, batch_size=batch_size)),
        refuse=refuse,
        dry_run=dry_run,
        invite_without_hash=invite_without_hash,
        progress=progress,
    )


async def _in_turns(read: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in read:
        yield chunk
        await asyncio.sleep(0)  # the batch being written takes its next step meanwhile


async def import_chunks(
    deps: Deps,
    read: AsyncIterable[Chunk],
    *,
    refuse: Callable[[int, str], None],
    dry_run: bool = False,
    invite_without_hash: bool = False,
    progress: Callable[[int], None] = lambda n: None,
) -> Tally:
    """Import the rows of ``read`` (:mod:`.import_rows`), a batch where a chunk ends one."""
    tally = Tally()
    batch: list[_Pending] = []
    async for chunk in read:
        progress(chunk.lines)
        tally.refused += len(chunk.refused)
        for line, reason in chunk.refused:
            refuse(line, reason)
        batch.extend(_pending(deps, parsed) for parsed in chunk.rows)
        if chunk.batch_ends:
            await _flush(deps, batch, tally, refuse, dry_run, invite_without_hash)
    await _flush(deps, batch, tally, refuse, dry_run, invite_without_hash)
    for writing in (tally.before, tally.writing):
        if writing is not None:
            await writing
    return tally


async def _flush(
    deps: Deps,
    batch: list[_Pending],
    tally: Tally,
    refuse: Callable[[int, str], None],
    dry_run: bool,
    invite_without_hash: bool,
) -> None:
    if dry_run:
        tally.imported += len(batch)
    elif batch:
        # Only rows with answers have work to wait for (most have none: no task for those).
        await asyncio.gather(*(_hashed(deps, p) for p in batch if p.answers))
        # One batch is written while the next is read and checked; writes stay in order, so
        # each batch's transaction sees the ones before it committed. A store that writes
        # its imports in order takes the next while one is written (so it never waits for
        # it); another is given one at a time.
        if tally.before is not None:
            await tally.before
        if tally.writing is not None and not deps.store.imports_in_order:
            await tally.writing
        write = _write(deps, list(batch), tally, refuse, invite_without_hash)
        tally.before, tally.writing = tally.writing, asyncio.ensure_future(write)
        await asyncio.sleep(0)  # its first step asks the store, before the next chunk is read
    batch.clear()


def _row(user: User, questions: Sequence[tuple[str, str]], secret: str | None) -> Row:
    accounts = sorted(user.accounts)
    return Row(
        UserName=user.username,
        Email=user.email,
        OMSId=user.oms_id,
        AccountId=user.account_id,
        AccountIds=accounts,
        Permissions=sorted(user.permissions),
        PasswordHash=user.password_hash or None,
        TotpSecret=secret,
        SecurityQuestions=[Question(q, AnswerHash=h) for q, h in questions],
        Locale=user.locale,
        Master=user.master,
        Active=user.active,
        AuthSource=user.auth_source,
        EmailVerified=user.email_verified,
    )


async def all_users(deps: Deps, page: int = BATCH) -> AsyncIterator[User]:
    """Every user by id, a page at a time."""
    last = 0
    while users := await deps.store.users_after(last, page):
        for user in users:
            yield user
        last = users[-1].id


async def export_rows(
    deps: Deps, users: AsyncIterator[User], *, include_secrets: bool = False
) -> AsyncIterator[bytes]:
    """Each user as a line of the import format: its hashes (password, answers) as stored;
    its TOTP secret only with ``include_secrets``."""
    encoder = msgspec.json.Encoder()
    async for user in users:
        stored = await deps.store.security_questions(user.id)
        questions = [(q.question, q.answer_hash) for q in stored]
        secret = None
        if include_secrets and user.totp_sealed is not None:
            secret = totp.open_secret(deps.sealer, user.id, user.totp_sealed)
        yield encoder.encode(_row(user, questions, secret)) + b"\n"
