"""RFC 6238 time-based one-time passwords: 30 s step, one step of drift either way."""

from __future__ import annotations

import hmac

import pyotp

from ..crypto import Sealer

__all__ = [
    "normalize_code",
    "verify",
    "matching_step",
    "accepted",
    "seal_context",
    "seal_secret",
    "open_secret",
    "valid_secret",
]

STEP = 30


def normalize_code(code: str | int | None) -> str | None:
    """The code as six digits, or None when none was given. Numbers are zero-padded
    (a client that sends 012345 as a number sends 12345)."""
    if code is None:
        return None
    if isinstance(code, int):
        return f"{code:06d}" if 0 <= code < 10**6 else str(code)
    code = code.strip().replace(" ", "")
    return code or None


def verify(secret: str, code: str, now: float) -> bool:
    return matching_step(secret, code, now) is not None


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (``now // 30``, one step of drift either way) whose code this is, or None.
    The step is what is remembered, so a code is never accepted twice."""
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    found = None
    for offset in (-1, 0, 1):  # every candidate compared, so the timing says nothing
        step = int(now) // STEP + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def accepted(secret: str, code: str | None, now: float, last_step: int | None) -> int | None:
    """The step of a valid code newer than ``last_step`` (the last accepted), else None."""
    step = matching_step(secret, code, now) if code is not None else None
    if step is None or (last_step is not None and step <= last_step):
        return None
    return step


def valid_secret(secret: str) -> bool:
    try:
        pyotp.TOTP(secret).now()
    except Exception:  # pyotp raises binascii/ValueError variants on bad base32
        return False
    return len(secret.replace("=", "")) >= 16


def seal_context(user_id: int) -> bytes:
    return b"totp:%d" % user_id


def seal_secret(sealer: Sealer, user_id: int, secret: str) -> bytes:
    return sealer.seal(secret.encode(), seal_context(user_id))


def open_secret(sealer: Sealer, user_id: int, sealed: bytes) -> str:
    return sealer.open(sealed, seal_context(user_id)).decode()
