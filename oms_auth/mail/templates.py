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

import functools
from datetime import UTC, datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import jinja2

from ..engine.names import is_locale

__all__ = ["Templates", "reset_link", "SHIPPED", "LOCALES"]

SHIPPED = Path(__file__).with_name("templates")
LOCALES = ("en", "de")  # the translations that ship
DEFAULT_LOCALE = "en"
# How a time reads in each shipped locale (others: ISO 8601).
_TIME_FORMATS = {"en": "%Y-%m-%d %H:%M UTC", "de": "%d.%m.%Y, %H:%M UTC"}
_NOTICES = frozenset({"2fa-enabled", "2fa-disabled", "questions-set", "forced-logoff"})


class _CachedRegistry(HeaderRegistry):
    """The stdlib registry builds a new header class (with type()) for every header it sets;
    building each once takes ~0.5 ms off every message."""

    @functools.cache  # noqa: B019  (one registry for the process: the cache is meant to live)
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


_POLICY = policy.default.clone(header_factory=_CachedRegistry())


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
    ) -> EmailMessage:
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
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = sender
        msg["To"] = recipient
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or "localhost")
        msg["Subject"] = subject
        # 8bit, not quoted-printable: the link stays whole in the raw message (grep, scripts).
        msg.set_content(body.lstrip("\n"), cte="8bit")
        msg.add_alternative(page, subtype="html", cte="8bit")
        msg["Content-Language"] = locale  # after the parts: set_content drops Content-* headers
        return msg


def _when(fmt: str | None, ts: float | None) -> str:
    if ts is None:
        return ""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime(fmt) if fmt else moment.isoformat(timespec="minutes")
