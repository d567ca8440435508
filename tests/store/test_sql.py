"""The store's shared pure layer (oms_auth.store.sql, .audit): placeholders, statements, argument
builders, row mappers, the audit filter and the chain computation, without a store; and every
shared statement prepared on both real databases."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

import asyncpg
import msgspec
import pytest

from oms_auth.store import AuditEntry, CodeState, MailItem, NewUser, codes, open_store
from oms_auth.store import sql as q
from oms_auth.store.audit import chain_hash, check_chain, link_entries, rechain
from oms_auth.store.sql import POSTGRES, SQLITE, to_dollar

from ..helpers import PG_URL, drop_pg_schema, new_pg_schema, schema_of

KEY = bytes(range(32))

# -- ? to $n -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT 1", "SELECT 1"),
        ("a = ? AND b = ?", "a = $1 AND b = $2"),
        # SQLite's rule: ?NNN is that parameter, a bare ? one more than the largest so far.
        ("?2, ?1, ?", "$2, $1, $3"),
        ("?, ?1, ?", "$1, $1, $2"),
        ("x IN (?10, ?)", "x IN ($10, $11)"),
        # Quoted text is not a placeholder.
        ("s = '?' AND t = ?", "s = '?' AND t = $1"),
        ("s = 'it''s ?' AND \"a?b\" = ?", "s = 'it''s ?' AND \"a?b\" = $1"),
        ("s = '$1'", "s = '$1'"),
    ],
)
def test_placeholders_convert_as_sqlite_numbers_them(sqlite: str, postgres: str) -> None:
    assert to_dollar(sqlite) == postgres


@pytest.mark.parametrize("bad", ["a = $1", "a = ?0", "s = 'open ?"])
def test_a_statement_that_would_not_mean_the_same_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        to_dollar(bad)


def _fields() -> list[str]:
    """The statements (the dialect's other settings, such as is_postgres, are not SQL)."""
    return [
        f.name for f in dataclasses.fields(q.Statements) if isinstance(getattr(SQLITE, f.name), str)
    ]


def _params(pg: str) -> int:
    return max((int(n) for n in re.findall(r"\$(\d+)", pg)), default=0)


def _lite_params(lite: str) -> int:
    """SQLite's parameter count: the largest ``?NNN`` where they are numbered (one may then
    appear more than once), else one per bare ``?``."""
    numbered = [int(n) for n in re.findall(r"\?(\d+)", lite)]
    return max(numbered) if numbered else lite.count("?")


def test_the_postgres_statements_are_the_sqlite_ones_converted() -> None:
    for name in _fields():
        lite, pg = getattr(SQLITE, name), getattr(POSTGRES, name)
        assert "$" not in lite and "?" not in pg, name
        if not name.startswith("user"):
            assert pg == to_dollar(lite), name
        assert _lite_params(lite) == _params(pg), name  # the same parameters, by number


def test_no_statement_spells_a_code_state() -> None:
    for name in _fields():
        for state in CodeState:
            assert f"'{state.value}'" not in getattr(SQLITE, name), name


def test_argument_builders_fill_their_statements() -> None:
    user = NewUser(username=" Alice ", email="a@x.test", password_hash="h", accounts=(7, 8))
    mail = MailItem(kind="reset", recipient="a@x.test", user_id=1, public={"n": 1})
    built = {
        "insert_user": q.user_args(user),
        "insert_mail": q.mail_args(mail, 5.0),
        "insert_code": q.code_args(b"d", 1, 5.0, 6.0),
        "move_user_codes": q.move_codes_args(codes.SUPERSEDE, 1),
        "live_code": q.live_code_args(b"d", 5.0, None),
        "redeem_code": q.redeem_args(b"d", 1, 5.0),
    }
    for name, args in built.items():
        assert len(args) == _params(getattr(POSTGRES, name)), name
    assert q.user_args(user)[:2] == ("Alice", "alice") and q.user_args(user)[5] == 7
    assert q.mail_args(mail, 5.0)[3] == '{"n":1}'
    # States come from the code table: a new code is pending, redeeming moves pending -> used.
    assert q.code_args(b"d", 1, 5.0, 6.0)[4] == "pending"
    assert q.move_codes_args(codes.SUPERSEDE, 1) == ("void", 1, "pending")
    assert q.redeem_args(b"d", 1, 5.0) == ("used", b"d", 1, "pending", 5.0)
    for statement, args in q.prune_plan(POSTGRES, 1.0, 2.0):
        assert len(args) == _params(statement), statement


# -- the audit filter --------------------------------------------------------------------------


def test_the_audit_filter() -> None:
    plain, args = q.audit_query(user=None, since=None, until=None, limit=100, oldest_first=False)
    assert plain.endswith("FROM audit ORDER BY id DESC LIMIT ?") and args == [100]
    everything, args = q.audit_query(
        user=" Bob ", since=1.0, until=2.0, limit=None, oldest_first=True
    )
    assert args == ["bob", "bob", "bob", "bob", 1.0, 2.0]
    assert everything.endswith("AND at >= ? AND at < ? ORDER BY id")
    assert everything.count("?") == len(args)
    assert to_dollar(everything).count("$") == len(args)
    # A name that names no user: its target name as typed (rows from before), or as recorded.
    unknown, args = q.audit_query(
        user="Ghost",
        since=None,
        until=None,
        limit=None,
        oldest_first=True,
        recorded_as="unknown:0123456789ab",
    )
    assert args == ["ghost", "ghost", "ghost", "unknown:0123456789ab"]


# -- rows to records ---------------------------------------------------------------------------


def user_row(perms: object, accounts: object, flags: tuple[object, object, object]) -> tuple:
    verified, active, master = flags
    return (
        *(3, "Alice", "a@x.test", verified, 1, 7, "h", None, "native", active, master),
        *(None, None, perms, accounts, 2, None, "de", 1.5),
    )


def test_one_user_mapper_reads_either_store_s_rows() -> None:
    sep = q.SEP
    from_sqlite = q.to_user(user_row(f"Operator{sep}Trading", f"7{sep}8", (1, 1, 0)))
    from_pg = q.to_user(user_row(["Trading", "Operator"], [8, 7], (True, True, False)))
    assert from_sqlite == from_pg
    assert from_pg.permissions == {"Operator", "Trading"} and from_pg.accounts == {7, 8}
    assert from_pg.email_verified is True and from_pg.master is False
    assert from_pg.password_version == 2 and from_pg.locale == "de"
    assert from_pg.created_at == 1.5
    # No permissions, no accounts: NULL from SQLite's group_concat, [] from an ARRAY.
    assert q.to_user(user_row(None, None, (0, 1, 0))).permissions == frozenset()
    assert q.to_user(user_row([], [], (False, True, False))).accounts == frozenset()


def test_the_other_mappers() -> None:
    code = q.to_code((1, 2.0, 3.0, "void"))
    assert code.state is CodeState.VOID and code.state == "void"
    mail = q.to_outbox((4, "reset", "a@x.test", 1, '{"n":1}', b"s", 2, 9.0))
    assert (mail.public, mail.attempts, mail.sealed) == ({"n": 1}, 2, b"s")
    row = q.to_audit((1, 2.0, "act", None, 3, "bob", "src", None, "", "h", "k1"))
    assert (row.id, row.target_name, row.hash, row.key_id) == (1, "bob", "h", "k1")
    assert q.to_session((1, 2.0, 3.0, None)).last_seen == 3.0
    assert q.to_session((1, 2.0, 3.0, "k")).api_key == "k"
    key = q.to_api_key(("k", 5, '["Trading"]', memoryview(b"sealed"), 1.0))
    assert (key.permissions, key.secret_sealed) == (("Trading",), b"sealed")
    assert "sealed" not in repr(key)
    args = q.api_key_args(key)
    assert args == ("k", 5, '["Trading"]', b"sealed", 1.0)
    assert q.to_question((1, "Pet?", "hash")).question == "Pet?"


# -- the chain ---------------------------------------------------------------------------------


def test_linked_entries_verify_and_re_chaining_gives_the_same_links() -> None:
    entries = [AuditEntry(action="a", target_name="bob"), AuditEntry(action="b", detail="x")]
    first = link_entries(KEY, None, entries[:1], 1.0)
    rows = first + link_entries(KEY, (1, first[0][9]), entries[1:], 2.0)
    assert [r[0] for r in rows] == [1, 2] and rows[1][8] == rows[0][9]
    records = [q.to_audit(r) for r in rows]
    assert check_chain(records, KEY).ok and not check_chain(records, bytes(32)).ok
    assert rechain(KEY, rows) == [(r[8], r[9], r[0]) for r in rows]
    assert rows[0][9] == chain_hash(KEY, "", 1, 1.0, "a", None, None, "bob", None, None)
    edited = msgspec.structs.replace(records[0], detail="changed")
    assert check_chain([edited, records[1]], KEY).bad_id == 1


# -- every shared statement, prepared on both databases ----------------------------------------


async def test_every_shared_statement_prepares_on_both_stores_with_the_same_parameters(
    tmp_path: Path,
) -> None:
    # Migrated schemas, as each store makes them; EXPLAIN and prepare run nothing.
    lite_path = tmp_path / "s.sqlite3"
    await (await open_store(str(lite_path), audit_key=KEY)).close()
    pg_url = new_pg_schema()
    try:
        await (await open_store(pg_url, audit_key=KEY)).close()
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema_of(pg_url)})
        try:
            counts = {
                name: len((await conn.prepare(getattr(POSTGRES, name))).get_parameters())
                for name in _fields()
            }
        finally:
            await conn.close()
    finally:
        drop_pg_schema(pg_url)
    with sqlite3.connect(lite_path) as lite:
        for name, count in counts.items():
            assert count == _params(getattr(POSTGRES, name)), name
            # sqlite3 refuses a wrong number of bindings: the same count binds on both.
            lite.execute("EXPLAIN " + getattr(SQLITE, name), [None] * count)
