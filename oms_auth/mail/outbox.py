"""The outbox worker: delivers queued messages, retrying with backoff until they go or give up.

A message that fails is tried again after ``mail_retry_seconds``, the wait doubling up to
:data:`MAX_BACKOFF`, until it is ``mail_max_age`` old (its last try falls exactly then); only a
failure at that age marks it failed, counted in ``oms_auth_mail_failed_total``, audited and
logged with the transport's error alone (never the message's sealed part).

Messages are put in the outbox by the same transaction as the decision that sends them, so an
acknowledged request's mail survives a crash. The worker claims due rows (a claim is a lease:
if the process dies mid-delivery the row comes due again), opens the sealed part with the
service key, delivers, and marks the row sent, which erases the sealed part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import msgspec

from ..crypto import mail_context
from ..engine.deps import Deps
from ..store import AuditEntry, OutboxRow
from ..tasks import cancel
from .maildir import MaildirTransport
from .smtp import SmtpTransport
from .templates import Outgoing, Templates, reset_link

__all__ = ["Transport", "transport_for", "OutboxWorker"]

log = logging.getLogger("oms_auth.mail")

MAX_BACKOFF = 15 * 60.0  # the longest wait between two tries (docs/operations.md, "Mail")
BATCH = 512  # messages per pass: one transport trip and one store transaction for them all


class Transport(Protocol):
    async def start(self) -> None:
        """Before the first delivery: clear what a dead process left (Maildir ``tmp/``)."""

    async def send(self, message: Outgoing, mail_id: int) -> None: ...

    async def send_batch(self, batch: list[tuple[Outgoing, int]]) -> list[Exception | None]:
        """Deliver several; each one's outcome in order (None: delivered)."""
        ...

    async def close(self) -> None: ...

    async def writable(self) -> str | None:
        """None when the transport's folder takes a write (``/healthz``); else why not."""
        ...


def transport_for(uri: str) -> Transport:
    """``maildir:PATH`` or ``smtp://host:port``."""
    if uri.startswith("maildir:"):
        return MaildirTransport(uri.removeprefix("maildir:") or "./mail")
    if uri.startswith(("smtp://", "smtps://")):
        return SmtpTransport(uri)
    raise ValueError(f"mail transport {uri!r} is neither maildir:PATH nor smtp://host:port")


class OutboxWorker:
    """Runs until stopped; ``wake()`` makes it look at once (after a commit that queued mail)."""

    def __init__(
        self, deps: Deps, transport: Transport, public_url: str, *, poll_seconds: float = 5.0
    ) -> None:
        self.deps = deps
        self.transport = transport
        # This deployment's address: links are built here, so mail queued by the CLI or by
        # another node carries it too.
        self.public_url = public_url
        self.poll_seconds = poll_seconds
        s = deps.settings
        self.templates = Templates(
            s.mail_templates,
            brand=s.brand_name,
            support_email=s.support_email,
            support_url=s.support_url,
            default_locale=s.default_locale,
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The messages this pass claimed and has not yet marked sent or retried.
        self._in_hand: list[int] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once; the claims of a pass cut short are handed back, due at once for the
        next node or start (not after their lease; a message the transport took just before
        may then be sent twice, never lost)."""
        await cancel(self._task)
        self._task = None
        in_hand, self._in_hand = self._in_hand, []
        if in_hand:
            await self.deps.store.hand_back_mail(in_hand, self.deps.clock())
        await self.transport.close()

    async def _run(self) -> None:
        try:
            await self.transport.start()
        except Exception:
            log.exception("mail transport could not start; delivering anyway")
        while True:
            try:
                busy = await self.deliver_due()
            except Exception:
                log.exception("outbox pass failed; retrying")
                busy = False
            if busy:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()

    async def deliver_due(self) -> bool:
        """One pass: deliver what is due, as one batch (one trip to the transport, one store
        transaction marking them sent with their audit rows). True when it found work."""
        d = self.deps
        claiming = asyncio.ensure_future(
            d.store.claim_mail(d.clock(), d.settings.mail_lease_seconds, BATCH)
        )
        try:
            rows = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # A stopping node: the claim may have committed after all. What it claimed is in
            # hand, so stop() hands it back due at once; cut short, it would wait out its lease
            # (on PostgreSQL no restart reclaims it sooner).
            with contextlib.suppress(Exception):
                self._in_hand = [row.id for row in await claiming]
            raise
        if not rows:
            return False
        self._in_hand = [row.id for row in rows]
        ready: list[tuple[OutboxRow, Outgoing]] = []
        for row in rows:
            try:
                ready.append((row, self._message(row)))
            except Exception as exc:  # a row that cannot be rendered (a broken template)
                await self._failed(row, exc)
        try:
            outcomes = await self.transport.send_batch([(m, row.id) for row, m in ready])
        except Exception as exc:  # the transport failed as a whole: each message is retried
            outcomes = [exc] * len(ready)
        sent: list[int] = []
        audit: list[AuditEntry] = []
        for (row, _), error in zip(ready, outcomes, strict=True):
            if error is not None:
                await self._failed(row, error)
                continue
            sent.append(row.id)
            audit.append(
                AuditEntry(action=f"{row.kind}-emailed", target_id=row.user_id, source="outbox")
            )
        if sent:
            await d.store.mails_delivered(sent, d.clock(), audit)
            for _ in sent:
                d.events.count("mail_sent")
        self._in_hand = []
        return True

    def _message(self, row: OutboxRow) -> Outgoing:
        d = self.deps
        secret = {}
        if row.sealed is not None:
            opened = d.sealer.open(row.sealed, mail_context(row.user_id, row.kind))
            secret = msgspec.json.decode(opened)
        if "code" in secret and row.user_id is not None:
            secret["link"] = reset_link(self.public_url, row.user_id, secret.pop("code"))
        return self.templates.render(
            row.kind, row.public, secret, sender=d.settings.mail_from, recipient=row.recipient
        )

    async def _failed(self, row: OutboxRow, exc: Exception) -> None:
        d = self.deps
        now = d.clock()
        # The error text is about the transport (a refused connection, a 4xx); it holds no code.
        error = f"{type(exc).__name__}: {exc}"[:300]
        give_up_at = row.created_at + d.settings.mail_max_age
        if now >= give_up_at:
            await self._gave_up(row, now, error)
            return
        backoff = d.settings.mail_retry_seconds * 2 ** min(row.attempts - 1, 32)
        retry_at = min(now + min(backoff, MAX_BACKOFF), give_up_at)
        await d.store.mail_failed(row.id, now, error, retry_at)
        d.events.count("mail_retried")
        log.warning(
            "mail %d attempt %d failed (%s); retry in %.1f s",
            row.id,
            row.attempts,
            error,
            retry_at - now,
        )

    async def _gave_up(self, row: OutboxRow, now: float, error: str) -> None:
        """Mark the message failed (its sealed part is erased), count, log and audit it."""
        d = self.deps
        await d.store.mail_failed(row.id, now, error, None)
        d.events.count("mail_failed_total")
        log.error(
            "mail %d (%s) to user %s failed for good after %d attempts in %.0f h: %s",
            row.id,
            row.kind,
            row.user_id,
            row.attempts,
            (now - row.created_at) / 3600,
            error,
        )
        entry = AuditEntry(
            action=f"{row.kind}-mail-failed", target_id=row.user_id, source="outbox", detail=error
        )
        await d.store.audit([entry], now)
