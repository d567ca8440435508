"""The messages oms-auth sends, from Jinja2 templates an exchange can replace and translate.

Each kind of message is a pair of templates, ``KIND.txt`` (its first line ``Subject: ...``, then
the text part) and ``KIND.html`` (the HTML part, usually extending ``base.html``), in a folder
per locale. The security notices (2FA turned on or off, questions changed, a forced logoff, a
new sign-in) share ``notice.*``, told apart by ``event``; a device's code has ``device-code.*``.
A deployment's ``mail_templates`` folder is searched first, then the shipped ones (``en``,
``de``), each in the user's locale, then ``en``: an exchange replaces only the files it wants
to. Templates see ``brand``, ``support_email``,
``support_url``, ``username``, ``recipient``, ``locale``, the message's own values (``link``,
``expires_at``, ``changed_at``, ``at``, ``api_keys``, ``first``, ``event``, ``left``: recovery
codes left, ``device``, ``address``, ``device_code``) and the filter ``when`` (a time, in the
locale's way). HTML is autoescaped; no remote content, no tracking.

Each message is not rendered from scratch: its templates are rendered once per kind, locale and
structure (the values conditions may read: ``first``, ``api_keys``, ``event``, the brand and
support settings) with markers where the per-message values go (``username``, ``recipient``,
``link``, the times), and each message fills them in. So templates show those values (and
format times with ``when``) but do not branch on them; one that transforms them (``upper``, a
slice) is noticed and rendered in full per message instead.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import markupsafe
import msgspec

from ..engine.names import is_locale

__all__ = ["Templates", "Outgoing", "compose", "reset_link", "SHIPPED", "LOCALES"]

SHIPPED = Path(__file__).with_name("templates")
LOCALES = ("en", "de")  # the translations that ship
DEFAULT_LOCALE = "en"
# How a time reads in each shipped locale (others: ISO 8601).
_TIME_FORMATS = {"en": "%Y-%m-%d %H:%M UTC", "de": "%d.%m.%Y, %H:%M UTC"}
_NOTICES = frozenset(
    {
        "2fa-enabled",
        "2fa-disabled",
        "questions-set",
        "forced-logoff",
        "recovery-codes-created",
        "recovery-code-used",
        "2fa-reset",
        "new-sign-in",
    }
)


def reset_link(public_url: str, user_id: int, code: str) -> str:
    return f"{public_url.rstrip('/')}/reset?UserId={user_id}&PendingCode={code}"


class Templates:
    """The message renderer of one deployment: its brand, support contacts and templates."""

    def __init__(
        self,
        folder: str | None = None,
        *,
        brand: str = "oms-auth",
        support_email: str | None = None,
        support_url: str | None = None,
        default_locale: str = DEFAULT_LOCALE,
    ) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise ValueError(f"mail_templates {folder} is not a folder")
        self.common = {
            "brand": brand,
            "support_email": support_email,
            "support_url": support_url,
        }
        self.default_locale = default_locale
        self._envs: dict[str, jinja2.Environment] = {}
        self._shapes: dict[tuple[str, ...], _Shape | Literal[False]] = {}

    def _env(self, locale: str) -> jinja2.Environment:
        """One compiled environment per locale: templates are parsed once."""
        env = self._envs.get(locale)
        if env is None:
            chain = [locale, locale.split("-")[0], self.default_locale, DEFAULT_LOCALE]
            dirs: list[Path] = []
            for name in dict.fromkeys(chain):  # in order, without repeats
                for root in (self.folder, SHIPPED):
                    if root is not None and (root / name).is_dir():
                        dirs.append(root / name)
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(dirs),
                autoescape=jinja2.select_autoescape(["html"]),
                undefined=jinja2.StrictUndefined,  # a misspelt variable fails, not blank
                auto_reload=False,  # compiled once: no stat() of every template per message
                trim_blocks=True,
                keep_trailing_newline=True,
            )
            fmt = _TIME_FORMATS.get(locale.split("-")[0])
            env.filters["when"] = functools.partial(_when, fmt)
            self._envs[locale] = env
        return env

    def render(
        self,
        kind: str,
        public: dict[str, Any],
        secret: dict[str, Any],
        *,
        sender: str,
        recipient: str,
    ) -> Outgoing:
        """Build the message for an outbox row; ``secret`` is what was sealed (the link)."""
        name, locale, values = self.values(kind, public, secret, recipient)
        key = (
            name,
            locale,
            *(repr(values[k]) for k in _SHAPE),
            *(str(values.get(k) is None) for k in _SLOTS),
        )
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._shape(name, locale, values)
        if shape is False:  # a template that uses a value otherwise than showing it
            subject, body, page = self._full(name, locale, values)
        else:
            subject, body, page = shape.fill(values, self._fmt(locale))
        return compose(sender, recipient, subject, body.lstrip("\n"), page, locale)

    def values(
        self, kind: str, public: dict[str, Any], secret: dict[str, Any], recipient: str
    ) -> tuple[str, str, dict[str, Any]]:
        """What a message's templates are rendered with: the template's name, the locale, and
        the values (every one a template may name, defaulted)."""
        locale = public.get("locale") or self.default_locale
        if not isinstance(locale, str) or not is_locale(locale):
            locale = self.default_locale
        name = "notice" if kind in _NOTICES else kind
        if name not in ("reset", "invite", "password-changed", "notice", "device-code"):
            raise ValueError(f"unknown mail kind {kind!r}")
        values: dict[str, Any] = {
            **self.common,
            "username": "",
            "link": None,
            "expires_at": None,
            "changed_at": None,
            "at": None,
            "api_keys": None,
            "first": False,
            "left": None,
            "device": None,
            "address": None,
            "device_code": None,
            **public,
            **secret,
            "event": kind,
            "recipient": recipient,
            "locale": locale,
        }
        return name, locale, values

    def _full(self, name: str, locale: str, values: dict[str, Any]) -> tuple[str, str, str]:
        """The templates rendered for one message: subject, text body, HTML."""
        env = self._env(locale)
        text = env.get_template(f"{name}.txt").render(values)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise ValueError(f"{name}.txt must begin with a 'Subject:' line")
        subject = first.removeprefix("Subject:").strip()
        page = env.get_template(f"{name}.html").render({**values, "subject": subject})
        return subject, body, page

    def _shape(self, name: str, locale: str, values: dict[str, Any]) -> _Shape | Literal[False]:
        """The message pre-rendered once for every message of its kind, locale and structure
        (the values its conditions read: ``_SHAPE``), with a marker where each per-message
        value goes; False when a template uses such a value otherwise than by showing it (then
        each message is rendered in full, as before)."""
        marked = {**values, **{k: _Slot(k) for k in _SLOTS if values.get(k) is not None}}
        try:
            subject, body, page = self._full(name, locale, marked)
        except Exception:
            return False
        shape = _Shape.of(subject, body, page)
        return shape if shape is not None else False

    def _fmt(self, locale: str) -> str | None:
        return _TIME_FORMATS.get(locale.split("-")[0])


# What a message shows but never decides on: each is filled into the pre-rendered shape.
_SLOTS = (
    "username",
    "recipient",
    "link",
    "expires_at",
    "changed_at",
    "at",
    "device",
    "address",
    "device_code",
)
# What decides a message's structure (its templates' conditions): one shape per combination.
_SHAPE = ("first", "api_keys", "event", "left", "brand", "support_email", "support_url")
_MARK = re.compile(r"\x00([a-z_]+)(:when)?\x00")


class _Slot:
    """Stands for a value while a shape is rendered; the ``when`` filter marks its output."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"\x00{self.name}\x00"

    def __html__(self) -> str:  # markupsafe: the marker is not escaped; its value will be
        return str(self)


