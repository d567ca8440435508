"""Devices (docs/protocol.md, "Sessions and devices"; docs/rules.md, "Devices"): what a login
names as its device, its keyed HashCode, and GetUserDevices.

- A device is the ``DeviceId`` a login's payload names (front-ends keep one per browser), else
  the pair of the client's User-Agent and address.
- Its HashCode is a stable positive 31-bit integer: the first bytes of an HMAC-SHA256 keyed
  with a key derived from the service key (``Deps.devices_key``) over the user and the device,
  so one browser is a different HashCode for each user and the store alone links nothing.
- A password login records its device in the transaction that opens its session
  (``DeviceSeen``); an API-key login only describes its session (it has no device to confirm
  and is never noticed).
- With ``verify_new_devices`` a right password from a device the user has not trusted opens no
  session: an 8-digit code is mailed (stored as its digest, valid 15 minutes, 5 tries, the
  newest voiding the one before) and ``RegisterNewDevice {HashCode, PendingEmailCode}`` trusts
  the device for ``trusted_device_days``; each try is counted (a right one spends the code), in
  the transaction that spends it, so of racing tries with one code one wins.
- A user is mailed at most ``CODES_PER_HOUR`` device codes an hour, whatever its devices: a
  login past that is refused without a new code. Without it, each right-password login would
  mail a new code with 5 new tries, so a holder of a stolen password could flood the user's
  inbox and guess without bound (one login, 5 guesses).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import msgspec

from ..crypto import digest, mail_context
from ..errors import InvalidValue, NotFound
from ..store import AuditEntry, Claim, DeviceCodeIssue, DeviceSeen, MailItem, User
from .caller import Caller
from .deps import Deps
from .links import user_mail
from .users import visible_user

__all__ = [
    "Origin",
    "DeviceView",
    "hash_code",
    "device_name",
    "seen",
    "user_devices",
    "NEW_SIGN_IN",
    "MAX_DEVICE_ID",
    "DEVICE_CODE",
    "NEW_DEVICE",
    "TOO_MANY_DEVICE_CODES",
    "CODES_PER_HOUR",
    "NOTICES_PER_HOUR",
    "confirmation",
    "register",
]

NEW_SIGN_IN = "new-sign-in"  # the notice's mail kind
DEVICE_CODE = "device-code"  # the mail that carries a device's code
NEW_DEVICE = "New device: confirm it with the code we emailed you"
INVALID_HASH_CODE = "Invalid value provided for HashCode"
INVALID_DEVICE_CODE = "Invalid value provided for PendingEmailCode"
WRONG_DEVICE_CODE = "Invalid or expired device code"
TOO_MANY_DEVICE_CODES = "Too many device codes sent; use the last one emailed or try again later"
DEVICE_CODES = "device-codes"  # the per-user counter of codes mailed
CODES_PER_HOUR = 5
NOTICES_PER_HOUR = 5  # new-sign-in mails to a user
CODE_SECONDS = 15 * 60
CODE_TRIES = 5
_CODE = re.compile(r"[0-9]{8}")
MAX_DEVICE_ID = 256  # characters of a DeviceId; longer ones are cut (still stable)
_MAX_NAME = 200  # characters of a User-Agent kept as a device's name
_MASK = 0x7FFFFFFF


class Origin(msgspec.Struct, frozen=True):
    """Where a login comes from, as the server knows it: the client's User-Agent and the
    payload's ``DeviceId`` (None when it named none)."""

    agent: str = ""
    device_id: str | None = None


class DeviceView(msgspec.Struct, frozen=True):
    """One device of GetUserDevices."""

    hash_code: int
    name: str
    address: str
    user_id: int
    trusted_until: float | None
    last_seen: float


def device_name(origin: Origin) -> str:
    """A device's name as a user reads it: its User-Agent, printable, cut to a sane length."""
    name = "".join(c for c in origin.agent if c.isprintable())[:_MAX_NAME].strip()
    return name or "unknown device"


