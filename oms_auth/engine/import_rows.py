"""Reading an import's file (docs/import.md): each line parsed and checked as ``user add``
checks a user, its name compared with the earlier rows of the file, the rows handed on in
chunks that say where each batch (one transaction) ends.

``oms-auth user import`` reads in a process of its own (``python -m
oms_auth.engine.import_rows [--dry-run] FILE|-``), which writes the chunks to its standard
output, each as its length (4 bytes) and its msgpack; the importing process decodes them and
writes the users (:mod:`.transfer`). The two processes share no interpreter lock: in one
process the thread reading the file and the store's writing thread took it from each other
at every statement, and wrote slower than reading everything first and then writing would have
(docs/performance.md, "Importing users"). The pipe holds the reading back when the writing
lags, so memory stays flat. :func:`.transfer.import_lines` runs the same reading in its own
process (tests, callers with lines at hand).

What crosses the pipe is what the file holds: a TOTP secret and normalised answers go to the
importing process as they are, which seals and hashes them before they reach the store.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, BinaryIO

import msgspec

from ..errors import InvalidValue
from ..store import NewUser, username_key, username_skeleton
from . import legacy_hashes
from .answers import normalize_answer
from .users import check_factors, checked_user

__all__ = [
    "BATCH",
    "Row",
    "Question",
    "Parsed",
    "Chunk",
    "chunks",
    "frame",
    "decode_chunk",
    "fewer_collections",
    "quick_switches",
    "main",
]

BATCH = 1000  # rows per transaction
_AUTH_SOURCES = ("native", "openidconnect", "saml")
_MAX_LINE = 64 * 1024
# Lines after which a chunk goes out even if its batch is not full (a run of refused rows):
# its refusals are reported, and held, no longer than that.
_CHUNK_LINES = 1000


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


class Parsed(msgspec.Struct, array_like=True):
    """A row that passed every check of its own: its user (hashes as given), its TOTP secret
    (sealed by the importing process, for the id the store gives it) and its answers
    (question, normalised answer; hashed there unless the user is already in the store)."""

    line: int
    user: NewUser
    totp: str | None
    answers: list[tuple[str, str]]
    key: str  # username_key and username_skeleton of its name (the store takes them as they are)
    skeleton: str


class Chunk(msgspec.Struct, array_like=True):
    """What reading ``lines`` more lines of the file gave: rows, refusals (line, reason), and
    whether the batch ends with its last row (the importing process writes it then)."""

    lines: int = 0
    rows: list[Parsed] = []
    refused: list[tuple[int, str]] = []
    batch_ends: bool = False


_decoder = msgspec.json.Decoder(Row)
_chunk_encoder = msgspec.msgpack.Encoder()
_chunk_decoder = msgspec.msgpack.Decoder(Chunk)


def _accounts(row: Row) -> list[int]:
    if not row.AccountIds:
        return [] if row.AccountId is None else [row.AccountId]
    first = [row.AccountId] if row.AccountId is not None else []
    return first + [a for a in row.AccountIds if a != row.AccountId]


def _parse(line: int, raw: bytes) -> Parsed:
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
        check_factors(None, q.Question, q.Answer)
        answers.append((q.Question, normalize_answer(q.Answer or "")))
    user.questions = tuple(hashes)
    check_factors(row.TotpSecret, None, None)
    name = user.username
    return Parsed(line, user, row.TotpSecret, answers, username_key(name), username_skeleton(name))


def _reason(exc: Exception) -> str:
    if isinstance(exc, InvalidValue):
        return exc.detail or "invalid"
    if isinstance(exc, msgspec.ValidationError):
        return str(exc)
    return "not a JSON object"


class _Seen:
    """The names of the file's rows since the last batch (all of them, on a dry run): earlier
    batches are in the store, which compares against them. Key or skeleton -> line."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.looks: dict[str, int] = {}

    def clash(self, parsed: Parsed) -> str | None:
        """A name that repeats or looks like the name of an earlier row."""
        key, skeleton = parsed.key, parsed.skeleton
        if key in self.names:
            return f"the same username as line {self.names[key]}"
        if skeleton in self.looks:
            return f"the username looks like the one of line {self.looks[skeleton]}"
        self.names[key] = self.looks[skeleton] = parsed.line
        return None