class _Shape(msgspec.Struct, frozen=True):
    """A pre-rendered message: literal pieces and the slots between them, per part."""

    parts: tuple[tuple[tuple[str, ...], tuple[tuple[str, bool], ...]], ...]

    @classmethod
    def of(cls, subject: str, body: str, page: str) -> _Shape | None:
        parts = []
        for text in (subject, body, page):
            pieces = _MARK.split(text)
            # split() yields text, name, ":when"|None, text, ...
            literals = tuple(pieces[0::3])
            slots = tuple(
                (n, w is not None) for n, w in zip(pieces[1::3], pieces[2::3], strict=True)
            )
            if "\x00" in "".join(literals) or any(n not in _SLOTS for n, _ in slots):
                return None  # a value was changed on its way (upper(), a slice...)
            parts.append((literals, slots))
        return cls(tuple(parts))

    def fill(self, values: dict[str, Any], fmt: str | None) -> tuple[str, str, str]:
        # A value shown in several places (the link, the expiry: in the text and the HTML) is
        # formatted, and escaped for the HTML, once per message.
        shown: dict[tuple[str, bool], str] = {}
        escaped: dict[tuple[str, bool], str] = {}
        out = []
        for k, (literals, slots) in enumerate(self.parts):
            html = k == 2
            text = [literals[0]]
            for slot, literal in zip(slots, literals[1:], strict=True):
                value = shown.get(slot)
                if value is None:
                    name, when = slot
                    value = _when(fmt, values[name]) if when else str(values[name])
                    shown[slot] = value
                if html:
                    plain, value = value, escaped.get(slot)
                    if value is None:
                        value = escaped[slot] = str(markupsafe.escape(plain))
                text.append(value)
                text.append(literal)
            out.append("".join(text))
        return out[0], out[1], out[2]