def hash_code(key: bytes, user_id: int, origin: Origin, address: str) -> int:
    """The device's HashCode for ``user_id`` (see the module): 1 .. 2^31-1."""
    if origin.device_id:
        named = "id\x00" + origin.device_id[:MAX_DEVICE_ID]
    else:
        named = "agent\x00" + origin.agent + "\x00" + address
    mac = hmac.new(key, f"{user_id}\x00{named}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:4], "big") & _MASK or 1


async def seen(
    deps: Deps,
    user: User | None,
    origin: Origin | None,
    address: str,
    now: float,
    *,
    notify: bool,
) -> DeviceSeen:
    """What a login writes of its device with its session: without ``user`` (an API-key
    login) only the session's description; with ``notify`` the new-sign-in notice queued if
    the device is new to the user (at most ``NOTICES_PER_HOUR`` a user: each new DeviceId
    or User-Agent is a new device, so a password holder could otherwise mail one per login)."""
    origin = origin or Origin()
    name = device_name(origin)
    if user is None:
        return DeviceSeen(name=name, address=address)
    code = hash_code(deps.devices_key, user.id, origin, address)
    if notify and await deps.store.device(user.id, code) is None:
        claim = Claim(NEW_SIGN_IN, str(user.id), 3600, NOTICES_PER_HOUR)
        notify = await deps.store.reserve([claim], now) is not None
    else:
        notify = False  # known: nothing to notice
    notice = new_sign_in(user, name, address, now) if notify else None
    return DeviceSeen(name=name, address=address, hash_code=code, notice=notice)


def new_sign_in(user: User, name: str, address: str, now: float) -> MailItem:
    """The "new sign-in" notice: when, from which device and address."""
    return user_mail(NEW_SIGN_IN, user, {"at": now, "device": name, "address": address})


async def user_devices(
    deps: Deps, caller: Caller | None, user_id: int | str | None
) -> list[DeviceView]:
    """GetUserDevices: the user's own devices, or for an Operator a user of its OMS."""
    user = await visible_user(deps, caller, user_id)
    return [
        DeviceView(d.hash_code, d.name, d.address, d.user_id, d.trusted_until, d.last_seen)
        for d in await deps.store.user_devices(user.id)
    ]


async def confirmation(
    deps: Deps, user: User, origin: Origin | None, address: str, now: float
) -> tuple[int, str] | None:
    """``verify_new_devices``: None when the login's device is trusted; else its code is
    issued and mailed (at most ``CODES_PER_HOUR`` a user), and its HashCode returned with the
    login's refusal (it opens no session)."""
    origin = origin or Origin()
    code = hash_code(deps.devices_key, user.id, origin, address)
    known = await deps.store.device(user.id, code)
    if known is not None and known.trusted_until is not None and known.trusted_until > now:
        return None
    claim = Claim(DEVICE_CODES, str(user.id), 3600, CODES_PER_HOUR)
    if await deps.store.reserve([claim], now) is None:
        deps.events.count("device_codes_refused")
        return code, TOO_MANY_DEVICE_CODES
    secret = f"{secrets.randbelow(10**8):08d}"
    name = device_name(origin)
    sealed = deps.sealer.seal(
        msgspec.json.encode({"device_code": secret}), mail_context(user.id, DEVICE_CODE)
    )
    public = {"expires_at": now + CODE_SECONDS, "device": name, "address": address}
    mail = user_mail(DEVICE_CODE, user, public, sealed)
    audit = AuditEntry(
        action="device-code-sent", actor_id=user.id, target_id=user.id, source=address
    )
    await deps.store.issue_device_code(
        DeviceCodeIssue(
            user_id=user.id,
            hash_code=code,
            name=name,
            address=address,
            now=now,
            digest=digest(secret),
            expires_at=now + CODE_SECONDS,
            mail=mail,
            audit=audit,
        )
    )
    deps.events.count("device_codes_sent")
    deps.events.mail_queued()
    return code, NEW_DEVICE


async def register(deps: Deps, code: object, given: object, address: str) -> int:
    """RegisterNewDevice: the device named by ``code`` is trusted for
    ``trusted_device_days`` when ``given`` is its live code (the device's user)."""
    number = _hash_code(code)
    if number is None:
        raise InvalidValue(INVALID_HASH_CODE)
    secret = given if isinstance(given, str) else f"{given:08d}" if _int(given) else None
    if secret is None or not _CODE.fullmatch(secret.strip()):
        raise InvalidValue(INVALID_DEVICE_CODE)
    now = deps.clock()
    until = now + deps.settings.trusted_device_days * 86400
    audit = AuditEntry(action="device-trusted", source=address, detail=f"HashCode {number}")
    user_id = None
    # Anyone may call it: a HashCode with no live code costs a read, never a write.
    if await deps.store.device_code_live(number, now, CODE_TRIES):
        user_id = await deps.store.register_device(
            number, digest(secret.strip()), now, CODE_TRIES, until, audit
        )
    if user_id is None:
        deps.events.count("device_codes_wrong")
        raise NotFound(WRONG_DEVICE_CODE)
    deps.events.count("devices_trusted")
    return user_id


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**8


def _hash_code(value: object) -> int | None:
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MASK:
        return value
    return None
