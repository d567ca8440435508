"""RFC 6238 time-based one-time passwords: 30 s step, one step of drift either way."""

from __future__ import annotations

import pyotp

from ..crypto import Sealer

__all__ = ["normalize_code", "verify", "seal_secret", "open_secret", "valid_secret"]


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
    if not (len(code) == 6 and code.isdigit()):
        return False
    return pyotp.TOTP(secret).verify(code, for_time=int(now), valid_window=1)


def valid_secret(secret: str) -> bool:
    try:
        pyotp.TOTP(secret).now()
    except Exception:  # pyotp raises binascii/ValueError variants on bad base32
        return False
    return len(secret.replace("=", "")) >= 16


def _context(user_id: int) -> bytes:
    return b"totp:%d" % user_id


def seal_secret(sealer: Sealer, user_id: int, secret: str) -> bytes:
    return sealer.seal(secret.encode(), _context(user_id))


def open_secret(sealer: Sealer, user_id: int, sealed: bytes) -> str:
    return sealer.open(sealed, _context(user_id)).decode()
