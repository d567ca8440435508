"""The messages oms-auth sends: text and HTML parts, no remote content, no tracking."""

from __future__ import annotations

import functools
import html
from datetime import UTC, datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

__all__ = ["render", "reset_link"]


class _CachedRegistry(HeaderRegistry):
    """The stdlib registry builds a new header class (with type()) for every header it sets;
    building each once takes ~0.5 ms off every message."""

    @functools.cache  # noqa: B019  (one registry for the process: the cache is meant to live)
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


_POLICY = policy.default.clone(header_factory=_CachedRegistry())


# What a completed reset did to the user's API keys (``reset_keeps_api_keys``), in one sentence.
_API_KEYS_AFTER_RESET = {
    "revoked": "Any API keys of your account were revoked too: bots using them need new keys.",
    "kept": "The API keys of your account were kept and still work: remove any you do not know.",
}


def reset_link(public_url: str, user_id: int, code: str) -> str:
    return f"{public_url.rstrip('/')}/reset?UserId={user_id}&PendingCode={code}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


# Notices of a change to the account's security (SPEC section 2a): what happened, in one
# sentence; {at} is when.
_NOTICES = {
    "2fa-enabled": (
        "Two-factor authentication was turned on",
        "Two-factor authentication was turned on for your trading account at {at}. From now on"
        " a login asks for a code from your authenticator app.",
    ),
    "2fa-disabled": (
        "Two-factor authentication was turned off",
        "Two-factor authentication was turned off for your trading account at {at}. A login now"
        " needs only your password.",
    ),
    "questions-set": (
        "Your security questions were changed",
        "The security questions of your trading account were changed at {at}.",
    ),
    "forced-logoff": (
        "Your sessions were logged off",
        "An operator logged off every session of your trading account at {at}. Log in again to"
        " go on.",
    ),
}
_NOT_YOU = "If this was not you, contact support at once."


def _link_mail(kind: str, name: str) -> tuple[str, list[str], str]:
    """A reset or an invitation: subject, paragraphs before the link, the link's words."""
    if kind == "invite":
        return (
            "Set the password of your new trading account",
            [
                f"An account was created for you on the exchange, with the username {name}.",
                "To choose its password, open this link:",
            ],
            "Choose your password",
        )
    return (
        "Reset your password",
        [
            "Someone asked to reset the password of your trading account. To choose a new"
            " password, open this link:"
        ],
        "Choose a new password",
    )


def render(
    kind: str, public: dict[str, Any], secret: dict[str, Any], *, sender: str, recipient: str
) -> EmailMessage:
    """Build the message for an outbox row; ``secret`` is what was sealed (the link)."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or "localhost")
    name = public.get("username", "")
    after: list[str] = []
    link = None
    if kind in ("reset", "invite"):
        link = secret["link"]
        expires = _when(public["expires_at"])
        subject, before, words = _link_mail(kind, name)
        after = [f"The link works once and expires at {expires}."]
        if kind == "reset":
            after.append(
                "If you did not ask for this, ignore this message: your password stays as it is."
            )
        else:
            after.append("If you expected no such account, ignore this message.")
    elif kind == "password-changed" and public.get("first"):
        subject = "Your password was set"
        before = [
            f"The first password of your trading account was set at {_when(public['changed_at'])}."
            " If this was not you, contact support at once."
        ]
    elif kind == "password-changed":
        subject = "Your password was changed"
        before = [
            f"The password of your trading account was changed at {_when(public['changed_at'])},"
            " and every session was logged off. If this was not you, contact support at once."
        ]
        keys = _API_KEYS_AFTER_RESET.get(public.get("api_keys", ""), "")
        if keys:
            before.append(keys)
    elif kind in _NOTICES:
        subject, sentence = _NOTICES[kind]
        before = [sentence.format(at=_when(public["at"])), _NOT_YOU]
    else:
        raise ValueError(f"unknown mail kind {kind!r}")
    msg["Subject"] = subject
    text = f"Hello {name},\n\n" + "".join(p + "\n\n" for p in before)
    body = f"<p>Hello {html.escape(name)},</p>" + "".join(
        f"<p>{html.escape(p)}</p>" for p in before
    )
    if link is not None:
        text += f"{link}\n\n"
        body += f'<p><a href="{html.escape(link)}">{words}</a></p>'
    text += "".join(p + "\n" for p in after)
    body += "".join(f"<p>{html.escape(p)}</p>" for p in after)
    # 8bit, not quoted-printable: the link stays whole in the raw message (grep, scripts).
    msg.set_content(text, cte="8bit")
    msg.add_alternative(
        f"<!doctype html><html><body>{body}</body></html>", subtype="html", cte="8bit"
    )
    return msg
