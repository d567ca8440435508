"""Which service key a store opens with: the rule, decided once for both stores.

Rules (docs/operations.md, "The service key"):

- A store remembers the fingerprint of the key it was first used with (``meta.key_fingerprint``;
  a keyed digest, never the key).
- A new key (no key file was found) is taken only by an empty store: one that holds nothing
  sealed (TOTP secrets, API secrets, queued mail), no audit row (the chain is keyed with the
  service key) and no fingerprint. Its file is written while the store's migration lock is held
  and before the fingerprint is committed, so two processes starting at once cannot each make
  a key, and a crash in between leaves a key file and an unbound store (which binds next time),
  never a bound store without its key.
- A store with a fingerprint takes only a key ring holding the key with that fingerprint: the
  store's current key (``meta.current_key_id`` names it). A ring whose current key is newer
  moves the store on to it (fingerprint and id), so a node with an older ring, not holding the
  store's current key, is refused, naming that key (docs/operations.md, "Rotating the service
  key").
- A store from before fingerprints were kept, holding sealed data, refuses a new key; an existing
  key is taken when its audit chain verifies under it (one row suffices: nobody can forge a link
  without the key), and refused when none of its first rows does.

:func:`bind` runs the check in a store's migration transaction, through the one function the
store gives it to run a statement; the decision itself is :func:`refusal`'s, pure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import msgspec

from .audit import ChainKeys, chain_hash
from .records import StoreError

__all__ = [
    "KeyBinding",
    "KeyRefused",
    "MISSING",
    "DIFFERENT",
    "FINGERPRINT",
    "refusal",
    "sealed_query",
    "audit_proves_key",
    "AUDIT_PROOF_ROWS",
    "bind",
    "CURRENT_ID",
    "advance",
    "advance_plan",
    "ADVANCE_READ",
]

MISSING: Final = "missing"  # the key is new, and the store was used with another one
DIFFERENT: Final = "different"  # the key is not the one the store was used with
FINGERPRINT: Final = "key_fingerprint"  # its row in meta
CURRENT_ID: Final = "current_key_id"  # the id of the key it fingerprints

# The legacy check reads at most this many rows from the start of the audit trail.
AUDIT_PROOF_ROWS: Final = 1000
AUDIT_PROOF_SQL: Final = (
    "SELECT id, at, action, actor_id, target_id, target_name, source, detail, prev_hash, hash"
    f" FROM audit ORDER BY id LIMIT {AUDIT_PROOF_ROWS}"
)


class KeyBinding(msgspec.Struct, frozen=True, kw_only=True):
    """The key ring a process brings to a store: the fingerprint of its current key, those of
    its other live keys (``older``), the current key's id, and for a key made just now (no key
    file was found), ``adopt``, which writes its file. The store calls ``adopt`` under its
    migration lock, once it knows it is empty, before committing the fingerprint."""

    fingerprint: str
    key_id: str | None = None
    older: frozenset[str] = frozenset()
    adopt: Callable[[], None] | None = None

    @property
    def new(self) -> bool:
        return self.adopt is not None

    def holds(self, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint or fingerprint in self.older


class KeyRefused(StoreError):
    """The store will not open with this key. ``reason`` is :data:`MISSING` or
    :data:`DIFFERENT`; ``where`` names the store. The caller, which knows where the key came
    from, words the line the user reads."""

    def __init__(self, reason: str, where: str, current_id: str | None = None) -> None:
        self.reason = reason
        self.where = where
        self.current_id = current_id  # the store's current key, when it names one
        super().__init__(f"{where} refuses the secret key: {reason}")


def sealed_query(version: int) -> str | None:
    """A query answering whether a store at schema ``version`` holds anything the service key
    alone makes sense of (None: no tables yet, so nothing). The same text on both dialects."""
    if version < 1:
        return None
    parts = [
        "SELECT 1 FROM users WHERE totp_sealed IS NOT NULL",
        "SELECT 1 FROM outbox WHERE sealed IS NOT NULL",
        "SELECT 1 FROM audit",
    ]
    if version >= 4:  # API keys came with version 4
        parts.append("SELECT 1 FROM api_keys")
    return "SELECT EXISTS (" + " UNION ALL ".join(parts) + ")"


def audit_proves_key(audit_key: ChainKeys, version: int, rows: Iterable[Any]) -> bool | None:
    """Whether the audit rows (:data:`AUDIT_PROOF_SQL`'s) show that one of the ring's keys
    chained them: True when one row's hash is its link under one, False when rows are there
    and none is, None when there is nothing to tell by (no rows, or a chain from before it was
    keyed with the service key, version 3)."""
    if version < 3:
        return None
    seen = False
    candidates = {audit_key.legacy, *audit_key.by_id.values()}
    for row in rows:
        seen = True
        fields, prev_hash, digest = tuple(row[:8]), row[8], row[9]
        if any(chain_hash(k, prev_hash, *fields) == digest for k in candidates):
            return True
    return False if seen else None


def refusal(
    binding: KeyBinding, stored: str | None, holds_sealed: bool, proof: bool | None
) -> str | None:
    """Why the store refuses ``binding`` (:data:`MISSING`, :data:`DIFFERENT`), None when it
    takes it. ``stored``: its recorded fingerprint; ``holds_sealed``: :func:`sealed_query`'s
    answer; ``proof``: :func:`audit_proves_key`'s, for a store without a fingerprint."""
    if stored is not None:
        if binding.holds(stored):
            return None
        return MISSING if binding.new else DIFFERENT
    if not holds_sealed:
        return None
    if binding.new:
        return MISSING
    return DIFFERENT if proof is False else None


# Runs one statement (``?`` placeholders) in the store's migration transaction; its rows.
Fetch = Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]]

