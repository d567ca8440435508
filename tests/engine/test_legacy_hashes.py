"""docs/import.md, "Password hashes": every scheme import takes verifies its own real hashes
(made by the scheme's library, published by it, or derived as its documentation says), refuses a
wrong password, and a malformed or costly hash is not well formed."""

from __future__ import annotations

import base64
import hashlib

import argon2
import bcrypt
import pytest

from oms_auth.crypto import Hasher
from oms_auth.engine import legacy_hashes

PASSWORD = "Correct-Horse9 ünï"


def django(password: str, salt: str, rounds: int, name: str = "sha256") -> str:
    """Django's PBKDF2PasswordHasher.encode: the salt as text, the key in standard base64."""
    key = hashlib.pbkdf2_hmac(name, password.encode(), salt.encode(), rounds)
    return f"pbkdf2_{name}${rounds}${salt}${base64.b64encode(key).decode()}"


def werkzeug_pbkdf2(password: str, salt: str, rounds: int) -> str:
    """werkzeug.security.generate_password_hash(method="pbkdf2:sha256:ROUNDS")."""
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), rounds)
    return f"pbkdf2:sha256:{rounds}${salt}${key.hex()}"


def werkzeug_scrypt(password: str, salt: str, n: int = 1024, r: int = 8, p: int = 1) -> str:
    """werkzeug.security.generate_password_hash(method="scrypt:N:r:p")."""
    key = hashlib.scrypt(
        password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p
    )
    return f"scrypt:{n}:{r}:{p}${salt}${key.hex()}"


def passlib(password: str, salt: bytes, rounds: int, name: str = "sha256") -> str:
    """passlib.hash.pbkdf2_sha256/512: salt and key in passlib's adapted base64."""
    key = hashlib.pbkdf2_hmac(name, password.encode(), salt, rounds)

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-{name}${rounds}${ab64(salt)}${ab64(key)}"


def bcrypt_hash(password: str, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4, prefix=prefix)).decode()


HASHES = {
    "bcrypt $2b$": bcrypt_hash(PASSWORD),
    "bcrypt $2a$": bcrypt_hash(PASSWORD, b"2a"),
    # PHP's password_hash writes $2y$: the same algorithm under another name
    "bcrypt $2y$": bcrypt_hash(PASSWORD).replace("$2b$", "$2y$", 1),
    "django pbkdf2_sha256": django(PASSWORD, "seasalt", 1000),
    "django pbkdf2_sha1": django(PASSWORD, "seasalt", 1000, "sha1"),
    "passlib pbkdf2-sha256": passlib(PASSWORD, b"\xfb\x01salt", 1000),
    "passlib pbkdf2-sha512": passlib(PASSWORD, b"\xfb\x01salt", 1000, "sha512"),
    "werkzeug pbkdf2:sha256": werkzeug_pbkdf2(PASSWORD, "Zy8sYQ9P", 1000),
    "werkzeug scrypt": werkzeug_scrypt(PASSWORD, "Zy8sYQ9P"),
}

# Published by passlib's documentation (pbkdf2_sha256.hash("password") and a using(...) one).
PUBLISHED = [
    (
        "$pbkdf2-sha256$6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M",
        "password",
    ),
    ("$pbkdf2-sha256$8000$XAuBMIYQQogxRg$tRRlz8hYn63B9LYiCd6PRo6FMiunY9ozmMMI3srxeRE", "password"),
]


@pytest.mark.parametrize("name", HASHES)
def test_each_scheme_verifies_its_own_hash_and_refuses_a_wrong_password(name: str) -> None:
    encoded = HASHES[name]
    assert legacy_hashes.well_formed(encoded)
    assert legacy_hashes.scheme_of(encoded) in legacy_hashes.LEGACY_SCHEMES
    assert legacy_hashes.verify(encoded, PASSWORD)
    assert not legacy_hashes.verify(encoded, PASSWORD + "x")
    assert not legacy_hashes.verify(encoded, "")


@pytest.mark.parametrize(("encoded", "password"), PUBLISHED)
def test_passlib_published_hashes_verify(encoded: str, password: str) -> None:
    assert legacy_hashes.verify(encoded, password)
    assert not legacy_hashes.verify(encoded, "wrong")


