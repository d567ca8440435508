"""What ``Store.import_users`` decides for a batch, written once for both stores: which users
clash with the store's names, and the rows of those written (docs/import.md, "Speed").

Each store reads the names and skeletons the batch's users clash with (in one statement each,
its own dialect for "any of these"), inserts the fresh users in one go and reads back their
ids; everything between is here. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec

from . import sql as q
from .records import (
    AuditEntry,
    Imported,
    ImportItem,
    NewUser,
    same_email,
)

__all__ = [
    "Names",
    "Written",
    "names",
    "name_pair",
    "conflicts",
    "written",
    "dependents",
    "needing_accounts",
    "with_new_accounts",
    "HIGHEST_ACCOUNT",
]

# The highest account id of an OMS: a user imported without one gets the next (both stores).
HIGHEST_ACCOUNT = "SELECT coalesce(max(id), 0) FROM accounts WHERE oms_id = ?"


class Names(NamedTuple):
    """The batch's username keys and skeletons, in order."""

    keys: list[str]
    skeletons: list[str]


class Written(NamedTuple):
    """The outcome of each item, the audit entries and sealed TOTP secrets of those written."""

    outcomes: list[tuple[Imported, int | None]]
    audit: list[AuditEntry]
    sealed: list[tuple[bytes, int]]  # (sealed secret, user id): set_totp's arguments


def name_pair(item: ImportItem) -> tuple[str, str]:
    """The item's username key and skeleton: as its caller gave them, or computed."""
    return item.names or q.names_of(item.user.username)


def names(batch: Sequence[ImportItem]) -> Names:
    pairs = [name_pair(item) for item in batch]
    return Names([key for key, _ in pairs], [skeleton for _, skeleton in pairs])


def conflicts(
    batch: Sequence[ImportItem],
    of: Names,
    taken: Iterable[tuple[str, str]],
    looks: Iterable[tuple[str, str]],
) -> list[Imported | None]:
    """Per item, why it cannot be written, or None. ``taken``: (key, email) of the store's
    users holding a key of the batch; ``looks``: (skeleton, key) of those holding a skeleton."""
    emails = dict(taken)
    alike: dict[str, set[str]] = {}
    for skeleton, key in looks:
        alike.setdefault(skeleton, set()).add(key)
    out: list[Imported | None] = []
    for item, key, skeleton in zip(batch, of.keys, of.skeletons, strict=True):
        if key in emails:
            same = same_email(emails[key], item.user.email)
            out.append(Imported.ALREADY if same else Imported.TAKEN)
        elif alike.get(skeleton, set()) - {key}:
            out.append(Imported.LOOKALIKE)
        else:
            out.append(None)
    return out


def needing_accounts(users: Sequence[NewUser]) -> list[int]:
    """The OMSs in which some of ``users`` need a new account (they name none)."""
    return sorted({user.oms_id for user in users if not user.accounts})


def with_new_accounts(users: Sequence[NewUser], highest: dict[int, int]) -> list[NewUser]:
    """``users``, each without an account given the next free one of its OMS (``highest``:
    the highest account id of each OMS in :func:`needing_accounts`, as read under the lock
    that keeps it)."""
    for user in users:  # nor one the batch names itself
        if user.oms_id in highest and user.accounts:
            highest[user.oms_id] = max(highest[user.oms_id], *user.accounts)
    out = []
    for user in users:
        if not user.accounts:
            highest[user.oms_id] += 1
            user = msgspec.structs.replace(user, accounts=(highest[user.oms_id],))
        out.append(user)
    return out


def dependents(
    ids: Sequence[int], users: Sequence[NewUser]
) -> tuple[list[tuple[object, ...]], ...]:
    """The rows hanging on new users: accounts, their links, permissions, questions (each the
    arguments of its ``insert_*`` statement)."""
    pairs = list(zip(ids, users, strict=True))
    return (
        [row for user in users for row in q.account_args(user)],
        [row for uid, user in pairs for row in q.user_account_args(uid, user)],
        [(uid, p) for uid, user in pairs for p in user.permissions],
        [(uid, question, a) for uid, user in pairs for question, a in user.questions],
    )


def written(
    batch: Sequence[ImportItem], found: Sequence[Imported | None], ids: dict[str, int], of: Names
) -> Written:
    """The batch's outcomes once its fresh users got ``ids`` (by username key)."""
    result = Written([], [], [])
    for item, clash, key in zip(batch, found, of.keys, strict=True):
        if clash is not None:
            result.outcomes.append((clash, None))
            continue
        user_id = ids[key]
        result.outcomes.append((Imported.DONE, user_id))
        result.audit.append(msgspec.structs.replace(item.audit, target_id=user_id))
        if item.seal_totp is not None:
            result.sealed.append((item.seal_totp(user_id), user_id))
    return result
