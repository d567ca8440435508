"""Users in and out as JSON Lines (docs/import.md): ``oms-auth user import`` and ``export``.

A row is checked as ``user add`` checks its flags (:func:`.users.checked_user`,
:func:`.users.check_secrets`), its hash must be one :mod:`.legacy_hashes` knows, and its name
must not look like a name of an earlier row of the same batch (earlier batches are in the store,
which compares against them). Rows go to the store in batches, one transaction each; a refused
row writes nothing and the others go on. Answers are hashed (Argon2id, in the hashing pool) and
TOTP secrets sealed as the batch is built; the plain values never reach the store.

Running a file again finds its users there ("already there"), so an import cut short (Ctrl-C,
SIGKILL) is finished by running it again. Only one batch is held at a time: memory stays flat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from ..errors import InvalidValue
from ..store import AuditEntry, Imported, ImportItem, User, username_key, username_skeleton
from . import legacy_hashes, totp
from .answers import normalize_answer
from .deps import Deps
from .users import check_secrets, checked_user, invite

__all__ = ["Row", "Question", "Tally", "import_lines", "export_rows", "all_users", "BATCH"]

BATCH = 1000  # rows per transaction
_AUTH_SOURCES = ("native", "openidconnect", "saml")
_MAX_LINE = 64 * 1024
_YIELD_EVERY = 25  # rows read between two turns of the event loop


# An OMS or account id: what both stores hold (a 64-bit integer), and positive, as every id this
# service makes is. A row with another is refused by its line (one past the stores' range
# stopped the whole import).
Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class Question(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A security question with its answer in the clear (hashed as it is imported) or the
    Argon2id hash of its normalised answer (what export writes)."""

    Question: str
    Answer: str | None = None
    AnswerHash: str | None = None


class Row(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One user as a line of the file (docs/import.md, "The format")."""

    UserName: str
    Email: str
    OMSId: Id = 1
    AccountId: Id | None = None
    AccountIds: list[Id] = []
    Permissions: list[str] = []
    PasswordHash: str | None = None
    TotpSecret: str | None = None
    SecurityQuestions: list[Question] = []
    Locale: str | None = None
    Master: bool = False
    Active: bool = True
    AuthSource: str = "native"
    EmailVerified: bool = False
    DateTimeCreated: str | None = None  # taken for the record of the other system; not kept


_decoder = msgspec.json.Decoder(Row)


@dataclass
class Tally:
    """What an import did (the summary line)."""

    imported: int = 0
    already: int = 0
    refused: int = 0
    invited: int = 0
    # The names of the batch being built (all of them, on a dry run): key or skeleton -> line
    names: dict[str, int] = field(default_factory=dict)
    looks: dict[str, int] = field(default_factory=dict)
    writing: asyncio.Future[None] | None = None  # the batch being written


@dataclass
class _Pending:
    line: int
    item: ImportItem
    answers: list[tuple[str, str]]  # (question, normalised answer), hashed before the write


def _accounts(row: Row) -> list[int]:
    if not row.AccountIds:
        return [] if row.AccountId is None else [row.AccountId]
    first = [row.AccountId] if row.AccountId is not None else []
    return first + [a for a in row.AccountIds if a != row.AccountId]


def _parse(deps: Deps, line: int, raw: bytes) -> _Pending:
    """The row's user, checked (InvalidValue or msgspec's ValidationError with the reason)."""
    if len(raw) > _MAX_LINE:
        raise InvalidValue(f"longer than {_MAX_LINE} bytes")
    row = _decoder.decode(raw)
    if row.AuthSource not in _AUTH_SOURCES:
        raise InvalidValue("AuthSource must be one of " + ", ".join(_AUTH_SOURCES))
    user = checked_user(
        username=row.UserName,
        email=row.Email,
        oms=row.OMSId,
        permissions=row.Permissions,
        accounts=_accounts(row),
        master=row.Master,
        auth_source=row.AuthSource,
        active=row.Active,
        locale=row.Locale,
        email_verified=row.EmailVerified,
    )
    if row.PasswordHash:
        if not legacy_hashes.well_formed(row.PasswordHash):
            raise InvalidValue("PasswordHash is in no format this service knows")
        user.password_hash = row.PasswordHash
    answers, hashes = [], []
    for q in row.SecurityQuestions:
        if q.AnswerHash is not None and q.Answer is None:
            if not q.AnswerHash.startswith("$argon2id$") or not legacy_hashes.well_formed(
                q.AnswerHash
            ):
                raise InvalidValue("AnswerHash must be an Argon2id hash")
            hashes.append((q.Question, q.AnswerHash))
            continue
        check_secrets(deps, user.username, None, None, q.Question, q.Answer)
        answers.append((q.Question, normalize_answer(q.Answer or "")))
    user.questions = tuple(hashes)
    check_secrets(deps, user.username, None, row.TotpSecret, None, None)
    secret = row.TotpSecret
    sealer = deps.sealer
    seal = None if secret is None else lambda uid: totp.seal_secret(sealer, uid, secret)
    audit = AuditEntry(action="user-imported", target_name=user.username, source="cli")
    return _Pending(line, ImportItem(user=user, audit=audit, seal_totp=seal), answers)


def _reason(exc: Exception) -> str:
    if isinstance(exc, InvalidValue):
        return exc.detail or "invalid"
    if isinstance(exc, msgspec.ValidationError):
        return str(exc)
    return "not a JSON object"


def _in_file(tally: Tally, pending: _Pending) -> str | None:
    """A name that repeats or looks like the name of an earlier row of the file."""
    name = pending.item.user.username
    key, skeleton = username_key(name), username_skeleton(name)
    if key in tally.names:
        return f"the same username as line {tally.names[key]}"
    if skeleton in tally.looks:
        return f"the username looks like the one of line {tally.looks[skeleton]}"
    tally.names[key] = tally.looks[skeleton] = pending.line
    return None


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
    # Only rows with answers have work to wait for (most have none: no task for those).
    await asyncio.gather(*(_hashed(deps, p) for p in batch if p.answers))
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
    """Import the users of ``lines`` (1-based line numbers in ``refuse(line, reason)``)."""
    tally = Tally()
    batch: list[_Pending] = []
    for number, raw in enumerate(lines, 1):
        progress(1)
        if number % _YIELD_EVERY == 0:
            await asyncio.sleep(0)  # the batch being written takes its next step meanwhile
        if not raw.strip():
            continue
        try:
            pending = _parse(deps, number, raw)
        except (InvalidValue, msgspec.DecodeError) as exc:
            tally.refused += 1
            refuse(number, _reason(exc))
            continue
        clash = _in_file(tally, pending)
        if clash is not None:
            tally.refused += 1
            refuse(number, clash)
            continue
        batch.append(pending)
        if len(batch) >= batch_size:
            await _flush(deps, batch, tally, refuse, dry_run, invite_without_hash)
    await _flush(deps, batch, tally, refuse, dry_run, invite_without_hash)
    if tally.writing is not None:
        await tally.writing
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
        # One batch is written while the next is read and checked; writes stay in order, so
        # each batch's transaction sees the ones before it committed.
        if tally.writing is not None:
            await tally.writing
        write = _write(deps, list(batch), tally, refuse, invite_without_hash)
        tally.writing = asyncio.ensure_future(write)
    batch.clear()
    if not dry_run:
        # earlier batches are in the store: it compares against them
        tally.names.clear()
        tally.looks.clear()


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
