"""docs/rules.md, "Usernames": usernames are global and must not look like one another (TR39
skeletons
from the full Unicode confusables data, invisible characters refused outright); a taken or
look-alike name gets one answer whatever OMS holds it; accounts are per OMS; a username that names
no user is never written to the audit trail or a log as typed. Over real sockets (CreateUser as an
Operator) and through ``oms-auth``, on both stores."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import icu as icu_module  # type: ignore[import-untyped,unused-ignore]
import pytest

from oms_auth.app import App
from oms_auth.engine import names
from oms_auth.store import open_store, username_skeleton
from protocol.client import Client

from .helpers import (
    PASSWORD,
    eventually,
    is_postgres,
    make_user,
    oms_auth,
    sql,
)
from .store_helpers import store_at_version

NOT_AVAILABLE = {
    "result": False,
    "errormsg": "Operation Failed",
    "errorcode": 101,
    "detail": "That username is not available",
}
INVISIBLE = "Invalid value provided for Username: it holds an invisible character"

# Names that look like ``oscar1``: each is one of the holes the attacker found.
HOMOGLYPHS = [
    "\u0585scar1",  # Armenian small letter oh
    "\u1d0fscar1",  # Latin letter small capital O
    "osca\u04331",  # Cyrillic small letter ghe for r
    "oscar\u01c0",  # Latin letter dental click for 1 (l)
]
# Characters that show nothing (or a blank) after an existing name.
INVISIBLES = [
    "trader1\ufe0f",  # variation selector-16
    "trader1\u034f",  # combining grapheme joiner
    "trader1\u3164",  # Hangul filler
    "trader1\u2800",  # Braille pattern blank
    "trader1\u180b",  # Mongolian free variation selector (Default_Ignorable_Code_Point)
    "trader1\U000e0101",  # variation selector-18 (Default_Ignorable_Code_Point)
    "trad\u115fer1",  # Hangul choseong filler, inside the name
]


async def logged_in(app: App, username: str) -> Client:
    c = await Client.connect(app.url)
    reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    assert reply.o["Authenticated"], reply.o
    return c


async def create(c: Client, username: str, **extra: Any) -> dict[str, Any]:
    payload = {"UserName": username, "Email": "new@example.test", **extra}
    return dict((await c.call("CreateUser", payload)).o)


def user_add(tmp_path: Path, username: str, *extra: str) -> Any:
    return oms_auth(
        tmp_path,
        "user",
        "add",
        "--username",
        username,
        "--email",
        "x@example.test",
        "--password",
        "Sekrit-Pass12",
        *extra,
        check=False,
    )


@pytest.fixture
def store_env(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every command below runs on ``db``: the default path for SQLite, OMS_AUTH_DB otherwise."""
    if is_postgres(db):
        monkeypatch.setenv("OMS_AUTH_DB", db)
    return db


# -- 1. look-alikes and invisible characters ---------------------------------------------------


@pytest.mark.parametrize("lookalike", HOMOGLYPHS)
async def test_create_user_refuses_a_homoglyph_of_an_existing_name(
    app: App, lookalike: str
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "oscar1")
    async with await logged_in(app, "op") as c:
        assert await create(c, lookalike) == NOT_AVAILABLE
    assert len(await app.deps.store.list_users()) == 2


@pytest.mark.parametrize("invisible", INVISIBLES)
async def test_create_user_refuses_invisible_characters_outright(app: App, invisible: str) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    async with await logged_in(app, "op") as c:
        # Refused whether or not a name it would look like exists.
        for name in (invisible, invisible.replace("trader1", "fresh7")):
            answer = await create(c, name)
            assert (answer["errorcode"], answer["detail"]) == (100, INVISIBLE), name
    assert len(await app.deps.store.list_users()) == 1


def test_user_add_refuses_homoglyphs_and_invisible_characters(
    tmp_path: Path, store_env: str
) -> None:
    assert user_add(tmp_path, "oscar1").returncode == 0
    for name in HOMOGLYPHS:
        out = user_add(tmp_path, name)
        assert out.returncode == 2 and out.stderr == "oms-auth: That username is not available\n"
    for name in INVISIBLES:
        out = user_add(tmp_path, name)
        assert out.returncode == 2 and out.stderr == f"oms-auth: {INVISIBLE}\n", name
    listed = oms_auth(tmp_path, "user", "list").stdout.splitlines()[1:]  # after the header
    assert [line.split()[1] for line in listed] == ["oscar1"]


