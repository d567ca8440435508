"""``postgres_batch.literal``: texts dollar-quoted for a simple query (store/postgres_batch.py),
as PostgreSQL reads them back, and in time linear in the text (the audit linker quotes a
whole batch's JSON in one: store/postgres_audit.py)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec
import pytest

from oms_auth.app import build_deps
from oms_auth.store.postgres_batch import literal
from oms_auth.store.records import AuditEntry

from .helpers import PG_URL, settings_for

ON_POSTGRES = pytest.mark.parametrize("db", ["postgres"], indirect=True)


@ON_POSTGRES
async def test_texts_of_dollars_tags_and_backslashes_read_back_as_written(db: str) -> None:
    import asyncpg

    rnd = random.Random(7)
    texts = ["", "$", "$$", "$q0", "$q0$", "$q", "q0$", "$q00$", "$q1$q0$q2", "\\'\n"]
    for _ in range(400):
        texts.append("".join(rnd.choice("$q01\\'a") for _ in range(rnd.randint(1, 14))))
    conn = await asyncpg.connect(PG_URL)
    try:
        for text in texts:
            assert await conn.fetchval(f"SELECT {literal(text)}") == text, text
    finally:
        await conn.close()


def _tagged_names(rows: int) -> list[str]:
    """Usernames of at most 64 characters, each holding the next dollar-quote tags."""
    names, n = [], 0
    for _ in range(rows):
        name = ""
        while len(name) + len(f"$q{n}$") <= 64:
            name, n = name + f"$q{n}$", n + 1
        names.append(name)
    return names


def test_a_text_holding_thousands_of_tags_is_quoted_in_linear_time() -> None:
    text = msgspec.json.encode(_tagged_names(2000)).decode()  # 17,000 tags
    started = time.perf_counter()
    quoted = literal(text)
    assert time.perf_counter() - started < 0.2
    tag = quoted[: quoted.index("$", 1) + 1]
    assert tag not in text and quoted == f"{tag}{text}{tag}"


@ON_POSTGRES
async def test_a_batch_of_audit_rows_whose_names_hold_thousands_of_tags_links_at_once(
    tmp_path: Path, db: str
) -> None:
    deps = await build_deps(settings_for(tmp_path, db=db))
    try:
        names = _tagged_names(2000)
        entries = [AuditEntry(action="tagged", target_name=n, source="t") for n in names]
        await deps.store.audit(entries, time.time())
        started = time.monotonic()
        rows = await deps.store.audit_rows(limit=None, oldest_first=True)  # links them first
        took = time.monotonic() - started
        assert [r.target_name for r in rows if r.action == "tagged"] == names
        assert (await deps.store.verify_audit()).ok
        assert took < 2, took  # the node's event loop was held that long
    finally:
        await deps.store.close()
        deps.hasher.close()
