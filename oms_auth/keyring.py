"""The service key ring: the current key and older ones, each with an id (docs/operations.md,
"Rotating the service key").

Rules:

- The current key seals every new value and chains every new audit row; every key in the ring
  still opens what it sealed. A sealed value starts with the id of the key that sealed it
  (:data:`MAGIC`, a length byte, the id); a value without it was sealed before key ids, by
  the ring's legacy key, and opens with it.
- A key file holding one key as 64 hex digits (what oms-auth wrote before rings) is a ring of
  one, whose id is derived from the key (:func:`legacy_id`): every node reading that file
  names it alike. The file is rewritten as a ring (JSON) by the first ``key rotate``.
- ``OMS_AUTH_SECRET_KEY`` is either that one key in hex, or ``id:base64,id:base64``, current
  first.
- A retired key opens nothing any more; the ring keeps only its audit key (to check the rows
  it chained; no value can be opened with it) and its id.
- Digests that stand for unknown usernames keep one key across rotations (``names``): fixed
  when the ring is first written, derived from its oldest key until then.
- The file is written whole under a temporary name, synced, mode 0600 whatever the umask, then
  renamed into place: a node reading it never finds half a ring.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from .files import PRIVATE, tighten

__all__ = [
    "MAGIC",
    "RingKey",
    "RetiredKey",
    "KeyRing",
    "RingError",
    "legacy_id",
    "sealed_prefix",
    "parse_ring",
    "ring_from_env",
    "read_ring",
    "write_ring",
    "ring_lock",
    "audit_key",
    "names_key",
]

# What starts a value sealed with a named key (a legacy value starts with its random nonce:
# the odds that one starts with these five bytes are 2^-40, and it would still open, below).
MAGIC: Final = b"\x00oks1"
_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class RingError(ValueError):
    """A key ring that cannot be read or changed as asked; its text names no key."""


def audit_key(service_key: bytes) -> bytes:
    """The key of the audit hash chain (HMAC-SHA256), derived from a service key: whoever
    holds the store alone cannot re-hash a row they edited."""
    return hmac.new(service_key, b"oms-auth audit chain", hashlib.sha256).digest()


def names_key(service_key: bytes) -> bytes:
    """The key of the digests that stand for usernames naming no user in the audit trail
    (``engine.names.unknown_name``), derived from a service key apart from the audit key:
    whoever holds the store alone cannot test a guessed name (or password) against one."""
    return hmac.new(service_key, b"oms-auth unknown usernames", hashlib.sha256).digest()


def legacy_id(key: bytes) -> str:
    """The id of a key given alone (a key file or variable from before rings): derived from it,
    so every node names it alike, and telling nothing of it."""
    return "k" + hmac.new(key, b"oms-auth key id", hashlib.sha256).hexdigest()[:8]


def sealed_prefix(key_id: str) -> bytes:
    """What starts every value sealed with ``key_id``."""
    raw = key_id.encode("ascii")
    return MAGIC + bytes([len(raw)]) + raw


class RingKey(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created: float
    key: bytes

    def __repr__(self) -> str:  # never the key
        return f"RingKey(id={self.id!r}, created={self.created})"


class RetiredKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key that opens nothing any more: its audit key checks the rows it chained."""

    id: str
    created: float
    audit: bytes
    legacy: bool = False

    def __repr__(self) -> str:
        return f"RetiredKey(id={self.id!r}, created={self.created})"


class KeyRing(msgspec.Struct, frozen=True, kw_only=True):
    """Live keys, current first; retired ones; the names key when fixed."""

    keys: tuple[RingKey, ...]
    retired: tuple[RetiredKey, ...] = ()
    names: bytes | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise RingError("a key ring holds at least one key")
        ids = [k.id for k in self.keys] + [k.id for k in self.retired]
        if len(set(ids)) != len(ids):
            raise RingError("a key ring names each key once")
        for k in self.keys:
            if len(k.key) != 32 or not _ID.fullmatch(k.id):
                raise RingError("each key is 32 bytes with an id of letters, digits, - and _")

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids})"

    @property
    def current(self) -> RingKey:
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def get(self, key_id: str) -> RingKey | None:
        return next((k for k in self.keys if k.id == key_id), None)

    @property
    def legacy(self) -> RingKey | None:
        """The live key that sealed values without an id: the one named by :func:`legacy_id`,
        else (a ring given with ids of its own) the oldest; None once retired."""
        if any(k.legacy for k in self.retired):
            return None
        named = [k for k in self.keys if k.id == legacy_id(k.key)]
        return named[0] if named else self.keys[-1]

    def names_key(self) -> bytes:
        return self.names if self.names is not None else names_key(self.keys[-1].key)

    def devices_key(self) -> bytes:
        """The key of device HashCodes and opaque SessionIds (docs/protocol.md, "Sessions and
        devices"): derived from the names key, so it stays as it was across rotations (a
        device's HashCode must not change with the key) and tells nothing of the others."""
        return hmac.new(self.names_key(), b"oms-auth devices and sessions", hashlib.sha256).digest()

    def audit_keys(self) -> tuple[dict[str, bytes], bytes]:
        """The audit key of every key, retired ones too, by id; and the legacy key's (for
        rows that name none): what ``store.audit.ChainKeys`` is made of."""
        by_id = {k.id: audit_key(k.key) for k in self.keys}
        by_id.update({k.id: k.audit for k in self.retired})
        legacy = self.legacy
        retired_legacy = [k.audit for k in self.retired if k.legacy]
        return by_id, audit_key(legacy.key) if legacy else retired_legacy[0]

    def rotated(self, now: float) -> KeyRing:
        """A new current key, every key before kept; the names key fixed as it was."""
        new = RingKey(id="k" + secrets.token_hex(4), created=now, key=secrets.token_bytes(32))
        return KeyRing(keys=(new, *self.keys), retired=self.retired, names=self.names_key())

    def retired_key(self, key_id: str) -> KeyRing:
        """The ring without ``key_id`` as a live key (the current key cannot go)."""
        gone = self.get(key_id)
        if gone is None:
            raise RingError(f"the key ring holds no live key {key_id}")
        if gone is self.current:
            raise RingError(f"{key_id} is the current key: rotate first")
        left = tuple(k for k in self.keys if k.id != key_id)
        was_legacy = self.legacy is gone
        kept = RetiredKey(
            id=gone.id, created=gone.created, audit=audit_key(gone.key), legacy=was_legacy
        )
        return KeyRing(keys=left, retired=(*self.retired, kept), names=self.names_key())


