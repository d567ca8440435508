from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import STORES, Clock, drop_pg_schema, is_postgres, new_pg_schema, settings_for

if TYPE_CHECKING:
    from .test_nodes import Cluster


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store a test runs on, once per store: a SQLite file in ``tmp_path``, or a fresh
    schema in the test PostgreSQL (dropped afterwards; the test fails if it is unreachable)."""
    if request.param == "sqlite":
        yield str(tmp_path / "oms-auth.sqlite3")
        return
    url = new_pg_schema()
    try:
        yield url
    finally:
        drop_pg_schema(url)


@pytest.fixture
def store_env(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Commands run on ``db``: the default path for SQLite, OMS_AUTH_DB for PostgreSQL."""
    if is_postgres(db):
        monkeypatch.setenv("OMS_AUTH_DB", db)
    return db


@pytest.fixture
async def app(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    service = App(settings_for(tmp_path, db=db), clock=clock, login_delay=0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    c = await Client.connect(app.url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def limited(
    tmp_path: Path, clock: Clock, db: str, request: pytest.FixtureRequest
) -> AsyncIterator[App]:
    """A running app with the settings the test names (``indirect`` parametrisation)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    app = App(settings_for(tmp_path, db=db, **overrides), clock=clock, login_delay=0)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def cluster(tmp_path: Path, db: str) -> AsyncIterator[Cluster]:
    """Two ``serve`` nodes on one PostgreSQL schema (tests/test_nodes.py), stopped after."""
    from .test_nodes import Cluster

    c = Cluster(tmp_path, db)
    try:
        yield c
    finally:
        await c.stop()
