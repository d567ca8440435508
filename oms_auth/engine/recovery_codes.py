"""Recovery codes as a second factor (docs/rules.md, "Recovery codes"): how they are made,
written, stored and matched, and the second step that takes either a TOTP code or one of them.

- A set is ten codes of 60 random bits each (``os.urandom``), written ``xxxx-xxxx-xxxx`` in
  lower-case base32 (its digits are 2 to 7); a code is read back case-insensitively,
  with or without its dashes and spaces. A TOTP code is six digits, so the two never look
  alike.
- Stored as keyed digests (HMAC-SHA256 under a key derived from the service key, bound to the
  user): the codes are random and long, so a fast digest protects them as it protects reset
  codes (a slow hash such as Argon2id is for low-entropy secrets: passwords, answers), and the
  key means the store alone is not enough even to test a guess. The digest is what a use
  deletes, so matching is an indexed lookup, not a hash per stored code.
- A code given where a TOTP code is asked is matched here (:func:`accepted`); the write it
  allows uses it up in its own transaction (:class:`~oms_auth.store.RecoveryUse`), so of any
  number of simultaneous uses of one code, on any node, one succeeds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import NamedTuple

from ..store import RecoveryUse, User
from . import totp
from .deps import Deps
from .links import user_mail

__all__ = ["COUNT", "Factor", "NO_FACTOR", "new_codes", "parse", "code_digest", "accepted"]

COUNT = 10  # codes in a set
_GROUPS = 3  # of four characters: 12 base32 characters, 60 bits
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case


class Factor(NamedTuple):
    """A second step accepted, still to be recorded by the write it allows: a TOTP time step,
    or a recovery code to use up."""

    step: int | None
    recovery: RecoveryUse | None

    @property
    def detail(self) -> str | None:
        """What the audit row of the login it allows says of it."""
        return None if self.recovery is None else "with a recovery code"


NO_FACTOR = Factor(None, None)  # a login without a second step


def new_codes() -> list[str]:
    """A new set: ``COUNT`` distinct codes."""
    codes: set[str] = set()
    while len(codes) < COUNT:
        raw = base64.b32encode(os.urandom(10)).decode().lower()[: 4 * _GROUPS]
        codes.add("-".join(raw[i : i + 4] for i in range(0, len(raw), 4)))
    return sorted(codes)


def parse(code: object) -> str | None:
    """The code as its twelve characters, or None when it is not shaped as a recovery code."""
    if not isinstance(code, str):
        return None
    bare = code.strip().lower().replace("-", "").replace(" ", "")
    if len(bare) != 4 * _GROUPS or any(c not in _ALPHABET for c in bare):
        return None
    return bare


def _key(deps: Deps) -> bytes:
    return hmac.new(deps.names_key, b"oms-auth recovery codes", hashlib.sha256).digest()


def code_digest(deps: Deps, user_id: int, bare: str) -> bytes:
    """What the store keeps of a code (see the module): bound to its user."""
    return hmac.new(_key(deps), b"%d:%s" % (user_id, bare.encode()), hashlib.sha256).digest()


async def accepted(
    deps: Deps, user: User, secret: str, code: str | int | None, now: float
) -> Factor | None:
    """``code`` as a second step for ``user``: a valid TOTP code of ``secret`` newer than the
    last accepted, or one of the user's unused recovery codes; None when it is neither."""
    bare = parse(code)
    if bare is None:
        step = totp.accepted(secret, totp.normalize_code(code), now, user.totp_last_step)
        return None if step is None else Factor(step, None)
    digest = code_digest(deps, user.id, bare)
    if not await deps.store.recovery_code_held(user.id, digest):
        return None
    mail = user_mail("recovery-code-used", user, {"at": now})
    return Factor(None, RecoveryUse(digest=digest, mail=mail))