def test_skeletons_come_from_the_full_confusables_data() -> None:
    # Pairs the old hand-written table missed, and pairs it had: all alike in TR39.
    for a, b in [
        ("oscar1", "\u0585scar1"),
        ("oscar1", "osca\u04331"),
        ("TRADERl", "trader1"),
        ("modern", "rnodern"),
        ("paypal", "\u0440\u0430ypal"),
        ("trader_1", "trader1"),
        ("tra\u0301der1", "trader1"),
    ]:
        assert username_skeleton(a) == username_skeleton(b), (a, b)
    for a, b in [("trader1", "trader2"), ("alice", "alicia"), ("bob", "rob")]:
        assert username_skeleton(a) != username_skeleton(b), (a, b)


def test_an_ascii_name_s_skeleton_is_icu_s() -> None:
    # ASCII names take a table of each character's skeleton, not ICU's call: the same result
    # for every string of one or two ASCII characters and for longer names (some with the
    # characters TR39 maps: 0, 1, I, m, |, quotes), as the full steps give.
    def icu(name: str) -> str:
        spoof = icu_module.SpoofChecker()
        once = spoof.getSkeleton(0, unicodedata.normalize("NFKC", name)).casefold()
        return re.sub(r"[\s_\-.]+", "", spoof.getSkeleton(0, re.sub(r"[\s_\-.]+", "", once)))

    ascii_chars = [chr(c) for c in range(128)]
    rnd = random.Random(7)
    pool = ascii_chars + list("0O1lIi|mrn_-. '\"`") * 4
    texts = [a + b for a in ascii_chars for b in ["", *ascii_chars]]
    texts += ["".join(rnd.choices(pool, k=rnd.randint(3, 24))) for _ in range(20_000)]
    for text in texts:
        if "%" not in text:  # its skeleton is not ASCII: ICU's path
            assert username_skeleton.__wrapped__(text) == icu(text), repr(text)


async def test_skeletons_written_before_are_recomputed_at_open(tmp_path: Path, db: str) -> None:
    """A store whose skeletons were computed by the old table (schema 7) gets them recomputed
    at open: a name only the full data finds alike is refused afterwards. (The old table made
    ``bo55`` into ``boss``; TR39 keeps the digits, and finds an Armenian oh alike an o.)"""
    from oms_auth.store import UsernameConfusable
    from oms_auth.store.records import NewUser

    insert = (
        "INSERT INTO users (username, username_key, email, oms_id, password_hash, name_skeleton)"
        " VALUES ('bo55', 'bo55', 't@example.test', 1, 'h', 'boss')"
    )
    await store_at_version(db, 7, [insert])
    store = await open_store(db, audit_key=b"k" * 32)
    try:
        with pytest.raises(UsernameConfusable):
            await store.create_user(
                NewUser(username="b\u058555", email="x@example.test", password_hash="h")
            )
    finally:
        await store.close()


async def test_skeletons_are_recomputed_when_the_confusables_data_changes(db: str) -> None:
    """An ICU upgrade brings newer confusables data: a store recomputes its skeletons at the
    first open with another SKELETON_VERSION, and only then."""
    from oms_auth.store import SKELETON_VERSION, UsernameConfusable
    from oms_auth.store.records import NewUser

    from .helpers import sql

    def new(name: str) -> NewUser:
        return NewUser(username=name, email="x@example.test", password_hash="h")

    store = await open_store(db, audit_key=b"k" * 32)
    await store.create_user(new("bo55"))
    await store.close()
    # As an older function (or data) made it; the same version: left alone at open.
    await sql(db, "UPDATE users SET name_skeleton = 'boss'")
    await (await open_store(db, audit_key=b"k" * 32)).close()
    assert await sql(db, "SELECT name_skeleton FROM users") == [("boss",)]
    if is_postgres(db):
        await sql(db, "UPDATE meta SET value = 'older' WHERE key = 'skeleton_version'")
    else:
        await sql(db, "UPDATE skeleton_version SET version = 'older'")
    store = await open_store(db, audit_key=b"k" * 32)
    try:
        with pytest.raises(UsernameConfusable):
            await store.create_user(new("b\u058555"))
    finally:
        await store.close()
    assert await sql(db, "SELECT name_skeleton FROM users") == [("bo55",)]
    version = "SELECT value FROM meta WHERE key = 'skeleton_version'"
    if not is_postgres(db):
        version = "SELECT version FROM skeleton_version"
    assert await sql(db, version) == [(SKELETON_VERSION,)]