def _read(chunk: Chunk, seen: _Seen, number: int, raw: bytes) -> None:
    """Line ``number`` into ``chunk``: a row, a refusal, or nothing (a blank line)."""
    chunk.lines += 1
    if not raw.strip():
        return
    try:
        parsed = _parse(number, raw)
    except (InvalidValue, msgspec.DecodeError) as exc:
        chunk.refused.append((number, _reason(exc)))
        return
    clash = seen.clash(parsed)
    if clash is not None:
        chunk.refused.append((number, clash))
    else:
        chunk.rows.append(parsed)


def chunks(lines: Iterable[bytes], *, dry_run: bool, batch_size: int = BATCH) -> Iterator[Chunk]:
    """The rows of ``lines`` (numbered from 1) in chunks; a batch ends every ``batch_size``
    rows, and with the last chunk."""
    seen, chunk, held = _Seen(), Chunk(), 0  # held: rows of the batch in earlier chunks
    for number, raw in enumerate(lines, 1):
        _read(chunk, seen, number, raw)
        full = held + len(chunk.rows) >= batch_size
        if full or chunk.lines >= _CHUNK_LINES:
            chunk.batch_ends = full
            held = 0 if full else held + len(chunk.rows)
            yield chunk
            chunk = Chunk()
            if full and not dry_run:
                seen = _Seen()
    chunk.batch_ends = True
    yield chunk


def frame(chunk: Chunk) -> bytes:
    """``chunk`` as it goes through the pipe: its length, then its msgpack."""
    body = _chunk_encoder.encode(chunk)
    return len(body).to_bytes(4, "big") + body


def decode_chunk(body: bytes) -> Chunk:
    """A chunk from the msgpack of :func:`frame` (without the length)."""
    return _chunk_decoder.decode(body)


# Young objects a collection of the cycle collector waits for during an import (Python's
# default: 700). An import allocates a batch's users and rows, then frees them, so with the
# default a collection ran every few rows and the full ones walked every object of the process
# (its modules, ICU's data): about 6% of an import's CPU. With this one collections are a few
# per million rows; a cycle left behind is still found at the next one, so memory stays flat.
_IMPORT_GC_THRESHOLD = 10_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collections of the cycle collector further apart, while an import runs."""
    saved = gc.get_threshold()
    gc.set_threshold(_IMPORT_GC_THRESHOLD, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


# How long the importing process's event loop may keep the interpreter lock from the SQLite
# writer's thread once that thread wants it back (Python's default: 5 ms). The thread gives the
# lock up at each statement and wants it back when the statement ends; the loop holds it in a
# burst per batch (the next batch's rows and arguments), right when a batch starts: with the
# default the writer's BEGIN, a few microseconds of work, took 3 to 4 ms (timed on a busy
# machine). With the reading in a process of its own the loop holds the lock a few ms a batch,
# so switching more often costs nothing measurable.
_IMPORT_SWITCH_INTERVAL = 0.0005


@contextmanager
def quick_switches() -> Iterator[None]:
    """The interpreter lock handed between threads sooner, while an import runs."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(_IMPORT_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def _send(source: BinaryIO, out: BinaryIO, dry_run: bool) -> None:
    with fewer_collections():
        for chunk in chunks(source, dry_run=dry_run):
            out.write(frame(chunk))
            out.flush()


def main(argv: list[str] | None = None) -> int:
    """The reading process: FILE (or standard input) to chunks on standard output."""
    # Ctrl-C reaches the whole process group: the importing process answers it and ends this
    # one, which has nothing to say about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="oms-auth user import (reading)")
    parser.add_argument("file", metavar="FILE|-")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.file == "-":
            _send(sys.stdin.buffer, sys.stdout.buffer, args.dry_run)
        else:
            with open(args.file, "rb") as source:
                _send(source, sys.stdout.buffer, args.dry_run)
    except BrokenPipeError:
        # The importing process is gone (killed, or it stopped on an error it reports):
        # stop quietly, and let no final flush complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"oms-auth: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
