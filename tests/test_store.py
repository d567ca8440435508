"""The store's rules, on every store: housekeeping, a reset code's life, the outbox's claims."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oms_auth.app import App
from oms_auth.crypto import audit_key
from oms_auth.store import (
    AuditEntry,
    Claim,
    CodeState,
    DeviceCodeIssue,
    Imported,
    ImportItem,
    MailItem,
    NewUser,
    Outcome,
    Store,
    open_store,
)

from .helpers import is_postgres, make_user, sql
from .store_helpers import code_state, count_events, issue, login, redeem, store_at_version

NOW = 1_800_000_000.0


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    opened = await open_store(db, audit_key=audit_key(bytes(range(32))))
    try:
        yield opened
    finally:
        await opened.close()


async def a_user(store: Store) -> int:
    return await store.create_user(NewUser(username="alice", email="a@x.test", password_hash="h"))


def mail(user_id: int, kind: str = "reset") -> MailItem:
    return MailItem(kind=kind, recipient="a@x.test", user_id=user_id, public={"n": 1})


async def test_prune_deletes_old_events_idle_sessions_and_spent_codes(app: App) -> None:
    store = app.deps.store
    user = await make_user(app.deps, "alice")
    db = app.deps.settings.db
    assert await store.reserve([Claim("k", "a", 10_000, 10)], 100.0) == [0]
    assert await store.reserve([Claim("k", "a", 10_000, 10)], 5000.0) == [1]
    await login(store, b"old" * 8, user, 100.0, 0)
    await login(store, b"new" * 8, user, 5000.0, 0)
    mail = MailItem(kind="reset", recipient="a@x.test", user_id=user, public={})
    await issue(store, user, b"c1" * 16, 100.0, 200.0, mail, [AuditEntry(action="t")])
    await issue(store, user, b"c2" * 16, 4000.0, 90000.0, mail, [AuditEntry(action="t")])
    assert await store.prune(1000.0, 1000.0) == 3
    assert await count_events(db, "k", "a") == 1
    assert await store.session(b"old" * 8) is None
    assert await store.session(b"new" * 8) is not None
    assert await code_state(db, b"c1" * 16) is None
    assert await code_state(db, b"c2" * 16) is CodeState.PENDING  # still pending: kept
    assert await store.prune(1000.0, 1000.0) == 0


# -- a reset code's life (oms_auth.store.codes) ------------------------------------------------


async def test_a_code_moves_only_as_its_table_says(store: Store, db: str) -> None:
    uid = await a_user(store)
    one, two, three = b"1" * 32, b"2" * 32, b"3" * 32

    async def state(digest: bytes) -> CodeState | None:
        return await code_state(db, digest)

    async def redeem_code(digest: bytes, now: float = NOW) -> Outcome:
        return await redeem(store, uid, digest, "new", now, mail(uid, "changed"))

    await issue(store, uid, one, NOW, NOW + 60, mail(uid), [])
    assert await state(one) is CodeState.PENDING
    await issue(store, uid, two, NOW, NOW + 60, mail(uid), [])  # a newer code
    assert (await state(one), await state(two)) == (CodeState.VOID, CodeState.PENDING)
    assert await redeem_code(one) is Outcome.INVALID  # void stays void
    assert await redeem_code(two) is Outcome.DONE
    assert await state(two) is CodeState.USED
    assert await redeem_code(two) is Outcome.INVALID  # used once
    await issue(store, uid, three, NOW, NOW + 60, mail(uid), [])  # voids pending ones only
    assert [await state(d) for d in (one, two, three)] == [
        CodeState.VOID,
        CodeState.USED,
        CodeState.PENDING,
    ]
    invalid = Claim("invalid-code", "test", 3600, 100)
    for spent in (one, two):
        assert (await store.check_code(spent, uid, NOW, invalid))[0] is Outcome.INVALID
    outcome, code = await store.check_code(three, None, NOW, invalid)
    assert outcome is Outcome.DONE and code is not None and code.state is CodeState.PENDING
    assert (await store.check_code(three, uid + 1, NOW, invalid))[0] is Outcome.INVALID
    # Expiry is derived from the time, not a state: the row stays pending, and is dead.
    assert (await store.check_code(three, uid, NOW + 60, invalid))[0] is Outcome.INVALID
    assert await redeem_code(three, NOW + 60) is Outcome.INVALID
    assert await state(three) is CodeState.PENDING


async def test_a_password_change_voids_the_user_s_other_pending_codes(
    store: Store, db: str
) -> None:
    uid = await a_user(store)
    await issue(store, uid, b"a" * 32, NOW, NOW + 60, mail(uid), [])
    other = await store.create_user(NewUser(username="bob", email="b@x.test", password_hash="h"))
    await issue(store, other, b"b" * 32, NOW, NOW + 60, mail(other), [])
    assert await redeem(store, uid, b"a" * 32, "new", NOW, mail(uid)) is Outcome.DONE
    assert await code_state(db, b"b" * 32) is CodeState.PENDING  # another user's: untouched


# -- the outbox: what a claim says is what the store holds -------------------------------------


async def test_a_claim_reports_the_attempt_it_counts_as_stored(store: Store, db: str) -> None:
    # Both stores count the claim in the UPDATE and report attempts as that UPDATE left them
    # (SQLite once added 1 to what it had read before its UPDATE; PostgreSQL reads RETURNING).
    uid = await a_user(store)
    await issue(store, uid, b"c" * 32, NOW, NOW + 60, mail(uid), [])

    async def stored(mail_id: int) -> int:
        ((attempts,),) = await sql(db, "SELECT attempts FROM outbox WHERE id = ?", mail_id)
        return int(attempts)

    (first,) = await store.claim_mail(NOW, 120, 10)
    assert first.attempts == 1 == await stored(first.id)
    assert first.public == {"n": 1} and first.kind == "reset"
    assert await store.claim_mail(NOW + 60, 120, 10) == []  # leased
    (again,) = await store.claim_mail(NOW + 121, 120, 10)  # the lease ran out
    assert again.id == first.id and again.attempts == 2 == await stored(again.id)
    await store.mail_failed(again.id, NOW + 121, "refused", NOW + 130)
    (third,) = await store.claim_mail(NOW + 130, 120, 10)
    assert third.attempts == 3 == await stored(third.id)
    await store.mails_delivered([third.id], NOW + 131)
    assert await store.claim_mail(NOW + 1000, 120, 10) == []
    assert await store.mail_counts() == {"queued": 0, "sent": 1, "failed": 0}


async def test_claims_come_in_id_order_up_to_the_limit(store: Store) -> None:
    uid = await a_user(store)
    for n in range(5):
        await issue(store, uid, bytes([n]) * 32, NOW, NOW + 60, mail(uid), [])
    first = await store.claim_mail(NOW, 120, 3)
    rest = await store.claim_mail(NOW, 120, 3)
    assert [r.id for r in first] == sorted(r.id for r in first) and len(first) == 3
    assert len(rest) == 2 and max(r.id for r in first) < min(r.id for r in rest)


# -- usernames that look alike (migration 7) ----------------------------------------------------


async def test_a_store_from_before_skeletons_fills_them_in_and_refuses_lookalikes(db: str) -> None:
    """Users written by schema 6 get their skeletons at open; a new name that looks like one of
    them is refused in the transaction that would insert it, a merely similar one is not."""

    from oms_auth.store import UsernameConfusable, UsernameTaken

    insert = (
        "INSERT INTO users (username, username_key, email, oms_id, password_hash)"
        " VALUES ('trader1', 'trader1', 't@example.test', 1, 'h')"
    )
    await store_at_version(db, 6, [insert])
    store = await open_store(db, audit_key=b"k" * 32)
    try:
        for lookalike, error in (
            ("tr\u0430der1", UsernameConfusable),
            ("TRADERl", UsernameConfusable),
            ("Trader1", UsernameTaken),
        ):
            with pytest.raises(error):
                await store.create_user(
                    NewUser(username=lookalike, email="x@example.test", password_hash="h")
                )
        assert await store.create_user(
            NewUser(username="trader2", email="x@example.test", password_hash="h")
        )
    finally:
        await store.close()


async def test_a_device_code_out_of_tries_stays_spent_when_another_user_shares_its_hash_code(
    store: Store,
) -> None:
    # A HashCode is 31 bits of an HMAC over the user and the device, so two users' devices
    # may share one; RegisterNewDevice names only the HashCode. The try counted on the other
    # user's row must not buy a sixth try at the first user's code.
    alice = await a_user(store)
    bob = await store.create_user(NewUser(username="bob", email="b@x.test", password_hash="h"))

    async def code(user_id: int, secret: bytes) -> None:
        issued = DeviceCodeIssue(
            user_id=user_id,
            hash_code=7,
            name="Firefox",
            address="192.0.2.1",
            now=NOW,
            digest=secret,
            expires_at=NOW + 900,
            mail=mail(user_id, "device-code"),
            audit=AuditEntry(action="device-code-sent"),
        )
        await store.issue_device_code(issued)

    async def try_code(secret: bytes) -> int | None:
        return await store.register_device(
            7, secret, NOW + 1, 5, NOW + 86400, AuditEntry(action="t")
        )

    await code(alice, b"a" * 32)
    assert [await try_code(b"x" * 32) for _ in range(5)] == [None] * 5
    await code(bob, b"b" * 32)  # bob's new code: its row has its five tries
    assert await try_code(b"a" * 32) is None  # alice's code is out of tries
    assert (await store.device(alice, 7)).trusted_until is None  # type: ignore[union-attr]
    assert await try_code(b"b" * 32) == bob


async def test_an_imported_batch_keeps_every_character_of_its_texts(store: Store, db: str) -> None:
    # SQLite writes a batch as one JSON text, whose strings end at a NUL: a batch holding one
    # is written a row at a time (PostgreSQL refuses a NUL in any text).
    texts = ["Première école, 学校?", "before\x00after"]
    for n, question in enumerate(texts if not is_postgres(db) else texts[:1]):
        batch = [
            ImportItem(
                user=NewUser(
                    username=f"u{n}-{i}",
                    email=f"é{i}@x.test",
                    password_hash="h",
                    accounts=(10 * n + i + 1,),
                    questions=((question, "$argon2id$x"),),
                ),
                audit=AuditEntry(action="user-imported", target_name=f"u{n}-{i}", source="cli"),
            )
            for i in range(3)
        ]
        outcomes = await store.import_users(batch)
        for i, (outcome, user_id) in enumerate(outcomes):
            assert outcome is Imported.DONE and user_id is not None
            user = await store.user_by_id(user_id)
            assert user is not None and (user.email, user.accounts) == (
                f"é{i}@x.test",
                {10 * n + i + 1},
            )
            (stored,) = await store.security_questions(user_id)
            assert stored.question == question


async def test_a_caller_and_the_user_it_names_are_read_together(store: Store) -> None:
    alice = await a_user(store)
    bob = await store.create_user(NewUser(username="Bob", email="b@x.test", password_hash="h"))
    caller, named = await store.user_and_named(alice, "  BOB ")
    assert caller is not None and caller.id == alice and caller.username == "alice"
    assert named is not None and named.id == bob and named.username == "Bob"
    assert (caller, named) == (await store.user_by_id(alice), await store.user_by_name("bob"))
    itself, same = await store.user_and_named(alice, "Alice")
    assert itself is not None and same is not None and itself.id == same.id == alice
    assert await store.user_and_named(alice, "carol") == (caller, None)
    assert await store.user_and_named(alice + bob, "bob") == (None, named)
    assert await store.user_and_named(alice, "bob\x00") == (caller, None)


# -- reads by key (docs/performance.md, "Reads by key on the event loop") ------------------------


async def test_a_read_run_on_the_event_loop_finds_its_rows_through_an_index(tmp_path: Path) -> None:
    """SQLite runs a read by key on the event loop itself, which waits for nothing else while
    it runs: each must find its few rows through an index. One that scans a table (every
    user's questions, every user for an email) holds every request for as long as the table
    is large (50,000 users: 12-18 ms a read)."""
    import sqlite3

    store = await open_store(str(tmp_path / "s.sqlite3"), audit_key=audit_key(bytes(range(32))))
    try:
        uid = await a_user(store)
        keyed = store._k  # type: ignore[attr-defined]
        ran: list[tuple[str, tuple[object, ...]]] = []

        class Recording:
            def execute(self, statement: str, args: tuple[object, ...]) -> sqlite3.Cursor:
                ran.append((statement, args))
                return keyed.execute(statement, args)

        store._k = Recording()  # type: ignore[attr-defined]
        try:
            await store.user_by_id(uid)
            await store.user_by_name("alice")
            await store.user_and_named(uid, "bob")
            await store.users_by_email(1, "a@x.test")
            await store.event_count("k", "a", NOW)
            await store.security_questions(uid)
            await store.session(b"s" * 32)
            await store.api_key("key")
            await store.recovery_code_held(uid, b"d" * 32)
            await store.recovery_codes_left(uid)
            await store.device(uid, 7)
            await store.device_code_live(7, NOW, 3)
        finally:
            store._k = keyed  # type: ignore[attr-defined]
        assert len(ran) == 12
        for statement, args in ran:
            plan = [r[3] for r in keyed.execute("EXPLAIN QUERY PLAN " + statement, args)]
            scans = [step for step in plan if step.startswith("SCAN ")]
            assert not scans, f"{statement[:60]}...: {plan}"
    finally:
        await store.close()