# -- 2. one answer whatever OMS holds the name --------------------------------------------------


async def test_a_taken_or_lookalike_name_gets_one_answer_whatever_oms_holds_it(app: App) -> None:
    await make_user(app.deps, "op2", permissions=["Operator"], oms=2)
    await make_user(app.deps, "theirs", oms=1, accounts=[7])
    await make_user(app.deps, "ours", oms=2, accounts=[8])
    async with await logged_in(app, "op2") as c:
        answers = [
            await create(c, name)
            for name in ("theirs", "THEIRS", "the\u0456rs", "ours", "OURS", "\u043eurs")
        ]
    assert answers == [NOT_AVAILABLE] * 6
    assert len(await app.deps.store.list_users()) == 3


async def test_of_simultaneous_lookalike_names_from_two_omss_exactly_one_is_created(
    app: App,
) -> None:
    await make_user(app.deps, "op1", permissions=["Operator"], oms=1)
    await make_user(app.deps, "op2", permissions=["Operator"], oms=2)
    spellings = ["oscar1", "\u0585scar1", "osca\u04331", "OSCAR1", "oscar_1", "0scar1"]
    clients = [await logged_in(app, "op1" if n % 2 else "op2") for n in range(len(spellings))]
    try:
        pairs = zip(clients, spellings, strict=True)
        answers = await asyncio.gather(*(create(c, name) for c, name in pairs))
    finally:
        for c in clients:
            await c.close()
    created = [a for a in answers if "UserId" in a]
    assert len(created) == 1 and answers.count(NOT_AVAILABLE) == len(spellings) - 1, answers
    assert len(await app.deps.store.list_users()) == 3


def test_user_add_gives_one_answer_for_a_taken_or_lookalike_name(
    tmp_path: Path, store_env: str
) -> None:
    assert user_add(tmp_path, "theirs", "--oms", "1").returncode == 0
    for name in ("theirs", "Theirs", "the\u0456rs", "th\u0435irs"):
        out = user_add(tmp_path, name, "--oms", "2")
        assert out.returncode == 2 and out.stderr == "oms-auth: That username is not available\n"


# -- 3. accounts per OMS -----------------------------------------------------------------------


async def test_account_ids_are_per_oms_and_one_oms_never_takes_or_blocks_anothers(
    app: App,
) -> None:
    await make_user(app.deps, "op1", permissions=["Operator"], oms=1)
    await make_user(app.deps, "op2", permissions=["Operator"], oms=2)
    await make_user(app.deps, "alice", oms=1, accounts=[7], permissions=["Trading"])
    async with await logged_in(app, "op2") as c:
        # OMS 1's account 7 in use, OMS 1's account 8 not yet: OMS 2 gets its own of each.
        seven = (await create(c, "bob", AccountId=7)).get("UserId")
        eight = (await create(c, "carol", AccountId=8, Permissions=["Trading"])).get("UserId")
        assert isinstance(seven, int) and isinstance(eight, int)
        assert (await c.call("GetUserAccounts", {"UserId": seven})).o == [7]
    async with await logged_in(app, "op1") as c:
        dave = (await create(c, "dave", AccountId=8, Permissions=["Trading"])).get("UserId")
        assert isinstance(dave, int)
        assert (await c.call("GetUserAccounts", {"UserId": dave})).o == [8]
    store = app.deps.store
    got = {u.username: (u.oms_id, u.accounts) for u in await store.list_users()}
    assert got["bob"] == (2, {7}) and got["alice"] == (1, {7})
    assert got["carol"] == (2, {8}) and got["dave"] == (1, {8})


