"""Enumeration by timing: answers about users that exist and users that do not take the same time.

Medians of many interleaved calls are compared with a tolerance the machine's noise allows
(these machines are shared, so the bound is loose; a real leak, like skipping the password hash
for a missing user, is an order of magnitude beyond it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, settings_for, wait_for_mail

SAMPLES = 40


@pytest.fixture
async def app(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    # A real Argon2id cost (8 MiB), so that a skipped hash would show.
    service = App(
        settings_for(
            tmp_path,
            db=db,
            argon2_memory_kib=8192,
            argon2_time_cost=2,
            login_failures_per_user=10**6,
            login_failures_per_source=10**6,
            reset_requests_per_source=10**6,
            invalid_codes_per_source=10**6,
        ),
        clock=clock,
        login_delay=0,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def medians(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]]
) -> tuple[float, float]:
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(3):  # warm up both paths
        await a()
        await b()
    for _ in range(SAMPLES):
        for k, call in enumerate((a, b)):
            start = time.perf_counter()
            await call()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def assert_alike(x: float, y: float) -> None:
    assert abs(x - y) <= max(0.35 * max(x, y), 0.002), f"{x * 1e3:.2f} ms vs {y * 1e3:.2f} ms"


async def test_login_takes_as_long_for_a_missing_user_as_for_a_wrong_password(app: App) -> None:
    await make_user(app.deps, "alice")
    async with await Client.connect(app.url) as c:

        async def wrong() -> object:
            return await c.call("AuthenticateUser", {"UserName": "alice", "Password": "nope"})

        async def missing() -> object:
            return await c.call("AuthenticateUser", {"UserName": "nobody", "Password": "nope"})

        assert (await wrong()).o == (await missing()).o
        assert_alike(*await medians(wrong, missing))


async def test_self_service_reset_answers_alike_for_existing_and_missing_users(app: App) -> None:
    await make_user(app.deps, "alice")
    async with await Client.connect(app.url) as c:

        async def existing() -> object:
            return await c.call("ResetPassword", {"UserName": "alice"})

        async def missing() -> object:
            return await c.call("ResetPassword", {"UserName": "nobody"})

        assert_alike(*await medians(existing, missing))
    await app.resets.drain()


async def test_reset2_wrong_code_and_wrong_user_answer_alike(app: App, tmp_path: Path) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    alice = await make_user(app.deps, "alice")
    bob = await make_user(app.deps, "bob")
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        await c.call("ResetPassword", {"UserName": "alice"})
        (path,) = await wait_for_mail(tmp_path / "mail", 1)
        code = path.read_text().split("PendingCode=")[1].split()[0]

        async def wrong_code() -> object:
            return await c.call(
                "ResetPassword2",
                {
                    "UserId": alice,
                    "Password": "Fresh-Start42",
                    "PendingCode": "00000000-0000-4000-8000-000000000000",
                },
            )

        async def wrong_user() -> object:
            return await c.call(
                "ResetPassword2", {"UserId": bob, "Password": "Fresh-Start42", "PendingCode": code}
            )

        assert (await wrong_code()).o == (await wrong_user()).o
        assert_alike(*await medians(wrong_code, wrong_user))