# -- the file and the variable -------------------------------------------------------------


class _FileKey(msgspec.Struct, frozen=True):
    id: str
    created: float
    key: str


class _FileRetired(msgspec.Struct, frozen=True):
    id: str
    created: float
    audit: str
    legacy: bool = False


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    keys: list[_FileKey]
    retired: list[_FileRetired] = []
    names: str | None = None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RingError("a key in the ring is not base64") from None


def _single(text: str) -> bytes | None:
    """The one key of a pre-ring file or variable (64 hex digits), else None."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        return None
    return key if len(key) == 32 else None


def parse_ring(text: str, *, created: float = 0.0) -> KeyRing:
    """A key file's text: a ring (JSON) or one key in hex (``created``: when it was made)."""
    single = _single(text)
    if single is not None:
        return KeyRing(keys=(RingKey(id=legacy_id(single), created=created, key=single),))
    try:
        data = msgspec.json.decode(text, type=_File)
    except msgspec.DecodeError:
        raise RingError("it holds neither a key ring nor a key in 64 hex digits") from None
    return KeyRing(
        keys=tuple(RingKey(id=k.id, created=k.created, key=_b64(k.key)) for k in data.keys),
        retired=tuple(
            RetiredKey(id=k.id, created=k.created, audit=_b64(k.audit), legacy=k.legacy)
            for k in data.retired
        ),
        names=None if data.names is None else _b64(data.names),
    )


def ring_from_env(value: str) -> KeyRing:
    """``OMS_AUTH_SECRET_KEY``: one key in hex, or ``id:base64,id:base64`` (current first)."""
    single = _single(value)
    if single is not None:
        return KeyRing(keys=(RingKey(id=legacy_id(single), created=0.0, key=single),))
    keys = []
    for part in value.split(","):
        key_id, sep, encoded = part.strip().partition(":")
        if not sep:
            raise RingError(
                "OMS_AUTH_SECRET_KEY must be 64 hex digits, or id:base64,id:base64 (current first)"
            )
        keys.append(RingKey(id=key_id, created=0.0, key=_b64(encoded)))
    return KeyRing(keys=tuple(keys))


def ring_text(ring: KeyRing) -> str:
    def enc(b: bytes) -> str:
        return base64.b64encode(b).decode()

    data = _File(
        keys=[_FileKey(id=k.id, created=k.created, key=enc(k.key)) for k in ring.keys],
        retired=[
            _FileRetired(id=k.id, created=k.created, audit=enc(k.audit), legacy=k.legacy)
            for k in ring.retired
        ],
        names=enc(ring.names_key()),
    )
    return msgspec.json.format(msgspec.json.encode(data).decode(), indent=2) + "\n"


def read_ring(path: Path) -> KeyRing | None:
    """The ring in ``path``; None when there is no such file. A file others may read is
    tightened to 0600 first. RingError when it holds no ring."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        tighten(fd, path)
        made = os.fstat(fd).st_mtime
        raw = f.read(1 << 20)
    try:
        return parse_ring(raw.decode("ascii"), created=made)
    except (UnicodeDecodeError, RingError) as exc:
        reason = exc if isinstance(exc, RingError) else "it is not text"
        raise RingError(f"secret key file {path}: {reason}") from None


def write_ring(path: Path, ring: KeyRing, *, replace: bool) -> None:
    """Publish ``ring`` at ``path``, mode 0600 whatever the umask. Written and synced under a
    temporary name, then renamed into place (``replace``) or linked there (FileExistsError
    when a file is there already: two processes making a first key do not overwrite each
    other); the folder is synced, so the new name is durable before anything uses the key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    single = (
        len(ring.keys) == 1 and not ring.retired and ring.current.id == legacy_id(ring.current.key)
    )
    text = ring.current.key.hex() + "\n" if single else ring_text(ring)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def ring_lock(path: Path) -> Iterator[None]:
    """Hold the lock of changes to the ring at ``path`` (an exclusive ``flock`` on a file beside
    it, mode 0600): a change reads the ring, adds or drops a key and writes it whole, so two at
    once would each drop what the other added (a rotated key the store already seals with,
    lost). Readers need no lock: a ring is published by one rename."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def new_ring() -> KeyRing:
    """A ring of one new key, for an empty store (written as one key in hex: the form every
    oms-auth reads)."""
    key = secrets.token_bytes(32)
    return KeyRing(keys=(RingKey(id=legacy_id(key), created=time.time(), key=key),))