async def test_simultaneous_users_of_one_account_id_in_two_omss_all_get_their_own(
    app: App,
) -> None:
    await make_user(app.deps, "op1", permissions=["Operator"], oms=1)
    await make_user(app.deps, "op2", permissions=["Operator"], oms=2)
    wanted = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    clients = [await logged_in(app, "op1" if n % 2 else "op2") for n in range(len(wanted))]
    try:
        answers = await asyncio.gather(
            *(create(c, name, AccountId=7) for c, name in zip(clients, wanted, strict=True))
        )
    finally:
        for c in clients:
            await c.close()
    assert all("UserId" in a for a in answers), answers
    got = {u.username: (u.oms_id, u.accounts) for u in await app.deps.store.list_users()}
    for n, name in enumerate(wanted):
        assert got[name] == (1 if n % 2 else 2, {7})


async def test_sharing_an_account_id_across_omss_lets_no_trader_reset_the_other(app: App) -> None:
    await make_user(app.deps, "op1", permissions=["Operator"], oms=1)
    await make_user(app.deps, "alice", oms=1, accounts=[7], permissions=["Trading"])
    await make_user(app.deps, "mate", oms=1, accounts=[7], permissions=["Trading"])
    await make_user(app.deps, "bob", oms=2, accounts=[7], permissions=["Trading"])
    async with await logged_in(app, "bob") as c:
        answer = (await c.call("ResetPassword", {"UserName": "alice"})).o
        assert answer["errorcode"] == 20
    async with await logged_in(app, "alice") as c:
        assert (await c.call("ResetPassword", {"UserName": "bob"})).o["errorcode"] == 20
        assert (await c.call("ResetPassword", {"UserName": "mate"})).o["result"] is True


def test_user_add_takes_the_same_account_id_in_two_omss(tmp_path: Path, store_env: str) -> None:
    assert user_add(tmp_path, "alice", "--oms", "1", "--account", "7").returncode == 0
    out = user_add(tmp_path, "bob", "--oms", "2", "--account", "7", "--account", "9")
    assert out.returncode == 0, out.stderr
    assert user_add(tmp_path, "carol", "--oms", "1", "--account", "9").returncode == 0
    listed = oms_auth(tmp_path, "user", "list").stdout
    assert re.search(r"bob .*\b7,9\b", listed) and re.search(r"carol .*\b9\b", listed), listed


async def test_accounts_written_before_are_kept_per_oms(tmp_path: Path, db: str) -> None:
    """A store at schema 7 keeps every user's accounts through migration 8, each in its
    user's OMS, and another OMS can then use the same ids."""
    from oms_auth.store.records import NewUser

    def link(name: str, account: int) -> str:
        return (
            "INSERT INTO user_accounts (user_id, account_id)"
            f" SELECT id, {account} FROM users WHERE username = '{name}'"
        )

    steps = [
        "INSERT INTO users (username, username_key, email, oms_id, password_hash, account_id)"
        " VALUES ('alice', 'alice', 'a@example.test', 1, 'h', 7)",
        "INSERT INTO users (username, username_key, email, oms_id, password_hash, account_id)"
        " VALUES ('bob', 'bob', 'b@example.test', 2, 'h', 8)",
        "INSERT INTO accounts (id, oms_id) VALUES (7, 1)",
        "INSERT INTO accounts (id, oms_id) VALUES (8, 2)",
        "INSERT INTO accounts (id, oms_id) VALUES (9, 1)",
        link("alice", 7),
        link("alice", 9),
        link("bob", 8),
    ]
    await store_at_version(db, 7, steps)
    store = await open_store(db, audit_key=b"k" * 32)
    try:
        alice, bob = await store.user_by_name("alice"), await store.user_by_name("bob")
        assert alice is not None and alice.accounts == {7, 9} and alice.account_id == 7
        assert bob is not None and bob.accounts == {8}
        for oms, account in ((2, 7), (2, 9), (1, 8)):
            uid = await store.create_user(
                NewUser(
                    username=f"u{oms}x{account}",
                    email="x@example.test",
                    password_hash="h",
                    oms_id=oms,
                    accounts=(account,),
                )
            )
            created = await store.user_by_id(uid)
            assert created is not None and created.accounts == {account}
    finally:
        await store.close()
    if not is_postgres(db):  # PostgreSQL checked the rows when it added the foreign key
        with sqlite3.connect(db) as lite:
            assert lite.execute("PRAGMA foreign_key_check").fetchall() == []


