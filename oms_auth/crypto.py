"""Secrets at rest: Argon2id hashing off the event loop, digests, tokens, and sealing.

Argon2id is deliberately slow, so it runs in a bounded thread pool (argon2-cffi releases the GIL)
behind a semaphore: when every worker is busy, callers wait their turn instead of growing an
unbounded queue, and the event loop keeps answering everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from argon2 import Parameters, PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keyring import (
    MAGIC,
    KeyRing,
    RingKey,
    audit_key,
    legacy_id,
    names_key,
    new_ring,
    read_ring,
    ring_from_env,
    sealed_prefix,
    write_ring,
)

__all__ = [
    "Hasher",
    "argon2_affordable",
    "Sealer",
    "digest",
    "new_token",
    "new_pending_code",
    "constant_time_equal",
    "load_or_create_key",
    "load_ring",
    "key_fingerprint",
    "audit_key",
    "names_key",
    "mail_context",
    "checkout_holding",
]


def _yield_to_the_loop() -> None:
    """Hash threads run at a lower priority (nice 10; per thread on Linux), so under a burst of
    hashing the event loop's thread still gets the CPU it needs to answer everyone else."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


# The most an Argon2 hash brought from elsewhere may cost a login (docs/import.md): libsodium's
# "sensitive" preset, the largest in common use (1 GiB, 4 passes: seconds, not hours). A hash
# asking more is not well formed: one login attempt with it would hold a hasher worker (and
# its memory) for as long as the hash says, and two would stop every login on the node.
_ARGON2_MAX_MEMORY_KIB = 1024 * 1024
_ARGON2_MAX_WORK_KIB = 4 * _ARGON2_MAX_MEMORY_KIB  # memory times passes
_ARGON2_MAX_LANES = 64


def _argon2_parameters(encoded: str) -> Parameters | None:
    try:
        return extract_parameters(encoded)
    except Exception:  # argon2-cffi raises several kinds for a malformed hash
        return None


def argon2_affordable(encoded: str) -> bool:
    """Whether an Argon2 hash is well formed and within the cost a login may pay for."""
    p = _argon2_parameters(encoded)
    return (
        p is not None
        and p.memory_cost <= _ARGON2_MAX_MEMORY_KIB
        and p.memory_cost * p.time_cost <= _ARGON2_MAX_WORK_KIB
        and p.parallelism <= _ARGON2_MAX_LANES
    )


