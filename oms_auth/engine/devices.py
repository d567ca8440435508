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
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from ..store import DeviceSeen, MailItem, User
from .caller import Caller
from .deps import Deps
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
]

NEW_SIGN_IN = "new-sign-in"  # the notice's mail kind
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


def seen(
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
    the device is new to the user."""
    origin = origin or Origin()
    name = device_name(origin)
    if user is None:
        return DeviceSeen(name=name, address=address)
    notice = new_sign_in(user, name, address, now) if notify else None
    code = hash_code(deps.devices_key, user.id, origin, address)
    return DeviceSeen(name=name, address=address, hash_code=code, notice=notice)


def new_sign_in(user: User, name: str, address: str, now: float) -> MailItem:
    """The "new sign-in" notice: when, from which device and address."""
    return MailItem(
        kind=NEW_SIGN_IN,
        recipient=user.email,
        user_id=user.id,
        public={
            "username": user.username,
            "locale": user.locale,
            "at": now,
            "device": name,
            "address": address,
        },
    )


async def user_devices(
    deps: Deps, caller: Caller | None, user_id: int | str | None
) -> list[DeviceView]:
    """GetUserDevices: the user's own devices, or for an Operator a user of its OMS."""
    user = await visible_user(deps, caller, user_id)
    return [
        DeviceView(d.hash_code, d.name, d.address, d.user_id, d.trusted_until, d.last_seen)
        for d in await deps.store.user_devices(user.id)
    ]
