"""Password policies: each rule in words (as GetRequirementsForPasswordSet shows it) and as a check.

The default policy is the source document's (001_34e5170f4aa5a64d.txt); ``nist`` follows
NIST SP 800-63B (length and a blocklist, no composition rules). Both refuse passwords on the
common-password list zxcvbn ships, after undoing the usual disguises (case, l33t, a trailing run of
digits and symbols), because "Summer2024!" passes every composition rule and is still guessed
early.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from .texts import PASSWORD_RULES_PREFIX

__all__ = ["Rule", "Policy", "POLICIES", "SYMBOLS"]

# The special characters the default policy asks for one of.
SYMBOLS = "_-|@.,?/!~#$%^&*(){}[]\\+="
_LEET = str.maketrans(
    {"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
)


class Rule(NamedTuple):
    words: str  # completes "Your portal password must ..."
    ok: Callable[[str, str], bool]  # (password, username) -> passes
    # How the reset page checks it as the user types: (kind, argument). "server" rules need
    # what the page does not have (the username, the blocklist) and are checked on submit.
    check: tuple[str, int | str | None] = ("server", None)


@functools.cache
def _common() -> frozenset[str]:
    # 30,000 passwords, loaded on first use (zxcvbn ships no type stubs)
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    return frozenset(FREQUENCY_LISTS["passwords"])


def _disguises(password: str) -> set[str]:
    folded = password.casefold()
    bare = folded.rstrip("0123456789" + SYMBOLS)
    return {folded, bare, folded.translate(_LEET), bare.translate(_LEET)}


def not_common(password: str, username: str) -> bool:
    common = _common()
    return not any(len(word) >= 4 and word in common for word in _disguises(password))


def not_username(password: str, username: str) -> bool:
    return password.casefold() != username.strip().casefold()


class Policy:
    """An ordered list of rules."""

    def __init__(self, name: str, rules: list[Rule]) -> None:
        self.name = name
        self.rules = rules

    @property
    def checks(self) -> list[dict[str, object]]:
        """The rules for the reset page: words and a check it can run itself."""
        return [{"words": r.words, "kind": r.check[0], "arg": r.check[1]} for r in self.rules]

    @property
    def words(self) -> list[str]:
        """The rules as the reset page lists them."""
        return [rule.words for rule in self.rules]

    def violations(self, password: str, username: str) -> list[str]:
        return [rule.words for rule in self.rules if not rule.ok(password, username)]

    def refusal(self, password: str, username: str) -> str | None:
        """The 100 detail for a password that breaks rules, or None when it keeps them all."""
        broken = self.violations(password, username)
        return PASSWORD_RULES_PREFIX + "; ".join(broken) if broken else None


_COMMON = Rule("not be a commonly used password", not_common)
_USERNAME = Rule("not match your username", not_username)

POLICIES = {
    "default": Policy(
        "default",
        [
            Rule("be over eight characters long", lambda p, u: len(p) > 8, ("min", 9)),
            Rule("be under twenty characters long", lambda p, u: len(p) < 20, ("max", 19)),
            Rule(
                "contain at least one uppercase letter",
                lambda p, u: any(c.isupper() for c in p),
                ("upper", None),
            ),
            Rule(
                "contain at least one lowercase letter",
                lambda p, u: any(c.islower() for c in p),
                ("lower", None),
            ),
            Rule(
                "contain at least one number",
                lambda p, u: any(c.isdigit() for c in p),
                ("digit", None),
            ),
            Rule(
                "contain one of the special characters " + " ".join(SYMBOLS),
                lambda p, u: any(c in SYMBOLS for c in p),
                ("any_of", SYMBOLS),
            ),
            _USERNAME,
            _COMMON,
        ],
    ),
    "nist": Policy(
        "nist",
        [
            Rule("be at least eight characters long", lambda p, u: len(p) >= 8, ("min", 8)),
            Rule("be at most sixty-four characters long", lambda p, u: len(p) <= 64, ("max", 64)),
            _USERNAME,
            _COMMON,
        ],
    ),
}
