"""What a username and an email address may be (``user add``, CreateUser, the demo).

A username is stored NFKC-normalised (so the fullwidth ``ｔｒａｄｅｒ１`` is ``trader1``), without
control or format characters (no bidi overrides, zero-width joiners, unit separators), and must
not look like an existing one: two names with the same *skeleton* (Unicode TR39's idea, with a
small table of the homoglyphs that matter in Latin-script usernames) are confusable, whatever
their code points.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..errors import InvalidValue
from .texts import INVALID_EMAIL, INVALID_USERNAME

__all__ = [
    "check_username",
    "check_email",
    "check_distinct",
    "check_locale",
    "is_locale",
    "skeleton",
    "confusable",
    "MAX_USERNAME_LENGTH",
]

MAX_USERNAME_LENGTH = 64
MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a path
# One @, something on each side, a dot in the domain, no spaces: the form, not deliverability.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_FORBIDDEN = ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn")

# Letters of other scripts that render like Latin ones, and the digits and letters that pass
# for each other: each maps to one representative.
_HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "l", "ї": "l",
        "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "һ": "h", "ү": "y",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "l", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c",
        # Latin lookalikes
        "0": "o", "1": "l", "i": "l", "ı": "l", "|": "l", "5": "s", "$": "s", "@": "a",
        "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ł": "l",
    }
)  # fmt: skip


def skeleton(name: str) -> str:
    """What a name looks like: NFKD, case-folded, marks dropped, homoglyphs merged, and the
    separators people do not see the difference between (``_``, ``-``, ``.``, spaces) gone;
    ``rn`` reads as ``m``, ``vv`` as ``w``."""
    folded = unicodedata.normalize("NFKD", name).casefold()
    bare = "".join(c for c in folded if not unicodedata.combining(c))
    merged = bare.translate(_HOMOGLYPHS)
    merged = re.sub(r"[\s_\-.]+", "", merged)
    return merged.replace("rn", "m").replace("vv", "w")


def confusable(a: str, b: str) -> bool:
    """Different names (as compared: trimmed, case-folded) that look the same."""
    return a.strip().casefold() != b.strip().casefold() and skeleton(a) == skeleton(b)


def check_distinct(name: str, existing: Iterable[str]) -> None:
    """InvalidValue when ``name`` looks like one of the ``existing`` usernames (which one is
    not said: an Operator must not learn the usernames of other OMSs this way)."""
    if any(confusable(name, other) for other in existing):
        raise InvalidValue(f"{INVALID_USERNAME}: it looks too much like an existing username")


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
    if any(unicodedata.category(c) in _FORBIDDEN for c in name):
        raise InvalidValue(f"{INVALID_USERNAME}: it holds a control or format character")
    return name


def check_email(email: str) -> str:
    """The address trimmed, or InvalidValue when it is not of the form name@domain.tld."""
    address = email.strip()
    if any(unicodedata.category(c) in _FORBIDDEN for c in address):
        raise InvalidValue(f"{INVALID_EMAIL}: it holds a control or format character")
    if len(address) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(address):
        raise InvalidValue(f"{INVALID_EMAIL}: expected an address like name@example.com")
    return address
