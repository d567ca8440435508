"""What a username and an email address may be (``user add``, CreateUser, the demo).

A username is stored NFKC-normalised (so the fullwidth ``ｔｒａｄｅｒ１`` is ``trader1``), without
control or format characters (no bidi overrides, zero-width joiners, unit separators). That it
does not look like an existing one is the store's to check, in the transaction that inserts it
(``username_skeleton`` in :mod:`oms_auth.store.records`).
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidValue
from .texts import INVALID_EMAIL, INVALID_USERNAME

__all__ = [
    "check_username",
    "check_email",
    "check_locale",
    "is_locale",
    "MAX_USERNAME_LENGTH",
]

MAX_USERNAME_LENGTH = 64
MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a path
# One @, something on each side, a dot in the domain, no spaces: the form, not deliverability.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_FORBIDDEN = ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn")


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
