"""The emailed one-time link (docs/rules.md, "The code and the link"): a reset, or an invitation to
set a first password.

Both are the same kind of PendingCode, completed by ResetPassword2 under the same rules; they
differ in the message and in how long the link lives (``code_valid_seconds``, or
``invite_valid_seconds`` for a user who has no password yet). Issuing one voids the user's
earlier links, so a re-invitation voids the older invitation.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..crypto import digest, mail_context, new_pending_code
from ..store import AuditEntry, Authority, Claim, CodeIssue, MailItem, User
from .deps import Deps

__all__ = ["issue_link", "link_kind", "user_mail"]


def user_mail(
    kind: str, user: User, public: dict[str, Any], sealed: bytes | None = None
) -> MailItem:
    """A message to the user, in its language: ``public`` is what its template may show anyone
    who reads the store, ``sealed`` (already encrypted) what must stay secret."""
    return MailItem(
        kind=kind,
        recipient=user.email,
        user_id=user.id,
        public={"username": user.username, "locale": user.locale, **public},
        sealed=sealed,
    )


def link_kind(target: User) -> str:
    """``invite`` for a user who has never set a password, else ``reset``."""
    return "invite" if target.invited else "reset"


async def issue_link(
    deps: Deps,
    target: User,
    now: float,
    audit: AuditEntry,
    limit: Claim | None = None,
    *,
    authority: Authority | None = None,
) -> bool:
    """Store a new code for ``target`` (voiding its earlier ones) and queue its mail, at once;
    with ``limit``, only if a slot of it is left, taken in the same transaction (False: none
    was, nothing written); with the caller's ``authority``, only while it holds (CallerGone:
    nothing written)."""
    s = deps.settings
    kind = link_kind(target)
    code = new_pending_code()
    expires_at = now + (s.invite_valid_seconds if kind == "invite" else s.code_valid_seconds)
    sealed = deps.sealer.seal(msgspec.json.encode({"code": code}), mail_context(target.id, kind))
    mail = user_mail(kind, target, {"expires_at": expires_at}, sealed)
    issue = CodeIssue(
        user_id=target.id,
        digest=digest(code),
        now=now,
        expires_at=expires_at,
        mail=mail,
        audit=[audit],
        limit=limit,
        authority=authority,
    )
    if not await deps.store.issue_code(issue):
        return False
    deps.events.count("invitations_sent" if kind == "invite" else "resets_requested")
    deps.events.mail_queued()
    return True