class Hasher:
    """Argon2id hash and verify, in a bounded pool of worker threads. ``legacy`` verifies a
    hash that is not Argon2 (one brought by import), in the same pool: (hash, secret) -> ok."""

    def __init__(
        self,
        *,
        workers: int = 2,
        time_cost: int = 3,
        memory_cost: int = 65536,
        parallelism: int = 1,
        legacy: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._argon = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        self._legacy = legacy
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="argon2", initializer=_yield_to_the_loop
        )
        self._slots = asyncio.Semaphore(workers * 2)
        # How many secrets were checked (passwords, answers): /metrics shows it, so a brute
        # force is visible and a limit's worth of checks can be counted.
        self.checks = 0
        # Verifying against this when a user does not exist makes "no such user" cost the same
        # as "wrong password".
        # Computed in the pool, so start-up does not wait for it.
        self._decoy = self._pool.submit(self._argon.hash, secrets.token_hex(16))
        # What a verify costs, by the kind of hash (an average of the recent ones): a failed
        # check lasts at least as long as the costliest kind's, so a wrong password tells
        # nothing of whether the user exists or still has a hash brought by import
        # (docs/import.md, "At the next login").
        self._costs: dict[str, float] = {}

    def hash_sync(self, secret: str) -> str:
        return self._argon.hash(secret)

    def verify_sync(self, encoded: str | None, secret: str) -> bool:
        if encoded and not encoded.startswith("$argon2"):
            return self._legacy is not None and self._legacy(encoded, secret)
        if encoded and not self._affordable(encoded):
            return False
        try:
            decoy = self._decoy.result()
            return self._argon.verify(encoded or decoy, secret) and encoded is not None
        except (VerificationError, InvalidHashError):
            return False

    def _affordable(self, encoded: str) -> bool:
        """This hasher's own parameters, or an (imported) hash within :func:`argon2_affordable`."""
        p = _argon2_parameters(encoded)
        own = self._argon
        if p is not None and (p.memory_cost, p.time_cost, p.parallelism) == (
            own.memory_cost,
            own.time_cost,
            own.parallelism,
        ):
            return True
        return argon2_affordable(encoded)

    def needs_rehash(self, encoded: str) -> bool:
        """True for a hash that is not Argon2id with this hasher's parameters."""
        if not encoded.startswith("$argon2id$"):
            return True
        try:
            return self._argon.check_needs_rehash(encoded)
        except InvalidHashError:
            return True

    async def hash(self, secret: str) -> str:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self.hash_sync, secret
            )

    async def verify(self, encoded: str | None, secret: str) -> bool:
        """True when ``secret`` matches; ``None`` costs a verify against a decoy and is False.
        A False answer comes no sooner than :meth:`failure_floor` after the check began."""
        self.checks += 1
        async with self._slots:
            ok, took = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._timed_verify, encoded, secret
            )
        # Kept on the event loop's thread only: the workers just measure.
        kind = _hash_kind(encoded)
        last = self._costs.get(kind)
        # A running average, so one slow verify (a loaded machine) does not set the floor.
        self._costs[kind] = took if last is None else 0.8 * last + 0.2 * took
        if not ok:
            await asyncio.sleep(max(0.0, self.failure_floor() - took))
        return ok

    def failure_floor(self) -> float:
        """How long a failed check lasts at least: the costliest kind of hash's recent verify
        time (capped: a stall of the machine must not slow every failure for long)."""
        return min(max(self._costs.values(), default=0.0), _FLOOR_CAP)

    def _timed_verify(self, encoded: str | None, secret: str) -> tuple[bool, float]:
        started = time.monotonic()
        ok = self.verify_sync(encoded, secret)
        return ok, time.monotonic() - started

    def close(self) -> None:
        self._pool.shutdown(wait=True)


_FLOOR_CAP = 2.0  # seconds


def _hash_kind(encoded: str | None) -> str:
    """The kind of a stored hash, for its cost: its scheme (Argon2: with its parameters; no
    hash: the decoy, made with the deployment's own)."""
    if not encoded:
        return "decoy"
    if encoded.startswith("$argon2"):
        return "$".join(encoded.split("$")[:4])
    return encoded.split("$", 2)[1] if encoded.startswith("$") else encoded.split("$", 1)[0]