_META = "SELECT value FROM meta WHERE key = ?"
_SET = "UPDATE meta SET value = ? WHERE key = ?"
_ADD = "INSERT INTO meta (key, value) VALUES (?, ?)"


async def _stored(fetch: Fetch, name: str) -> str | None:
    rows = await fetch(_META, (name,))
    return str(rows[0][0]) if rows else None


async def bind(
    binding: KeyBinding, *, audit_key: ChainKeys, version: int, where: str, fetch: Fetch
) -> None:
    """Check ``binding`` against a store at schema ``version`` (before its migrations run: a
    refused key must not re-chain anything) and, when it is taken, record its current key (a
    new key's file is written first). :class:`KeyRefused` otherwise, which rolls the
    transaction back."""
    stored = await _stored(fetch, FINGERPRINT)
    holds, proof = False, None
    query = sealed_query(version)
    if stored is None and query is not None:
        holds = bool((await fetch(query, ()))[0][0])
    if stored is None and holds and not binding.new:
        proof = audit_proves_key(audit_key, version, await fetch(AUDIT_PROOF_SQL, ()))
    reason = refusal(binding, stored, holds, proof)
    if reason is not None:
        raise KeyRefused(reason, where, await _stored(fetch, CURRENT_ID))
    if stored is None and binding.adopt is not None:
        binding.adopt()
    await advance(binding, fetch)


ADVANCE_READ: Final = f"SELECT key, value FROM meta WHERE key IN ('{FINGERPRINT}', '{CURRENT_ID}')"


def advance_plan(
    binding: KeyBinding, stored: dict[str, str]
) -> list[tuple[str, tuple[str, str]]] | None:
    """The statements that record ``binding``'s current key as the store's (``stored``: its
    :data:`FINGERPRINT` and :data:`CURRENT_ID` rows), when the store's is one of the ring's
    keys: a rotation taken up (nothing when it is already the current one). None when the
    store's current key is not in the ring: a newer ring moved it on, this one is out of date."""
    fingerprint = stored.get(FINGERPRINT)
    if fingerprint is not None and not binding.holds(fingerprint):
        return None
    steps = []
    for name, value in ((FINGERPRINT, binding.fingerprint), (CURRENT_ID, binding.key_id)):
        if value is None or stored.get(name) == value:
            continue
        steps.append((_ADD, (name, value)) if name not in stored else (_SET, (value, name)))
    return steps


async def advance(binding: KeyBinding, fetch: Fetch) -> bool:
    """:func:`advance_plan`, run: False (changing nothing) when the ring is out of date."""
    rows = await fetch(ADVANCE_READ, ())
    steps = advance_plan(binding, {str(k): str(v) for k, v in rows})
    for statement, args in steps or ():
        await fetch(statement, args)
    return steps is not None
