"""Password hashes brought from another system (docs/import.md): recognised, verified with
their own algorithm, and replaced by Argon2id at the user's next login.

Each scheme is a prefix and a verifier. A verifier takes the stored text and the password and
answers True only when the password matches; every comparison of derived bytes is constant
time (``hmac.compare_digest``; bcrypt's own check is constant time). The verifiers are plain
blocking functions: :class:`~oms_auth.crypto.Hasher` runs them in its bounded pool, off the
event loop, as it runs Argon2id. Argon2 hashes (``$argon2id$``, ``$argon2i$``) are Argon2's
own and are verified by the Hasher itself; this module only names them for the counts.

A hash whose cost is out of bounds (an iteration count, a bcrypt cost, an Argon2 or scrypt
memory no login should pay for) is not well formed: it is refused at import, and never
verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable

import bcrypt

from ..crypto import argon2_affordable

__all__ = ["scheme_of", "well_formed", "verify", "count", "LEGACY_SCHEMES"]

_MAX_ITERATIONS = 10_000_000  # PBKDF2 rounds; today's recommendations are around 1,000,000
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024  # bytes: 128 * N * r * p
_BCRYPT_MAX_COST = 16  # 2^16 rounds, seconds a login; systems that made these used 10 to 14
_BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; the systems that made these hashes cut there


def _int(text: str, low: int, high: int) -> int:
    if not text.isdecimal() or len(text) > 12:
        raise ValueError("not a count")
    value = int(text)
    if not low <= value <= high:
        raise ValueError("out of bounds")
    return value


def _bcrypt(encoded: str, password: str) -> bool:
    secret = password.encode("utf-8", "surrogatepass")[:_BCRYPT_MAX_BYTES]
    return bcrypt.checkpw(secret, encoded.encode("ascii"))


def _pbkdf2(name: str, password: str, salt: bytes, rounds: int, length: int) -> bytes:
    secret = password.encode("utf-8", "surrogatepass")
    return hashlib.pbkdf2_hmac(name, secret, salt, rounds, length)


def _django(encoded: str, password: str) -> bool:
    """Django's ``pbkdf2_sha256$ITER$SALT$BASE64`` (and ``pbkdf2_sha1``): the salt as text,
    the derived key as long as the digest, in standard base64."""
    algorithm, rounds, salt, expected = encoded.split("$")
    name = algorithm.removeprefix("pbkdf2_")
    want = base64.b64decode(expected, validate=True)
    got = _pbkdf2(name, password, salt.encode(), _int(rounds, 1, _MAX_ITERATIONS), len(want))
    return hmac.compare_digest(got, want)


def _ab64(text: str) -> bytes:
    """passlib's adapted base64: ``.`` for ``+``, no padding."""
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _passlib(encoded: str, password: str) -> bool:
    """passlib's ``$pbkdf2-sha256$ROUNDS$SALT$HASH`` (and sha512), salt and hash in adapted
    base64."""
    _, algorithm, rounds, salt, expected = encoded.split("$")
    name = algorithm.removeprefix("pbkdf2-")
    want = _ab64(expected)
    got = _pbkdf2(name, password, _ab64(salt), _int(rounds, 1, _MAX_ITERATIONS), len(want))
    return hmac.compare_digest(got, want)


def _werkzeug_pbkdf2(encoded: str, password: str) -> bool:
    """werkzeug's ``pbkdf2:sha256:ITER$SALT$HEX``: the salt as text, the key in hex."""
    method, salt, expected = encoded.split("$")
    _, name, rounds = method.split(":")
    want = bytes.fromhex(expected)
    got = _pbkdf2(name, password, salt.encode(), _int(rounds, 1, _MAX_ITERATIONS), len(want))
    return hmac.compare_digest(got, want)


def _werkzeug_scrypt(encoded: str, password: str) -> bool:
    """werkzeug's ``scrypt:N:r:p$SALT$HEX``."""
    method, salt, expected = encoded.split("$")
    _, n_text, r_text, p_text = method.split(":")
    n, r, p = _int(n_text, 2, 2**24), _int(r_text, 1, 64), _int(p_text, 1, 64)
    if n & (n - 1) or 128 * n * r * p > _MAX_SCRYPT_MEMORY:
        raise ValueError("scrypt cost out of bounds")
    want = bytes.fromhex(expected)
    got = hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt.encode(),
        n=n,
        r=r,
        p=p,
        maxmem=132 * n * r * p,
        dklen=len(want),
    )
    return hmac.compare_digest(got, want)


def _argon2(encoded: str, password: str) -> bool:  # verified by the Hasher itself
    return False


Verifier = Callable[[str, str], bool]

