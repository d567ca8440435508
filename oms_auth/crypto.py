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
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .files import PRIVATE, tighten

__all__ = [
    "Hasher",
    "Sealer",
    "digest",
    "new_token",
    "new_pending_code",
    "constant_time_equal",
    "load_or_create_key",
    "key_fingerprint",
    "key_from_env",
    "read_key_file",
    "write_key_file",
    "audit_key",
    "names_key",
    "devices_key",
    "mail_context",
    "checkout_holding",
]


def _yield_to_the_loop() -> None:
    """Hash threads run at a lower priority (nice 10; per thread on Linux), so under a burst of
    hashing the event loop's thread still gets the CPU it needs to answer everyone else."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


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

    def hash_sync(self, secret: str) -> str:
        return self._argon.hash(secret)

    def verify_sync(self, encoded: str | None, secret: str) -> bool:
        if encoded and not encoded.startswith("$argon2"):
            return self._legacy is not None and self._legacy(encoded, secret)
        try:
            decoy = self._decoy.result()
            return self._argon.verify(encoded or decoy, secret) and encoded is not None
        except (VerificationError, InvalidHashError):
            return False

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
        """True when ``secret`` matches; ``None`` costs a verify against a decoy and is False."""
        self.checks += 1
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self.verify_sync, encoded, secret
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True)


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
    """AES-256-GCM with the service key: what the store holds cannot be read without it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt; ``context`` (e.g. the row it belongs to) is bound in, so a sealed value
        copied to another row does not open there."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], context)
        except InvalidTag as exc:
            raise ValueError("sealed value does not open with this key") from exc


def mail_context(user_id: int | None, kind: str) -> bytes:
    """What a queued message's sealed part is bound to: it opens only on its own row's kind
    and user (the engine seals, the outbox worker opens)."""
    return f"mail:{kind}:{user_id}".encode()


def audit_key(service_key: bytes) -> bytes:
    """The key of the audit hash chain (HMAC-SHA256), derived from the service key: whoever
    holds the store alone cannot re-hash a row they edited."""
    return hmac.new(service_key, b"oms-auth audit chain", hashlib.sha256).digest()


def names_key(service_key: bytes) -> bytes:
    """The key of the digests that stand for usernames naming no user in the audit trail
    (``engine.names.unknown_name``), derived from the service key apart from the audit key:
    whoever holds the store alone cannot test a guessed name (or password) against one."""
    return hmac.new(service_key, b"oms-auth unknown usernames", hashlib.sha256).digest()


def devices_key(service_key: bytes) -> bytes:
    """The key of device HashCodes and opaque SessionIds (docs/protocol.md, "Sessions and
    devices"), derived from the service key apart from the others: the store alone says
    nothing of which device or token an id stands for."""
    return hmac.new(service_key, b"oms-auth devices and sessions", hashlib.sha256).digest()


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


def key_from_env(value: str) -> bytes:
    """The service key given as ``OMS_AUTH_SECRET_KEY`` (64 hex digits)."""
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("OMS_AUTH_SECRET_KEY must be 64 hex digits (32 bytes)")
    return key


def read_key_file(path: Path) -> bytes | None:
    """The key in ``path``; None when there is no such file. A file others may read is
    tightened to 0600 first (docs/operations.md, "The service key")."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        tighten(fd, path)
        text = f.read(1024)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError(f"secret key file {path} must hold 64 hex digits")
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Publish ``key`` at ``path``, mode 0600 whatever the umask; FileExistsError when a file is
    there already (never overwritten). Written and synced under a temporary name first, then
    linked into place, so a reader never finds half a key and a crash leaves none."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
        os.write(fd, (key.hex() + "\n").encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the new name itself is durable before anything is sealed with it
    finally:
        os.close(folder)


def load_or_create_key(path: Path | None, env_value: str | None) -> bytes:
    """The service key from ``OMS_AUTH_SECRET_KEY`` (hex), else from the key file, which is
    made when missing. Without the empty-store check the service makes (``app.build_deps``):
    for tools and tests that need the key a command would use."""
    if env_value:
        return key_from_env(env_value)
    if path is None:
        raise ValueError("no secret key file and no OMS_AUTH_SECRET_KEY")
    key = read_key_file(path)
    if key is None:
        key = secrets.token_bytes(32)
        try:
            write_key_file(path, key)
        except FileExistsError:  # another process made it first: theirs
            return load_or_create_key(path, None)
    return key
