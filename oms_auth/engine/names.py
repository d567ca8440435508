"""What a username and an email address may be (``user add``, CreateUser, the demo), and how
a submitted username is recorded.

A username is stored NFKC-normalised (so the fullwidth ``ｔｒａｄｅｒ１`` is ``trader1``), without
control or format characters (no bidi overrides, zero-width joiners, unit separators) and
without invisible ones (every Default_Ignorable_Code_Point, such as U+034F or U+FE0F, other
white space than the plain space, and blanks such as U+3164 or U+2800): refused outright,
whatever names exist, since ``trader1`` and ``trader1`` + U+FE0F cannot be told apart. That it
does not look like an existing one is the store's to check, in the transaction that inserts it
(``username_skeleton`` in :mod:`oms_auth.store.records`, TR39 over the full confusables data).

A username that names no user is never recorded as typed (people type passwords into username
fields): :func:`recorded_name` writes it as ``unknown:`` and 12 hex digits of a keyed digest
(:func:`unknown_name`), so the attempts on one name still group together (docs/rules.md,
"Usernames").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import TYPE_CHECKING

import icu  # type: ignore[import-untyped,unused-ignore]

from ..errors import InvalidValue
from ..store import User, username_key
from .texts import INVALID_EMAIL, INVALID_USERNAME

if TYPE_CHECKING:
    from .deps import Deps

__all__ = [
    "counter_key",
    "check_username",
    "check_email",
    "check_locale",
    "is_locale",
    "unknown_name",
    "recorded_name",
    "MAX_USERNAME_LENGTH",
]

MAX_USERNAME_LENGTH = 64
MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a path
# One @, something on each side, a dot in the domain, no spaces: the form, not deliverability.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_FORBIDDEN = ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn")
# The same test for a text all in ASCII (most names and addresses) without a lookup per
# character: an import checks a million of each (docs/performance.md, "Importing users").
_ASCII_FORBIDDEN = frozenset(
    chr(c) for c in range(128) if unicodedata.category(chr(c)) in _FORBIDDEN
)


def _forbidden(text: str) -> bool:
    """Whether ``text`` holds a character of a category in ``_FORBIDDEN``."""
    if text.isascii():
        return not _ASCII_FORBIDDEN.isdisjoint(text)
    return any(unicodedata.category(c) in _FORBIDDEN for c in text)


# Characters that show nothing, or a blank: the Unicode property for the first (ICU's data, of
# the same version as the confusables), white space but the plain space, and the blanks that
# are letters or symbols by category (U+2800 BRAILLE PATTERN BLANK, U+1D159 MUSICAL SYMBOL NULL
# NOTEHEAD; the Hangul fillers are Default_Ignorable already).
_INVISIBLE = icu.UnicodeSet(
    r"[[:Default_Ignorable_Code_Point:][[:White_Space:]-[\u0020]]\u2800\U0001D159]"
)
_INVISIBLE.freeze()  # read-only from here: safe to share between threads
# What an unknown name is recorded as: the prefix and how many hex digits of its digest.
_UNKNOWN = "unknown:"
_UNKNOWN_DIGITS = 12


_LOCALE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


def is_locale(tag: str) -> bool:
    """A BCP 47-looking language tag (``de``, ``pt-BR``)."""
    return bool(_LOCALE.fullmatch(tag))


def check_locale(locale: str | None) -> str | None:
    """A language tag like ``de`` or ``pt-BR`` (mail in a language not shipped falls back to
    the default), or InvalidValue."""
    if locale is None or locale == "":
        return None
    if not is_locale(locale.strip()):
        raise InvalidValue("Invalid value provided for Locale: expected a tag like en or pt-BR")
    return locale.strip()


def check_username(username: str) -> str:
    """The username as stored (NFKC-normalised, trimmed), or InvalidValue naming the fault."""
    name = unicodedata.normalize("NFKC", username).strip()
    if not name:
        raise InvalidValue(f"{INVALID_USERNAME}: it must not be empty")
    if len(name) > MAX_USERNAME_LENGTH:
        raise InvalidValue(f"{INVALID_USERNAME}: at most {MAX_USERNAME_LENGTH} characters")
    # The typed form too (trimmed, like the name): NFKC turns some blanks into others.
    typed = username.strip()
    if _forbidden(typed) or _forbidden(name):
        raise InvalidValue(f"{INVALID_USERNAME}: it holds a control or format character")
    if _INVISIBLE.containsSome(typed) or _INVISIBLE.containsSome(name):
        raise InvalidValue(f"{INVALID_USERNAME}: it holds an invisible character")
    return name


def check_email(email: str) -> str:
    """The address trimmed, or InvalidValue when it is not of the form name@domain.tld."""
    address = email.strip()
    if _forbidden(address):
        raise InvalidValue(f"{INVALID_EMAIL}: it holds a control or format character")
    if len(address) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(address):
        raise InvalidValue(f"{INVALID_EMAIL}: expected an address like name@example.com")
    return address


def unknown_name(key: bytes, typed: str) -> str:
    """How a submitted username that names no user is recorded: ``unknown:`` and the first 12
    hex digits of its HMAC-SHA256 under ``key`` (``crypto.names_key``), computed over the name
    as usernames compare (trimmed, case-folded), so ``Bob`` and `` bob`` group together and
    the store alone cannot test guesses against it."""
    # surrogatepass: a lone surrogate sent as a JSON escape is still a name to record.
    data = username_key(typed).encode("utf-8", "surrogatepass")
    return _UNKNOWN + hmac.new(key, data, hashlib.sha256).hexdigest()[:_UNKNOWN_DIGITS]


def counter_key(key: bytes, typed: str) -> str:
    """What the per-username counters are keyed by: a keyed digest of the name as usernames
    compare, never the name itself, since people type passwords into username fields and the
    counters are rows in the store (docs/rules.md, "The audit trail")."""
    data = username_key(typed).encode("utf-8", "surrogatepass")
    return "name:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def recorded_name(deps: Deps, typed: str, user: User | None) -> str:
    """The target name an audit row (or a log line) may hold for a submitted username: as
    typed (trimmed, bounded) when it names ``user``; else its :func:`unknown_name`."""
    if user is None:
        return unknown_name(deps.names_key, typed)
    return typed.strip()[:200]