# (prefix, scheme name as /metrics shows it, verifier), the first that matches wins.
_SCHEMES: tuple[tuple[str, str, Verifier], ...] = (
    ("$argon2id$", "argon2id", _argon2),
    ("$argon2i$", "argon2i", _argon2),
    ("$2a$", "bcrypt", _bcrypt),
    ("$2b$", "bcrypt", _bcrypt),
    ("$2y$", "bcrypt", _bcrypt),
    ("pbkdf2_sha256$", "django_pbkdf2_sha256", _django),
    ("pbkdf2_sha1$", "django_pbkdf2_sha1", _django),
    ("$pbkdf2-sha256$", "passlib_pbkdf2_sha256", _passlib),
    ("$pbkdf2-sha512$", "passlib_pbkdf2_sha512", _passlib),
    ("pbkdf2:sha256:", "werkzeug_pbkdf2_sha256", _werkzeug_pbkdf2),
    ("scrypt:", "werkzeug_scrypt", _werkzeug_scrypt),
)

LEGACY_SCHEMES = tuple(dict.fromkeys(name for _, name, _ in _SCHEMES if name != "argon2id"))
"""The scheme names a user can still be on until its next login (``argon2i`` included)."""


# The prefixes as one pattern tried in their order (the first that matches wins, as in
# _SCHEMES): one call per hash, where an import looks up a million.
_PREFIX = re.compile("|".join(re.escape(prefix) for prefix, _, _ in _SCHEMES))
_BY_PREFIX = {prefix: (name, verifier) for prefix, name, verifier in _SCHEMES}


def _entry(encoded: str) -> tuple[str, Verifier] | None:
    found = _PREFIX.match(encoded)
    return None if found is None else _BY_PREFIX[found.group()]


def scheme_of(encoded: str) -> str | None:
    """The scheme a stored hash is in, by its prefix; None for none this service knows."""
    entry = _entry(encoded)
    return entry[0] if entry else None


def well_formed(encoded: str) -> bool:
    """Whether ``encoded`` is a hash in a known scheme, whole and within cost bounds (what
    import accepts): its verifier runs against a throwaway password without failing."""
    entry = _entry(encoded)
    if entry is None or not encoded.isascii() or not encoded.isprintable():
        return False
    if entry[0].startswith("argon2"):
        return argon2_affordable(encoded)
    try:
        _shape_only(encoded)
    except (ValueError, binascii.Error, TypeError):
        return False
    return True


def _shape_only(encoded: str) -> None:
    """Parse a non-Argon2 hash without deriving anything (ValueError when malformed)."""
    if encoded.startswith("$2"):  # $2b$12$ + 22 characters of salt + 31 of hash
        if len(encoded) != 60 or encoded[3] != "$" or encoded[6] != "$":
            raise ValueError("not bcrypt")
        _int(encoded[4:6], 4, _BCRYPT_MAX_COST)
        return
    if encoded.startswith("pbkdf2_"):
        _, rounds, _, expected = encoded.split("$")
        _int(rounds, 1, _MAX_ITERATIONS)
        if not base64.b64decode(expected, validate=True):
            raise ValueError("empty")
    elif encoded.startswith("$pbkdf2-"):
        _, _, rounds, salt, expected = encoded.split("$")
        _int(rounds, 1, _MAX_ITERATIONS)
        if not _ab64(expected) or not _ab64(salt):
            raise ValueError("empty")
    elif encoded.startswith("pbkdf2:"):
        method, _, expected = encoded.split("$")
        _, name, rounds = method.split(":")
        _int(rounds, 1, _MAX_ITERATIONS)
        if name != "sha256" or not bytes.fromhex(expected):
            raise ValueError("empty")
    else:  # scrypt
        method, _, expected = encoded.split("$")
        _, n_text, r_text, p_text = method.split(":")
        n, r, p = _int(n_text, 2, 2**24), _int(r_text, 1, 64), _int(p_text, 1, 64)
        if n & (n - 1) or 128 * n * r * p > _MAX_SCRYPT_MEMORY or not bytes.fromhex(expected):
            raise ValueError("scrypt cost out of bounds")


def count(heads: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Users by legacy scheme (every scheme named, 0 included) from ``(hash head, users)``."""
    counts = dict.fromkeys(LEGACY_SCHEMES, 0)
    for head, n in heads:
        scheme = scheme_of(head)
        if scheme in counts:
            counts[scheme] += n
    return counts


def verify(encoded: str, password: str) -> bool:
    """True when ``password`` matches a non-Argon2 hash; False for a wrong password, an
    unknown scheme or a malformed hash (never an exception)."""
    entry = _entry(encoded)
    if entry is None or not well_formed(encoded):
        return False
    try:
        return entry[1](encoded, password)
    except (ValueError, binascii.Error, TypeError):
        return False
