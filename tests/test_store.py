"""Store housekeeping, on every store: what no rule looks at any more is deleted."""

from __future__ import annotations

from oms_auth.app import App
from oms_auth.store import AuditEntry, MailItem

from .helpers import make_user


async def test_prune_deletes_old_events_idle_sessions_and_spent_codes(app: App) -> None:
    store = app.deps.store
    user = await make_user(app.deps, "alice")
    await store.add_event("k", "a", 100.0)
    await store.add_event("k", "a", 5000.0)
    await store.open_session(b"old" * 8, user, 100.0, 0)
    await store.open_session(b"new" * 8, user, 5000.0, 0)
    mail = MailItem(kind="reset", recipient="a@x.test", user_id=user, public={})
    await store.issue_code(user, b"c1" * 16, 100.0, 200.0, mail, [AuditEntry(action="t")])
    await store.issue_code(user, b"c2" * 16, 4000.0, 90000.0, mail, [AuditEntry(action="t")])
    assert await store.prune(1000.0, 1000.0) == 3
    assert await store.count_events("k", "a", 0) == 1
    assert await store.session(b"old" * 8) is None
    assert await store.session(b"new" * 8) is not None
    assert await store.reset_code(b"c1" * 16) is None
    assert (await store.reset_code(b"c2" * 16)) is not None  # still pending: kept
    assert await store.prune(1000.0, 1000.0) == 0