def test_bcrypt_reads_the_first_72_bytes_as_the_systems_that_made_it() -> None:
    long = "x" * 72
    encoded = bcrypt.hashpw(long.encode(), bcrypt.gensalt(4)).decode()
    assert legacy_hashes.verify(encoded, long + "anything past 72 bytes")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plaintext",
        "md5$salt$0123",
        "$2b$12$tooshort",
        "$2b$99$" + "a" * 53,  # cost out of bounds
        "pbkdf2_sha256$abc$salt$AAAA",
        "pbkdf2_sha256$1000$salt$not base64!",
        "pbkdf2_sha256$99999999999$salt$AAAA",  # a login no one should pay for
        "$pbkdf2-sha256$1000$salt",
        "pbkdf2:sha256:1000$salt$zz",
        "pbkdf2:md5:1000$salt$00",
        "scrypt:1000:8:1$salt$00",  # N not a power of two
        "scrypt:1048576:64:64$salt$00",  # memory past the bound
        "$argon2id$v=19$m=nope",
    ],
)
def test_a_malformed_or_too_costly_hash_is_not_well_formed_and_never_verifies(
    encoded: str,
) -> None:
    assert not legacy_hashes.well_formed(encoded)
    assert not legacy_hashes.verify(encoded, PASSWORD)


def test_argon2_hashes_of_other_parameters_or_argon2i_verify_and_need_a_rehash() -> None:
    hasher = Hasher(workers=1, time_cost=1, memory_cost=64, legacy=legacy_hashes.verify)
    try:
        other = argon2.PasswordHasher(time_cost=2, memory_cost=128).hash(PASSWORD)
        argon2i = argon2.PasswordHasher(time_cost=1, memory_cost=64, type=argon2.Type.I)
        older = argon2i.hash(PASSWORD)
        current = hasher.hash_sync(PASSWORD)
        for encoded in (other, older, current):
            assert legacy_hashes.well_formed(encoded)
            assert hasher.verify_sync(encoded, PASSWORD)
        assert hasher.needs_rehash(other) and hasher.needs_rehash(older)
        assert not hasher.needs_rehash(current)
        assert legacy_hashes.scheme_of(older) == "argon2i"
    finally:
        hasher.close()


@pytest.mark.parametrize("name", HASHES)
def test_the_hasher_verifies_every_scheme_in_its_pool_and_asks_for_a_rehash(name: str) -> None:
    hasher = Hasher(workers=1, time_cost=1, memory_cost=64, legacy=legacy_hashes.verify)
    try:
        assert hasher.verify_sync(HASHES[name], PASSWORD)
        assert not hasher.verify_sync(HASHES[name], "wrong")
        assert hasher.needs_rehash(HASHES[name])
    finally:
        hasher.close()


def test_users_are_counted_by_scheme_every_scheme_named() -> None:
    heads = [(HASHES["bcrypt $2b$"][:15], 3), (HASHES["werkzeug scrypt"][:15], 1), ("?", 5)]
    counts = legacy_hashes.count(heads)
    assert counts["bcrypt"] == 3 and counts["werkzeug_scrypt"] == 1
    assert set(counts) == set(legacy_hashes.LEGACY_SCHEMES) and sum(counts.values()) == 4


async def test_a_failed_check_lasts_as_long_as_the_costliest_kind_of_hash_checked_lately() -> None:
    # A user still on an imported hash that costs more than the deployment's Argon2id must not
    # stand out by its timing: after such a hash was checked, every failed check (an unknown
    # user's decoy, a native user's wrong password) lasts at least that long.
    import time

    hasher = Hasher(workers=1, time_cost=1, memory_cost=64, legacy=legacy_hashes.verify)
    slow = django(PASSWORD, "salt", 400_000)
    try:
        assert await hasher.verify(slow, PASSWORD)
        floor = hasher.failure_floor()
        assert floor > 0
        for stored in (None, hasher.hash_sync(PASSWORD)):
            started = time.monotonic()
            assert not await hasher.verify(stored, "wrong")
            assert time.monotonic() - started >= floor * 0.999
    finally:
        hasher.close()
