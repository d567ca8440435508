"""The messages oms-auth sends, from Jinja2 templates an exchange can replace and translate.

Each kind of message is a pair of templates, ``KIND.txt`` (its first line ``Subject: ...``, then
the text part) and ``KIND.html`` (the HTML part, usually extending ``base.html``), in a folder
per locale. The security notices (2FA turned on or off, questions changed, a forced logoff) share
``notice.*``, told apart by ``event``. A deployment's ``mail_templates`` folder is searched
first, then the shipped ones (``en``, ``de``), each in the user's locale, then ``en``: an
exchange replaces only the files it wants to. Templates see ``brand``, ``support_email``,
``support_url``, ``username``, ``recipient``, ``locale``, the message's own values (``link``,
``expires_at``, ``changed_at``, ``at``, ``api_keys``, ``first``, ``event``) and the filter
``when`` (a time, in the locale's way). HTML is autoescaped; no remote content, no tracking.
"""

from __future__ import annotations

import base64
import functools
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
import msgspec

from ..engine.names import is_locale

__all__ = ["Templates", "Outgoing", "compose", "reset_link", "SHIPPED", "LOCALES"]

SHIPPED = Path(__file__).with_name("templates")
LOCALES = ("en", "de")  # the translations that ship
DEFAULT_LOCALE = "en"
# How a time reads in each shipped locale (others: ISO 8601).
_TIME_FORMATS = {"en": "%Y-%m-%d %H:%M UTC", "de": "%d.%m.%Y, %H:%M UTC"}
_NOTICES = frozenset({"2fa-enabled", "2fa-disabled", "questions-set", "forced-logoff"})


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
        locale = public.get("locale") or self.default_locale
        if not isinstance(locale, str) or not is_locale(locale):
            locale = self.default_locale
        name = "notice" if kind in _NOTICES else kind
        if name not in ("reset", "invite", "password-changed", "notice"):
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
            **public,
            **secret,
            "event": kind,
            "recipient": recipient,
            "locale": locale,
        }
        env = self._env(locale)
        text = env.get_template(f"{name}.txt").render(values)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise ValueError(f"{name}.txt must begin with a 'Subject:' line")
        subject = first.removeprefix("Subject:").strip()
        page = env.get_template(f"{name}.html").render({**values, "subject": subject})
        return compose(sender, recipient, subject, body.lstrip("\n"), page, locale)


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
        f"Date: {format_datetime(datetime.now(UTC))}\r\n"
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


def _when(fmt: str | None, ts: float | None) -> str:
    if ts is None:
        return ""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime(fmt) if fmt else moment.isoformat(timespec="minutes")