# -- 4. a username that names no user is never recorded as typed ---------------------------------

TYPED = "Hunter2-Secret!pw"  # a password typed into the username field


async def test_a_name_that_names_no_user_is_recorded_only_as_its_keyed_digest(
    app: App, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[7])
    for name in (TYPED, f"  {TYPED.upper()} ", "another-typo"):
        reply = await client.call("AuthenticateUser", {"UserName": name, "Password": "x"})
        assert reply.o["Authenticated"] is False
    # A reset for the name: self-service (in the background), by an Operator, by a trader.
    assert (await client.call("ResetPassword", {"UserName": TYPED})).o["result"] is True
    for caller in ("op", "trader"):
        async with await logged_in(app, caller) as c:
            assert (await c.call("ResetPassword", {"UserName": TYPED})).o["result"] is False

    async def rows() -> list[Any]:
        return list(await app.deps.store.audit_rows(limit=None, oldest_first=True))

    async def three_refused() -> bool:
        return sum(r.action == "reset-refused" for r in await rows()) == 3

    await eventually(three_refused)
    trail = await rows()
    text = repr(trail)
    assert "hunter2" not in text.lower() and "another-typo" not in text
    assert "hunter2" not in caplog.text.lower()
    token = names.unknown_name(app.deps.names_key, TYPED)
    assert re.fullmatch(r"unknown:[0-9a-f]{12}", token)
    failed = [r.target_name for r in trail if r.action == "login-failed"]
    refused = [r.target_name for r in trail if r.action == "reset-refused"]
    # Repeated attempts on one name group together (whatever its case and spacing).
    assert failed[:2] == [token, token] and failed[2] != token
    assert failed[2] == names.unknown_name(app.deps.names_key, "another-typo")
    assert refused == [token] * 3


async def test_a_name_that_names_a_user_is_still_recorded_by_name(app: App, client: Client) -> None:
    await make_user(app.deps, "alice")
    reply = await client.call("AuthenticateUser", {"UserName": "Alice", "Password": "wrong"})
    assert reply.o["Authenticated"] is False
    rows = await app.deps.store.audit_rows(limit=None)
    assert [r.target_name for r in rows if r.action == "login-failed"] == ["alice"]


async def test_audit_user_finds_the_attempts_on_a_name_that_names_no_user(
    app: App, client: Client, tmp_path: Path, db: str
) -> None:
    for _ in range(2):
        await client.call("AuthenticateUser", {"UserName": TYPED, "Password": "x"})
    shown = oms_auth(tmp_path, "audit", "--db", db, "--user", TYPED.lower()).stdout
    lines = shown.splitlines()
    assert len(lines) == 2 and all("login-failed" in line for line in lines), shown
    assert "unknown:" in shown and "hunter2" not in shown.lower()


async def test_the_limit_counters_hold_no_submitted_name_as_typed(
    app: App, client: Client, db: str
) -> None:
    """The per-username counters are rows in the store (and its WAL and backups): they are
    keyed by the name's keyed digest, so a password typed into the username field is nowhere
    readable there either; attempts on one name still count together."""
    for name in (TYPED, f" {TYPED.upper()}"):
        reply = await client.call("AuthenticateUser", {"UserName": name, "Password": "x"})
        assert reply.o["Authenticated"] is False
        assert (await client.call("ResetPassword", {"UserName": name})).o["result"] is True
    await app.resets.drain()
    keys = [str(row[0]) for row in await sql(db, "SELECT key FROM events")]
    assert keys and not [k for k in keys if "hunter2" in k.lower()], keys
    digest = names.counter_key(app.deps.names_key, TYPED)
    assert keys.count(digest) == 4  # two failed logins, two self-service requests