class Outgoing(msgspec.Struct, frozen=True):
    """A message ready to deliver: the envelope and the whole RFC 5322 message. It holds the
    link in plain form: never log it."""

    sender: str
    recipient: str
    data: bytes

    def __repr__(self) -> str:
        return f"Outgoing(to={self.recipient!r}, {len(self.data)} bytes)"


def _header_text(value: str) -> str:
    """A header value on one line, as an RFC 2047 encoded-word when it is not ASCII."""
    value = " ".join(value.split())  # no CR/LF can reach a header, whatever a template says
    if value.isascii():
        return value
    # Encoded-words of at most 75 characters: 45 bytes of UTF-8 become 60 of base64.
    words: list[bytes] = []
    chunk = b""
    for char in value:
        piece = char.encode()
        if len(chunk) + len(piece) > 45:
            words.append(chunk)
            chunk = b""
        chunk += piece
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode()}?=" for w in words)


def compose(
    sender: str, recipient: str, subject: str, text: str, html: str, locale: str
) -> Outgoing:
    """A multipart/alternative message, text then HTML, both UTF-8 in 8bit (the link stays whole
    in the raw message, for grep and scripts), built directly: the stdlib's EmailMessage parses
    and re-folds every header, which cost more than everything else about a reset."""
    boundary = "=_" + secrets.token_hex(12)
    domain = sender.rpartition("@")[2].strip("> ") or "localhost"
    head = (
        f"From: {_header_text(sender)}\r\n"
        f"To: {_header_text(recipient)}\r\n"
        f"Date: {_date_now()}\r\n"
        f"Message-ID: <{secrets.token_hex(16)}@{domain}>\r\n"
        f"Subject: {_header_text(subject)}\r\n"
        f"Content-Language: {locale}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
        "\r\n"
    )
    part = (
        '--{b}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )

    def crlf(body: str) -> str:
        return body.replace("\r\n", "\n").replace("\n", "\r\n")

    data = (
        head
        + part.format(b=boundary, kind="plain")
        + crlf(text)
        + "\r\n"
        + part.format(b=boundary, kind="html")
        + crlf(html)
        + f"\r\n--{boundary}--\r\n"
    )
    return Outgoing(sender, recipient, data.encode())


# The Date header of the current second: under load many messages share one second, and
# formatting it took about 10 us of the 40 composing a reset mail took.
_date: tuple[int, str] = (0, "")


def _date_now() -> str:
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date[1]


def _when(fmt: str | None, ts: float | _Slot | None) -> str:
    if isinstance(ts, _Slot):
        return f"\x00{ts.name}:when\x00"
    if ts is None:
        return ""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime(fmt) if fmt else moment.isoformat(timespec="minutes")