def digest(secret: str) -> bytes:
    """SHA-256 of a high-entropy secret (a token or a code): what the store keeps instead."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    """A session token: 256 random bits."""
    return secrets.token_urlsafe(32)


def new_pending_code() -> str:
    """A PendingCode: a version-4 GUID, 122 bits from the OS's secure source."""
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class Sealer:
    """AES-256-GCM with the service key ring: what the store holds cannot be read without it.
    New values are sealed with the ring's current key and name it (``keyring.sealed_prefix``);
    any live key of the ring opens what it sealed. ``refresh`` (when given) is asked for the
    ring again when a value names a key this ring does not hold: another node took up a newer
    ring first (docs/operations.md, "Rotating the service key")."""

    def __init__(
        self, key: bytes | KeyRing, *, refresh: Callable[[], KeyRing | None] | None = None
    ) -> None:
        if isinstance(key, bytes):
            if len(key) != 32:
                raise ValueError("the secret key must be 32 bytes")
            key = KeyRing(keys=(RingKey(id=legacy_id(key), created=0.0, key=key),))
        self._refresh = refresh
        self.use(key)

    def set_refresh(self, refresh: Callable[[], KeyRing | None] | None) -> None:
        self._refresh = refresh

    def use(self, ring: KeyRing) -> None:
        """Seal with ``ring``'s current key from now on (a running node taking up a rotation)."""
        self.ring = ring
        self._aeads = {k.id: AESGCM(k.key) for k in ring.keys}
        legacy = ring.legacy
        self._legacy = None if legacy is None else self._aeads[legacy.id]
        self._prefix = sealed_prefix(ring.current.id)

    @property
    def current_prefix(self) -> bytes:
        return self._prefix

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt; ``context`` (e.g. the row it belongs to) is bound in, so a sealed value
        copied to another row does not open there."""
        nonce = os.urandom(12)
        aead = self._aeads[self.ring.current.id]
        return self._prefix + nonce + aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        key_id, body = _named(sealed)
        if key_id is not None and key_id not in self._aeads and self._refresh is not None:
            newer = self._refresh()
            if newer is not None:
                self.use(newer)
        aead = self._aeads.get(key_id) if key_id is not None else None
        for candidate, blob in ((aead, body), (self._legacy, sealed)):
            if candidate is None:
                continue
            try:
                return candidate.decrypt(blob[:12], blob[12:], context)
            except InvalidTag:
                continue
        raise ValueError("sealed value does not open with this key ring")

    def key_id_of(self, sealed: bytes) -> str | None:
        """The id a sealed value names (None: sealed before ids, by the legacy key)."""
        return _named(sealed)[0]


def _named(sealed: bytes) -> tuple[str | None, bytes]:
    """The key id a sealed value starts with, and the rest; (None, value) without one."""
    if not sealed.startswith(MAGIC) or len(sealed) <= len(MAGIC):
        return None, sealed
    size = sealed[len(MAGIC)]
    raw = sealed[len(MAGIC) + 1 : len(MAGIC) + 1 + size]
    try:
        return raw.decode("ascii"), sealed[len(MAGIC) + 1 + size :]
    except UnicodeDecodeError:
        return None, sealed


def mail_context(user_id: int | None, kind: str) -> bytes:
    """What a queued message's sealed part is bound to: it opens only on its own row's kind
    and user (the engine seals, the outbox worker opens)."""
    return f"mail:{kind}:{user_id}".encode()


def checkout_holding(path: Path) -> Path | None:
    """The git work tree ``path`` lies in, unless git ignores it there: a key git does not
    ignore is one ``git add -A`` away from being committed. None outside a checkout, and for
    a key its ``.gitignore`` covers (this repository's covers the default key files)."""
    for folder in path.resolve().parents:
        if (folder / ".git").exists():
            return None if _ignored_by_git(folder, path.resolve()) else folder
    return None


def _ignored_by_git(work_tree: Path, path: Path) -> bool:
    """``git check-ignore``: True only when git answers that it ignores ``path`` (a tracked
    file is not ignored; no git, or a checkout git cannot read, cannot say so)."""
    import subprocess  # only for a key inside a checkout

    try:
        done = subprocess.run(
            ["git", "-C", str(work_tree), "check-ignore", "-q", "--", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def key_fingerprint(key: bytes) -> str:
    """What a store records of the key it was first used with: a keyed digest, never the key."""
    return hmac.new(key, b"oms-auth key fingerprint", hashlib.sha256).hexdigest()


def load_ring(path: Path | None, env_value: str | None) -> KeyRing:
    """The key ring from ``OMS_AUTH_SECRET_KEY``, else from the key file, which is made (a ring
    of one new key) when missing. Without the empty-store check the service makes
    (``app.build_deps``): for tools and tests that need the ring a command would use."""
    if env_value:
        return ring_from_env(env_value)
    if path is None:
        raise ValueError("no secret key file and no OMS_AUTH_SECRET_KEY")
    ring = read_ring(path)
    if ring is None:
        ring = new_ring()
        try:
            write_ring(path, ring, replace=False)
        except FileExistsError:  # another process made it first: theirs
            return load_ring(path, None)
    return ring


def load_or_create_key(path: Path | None, env_value: str | None) -> bytes:
    """The current key of :func:`load_ring`'s ring."""
    return load_ring(path, env_value).current.key
