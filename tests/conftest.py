from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import Clock, settings_for


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def app(tmp_path: Path, clock: Clock) -> AsyncIterator[App]:
    service = App(settings_for(tmp_path), clock=clock, login_delay=0)
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
