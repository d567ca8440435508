"""docs/rules.md, "Fair limits": an attempt that finds every slot of a login limit held by
attempts in flight waits its turn instead of being refused; failures still refuse; over real
sockets, on both stores, and across two nodes on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from oms_auth.app import App
from oms_auth.engine.names import counter_key
from oms_auth.store import Claim, Room

from .helpers import PASSWORD, Clock, eventually, make_user
from .test_races import TOO_MANY_LOGINS, burst, clients, close_all, started

IN_PROGRESS = "Too many login attempts in progress; try again in a moment"
INVALID = "Invalid username or password"


def login(username: str, password: str = PASSWORD) -> tuple[str, dict[str, Any]]:
    return ("AuthenticateUser", {"UserName": username, "Password": password})


async def at_once(app: App, calls: list[tuple[str, dict[str, Any]]], connections: int) -> list[Any]:
    """Every call sent at once over ``connections`` connections; the answers' payloads."""
    cs = await clients(app, connections)
    try:
        return [a.o for a in await burst(cs, calls)]
    finally:
        await close_all(cs)


def refusals(answers: list[Any]) -> list[str]:
    return [a["errormsg"] for a in answers if not a["Authenticated"]]


async def test_64_simultaneous_correct_logins_of_one_user_from_one_address_all_succeed(
    app: App,
) -> None:
    await make_user(app.deps, "operator")
    before = app.deps.hasher.checks
    assert refusals(await at_once(app, [login("operator")] * 64, 64)) == []
    assert app.deps.hasher.checks - before == 64


async def test_200_simultaneous_logins_of_40_users_behind_one_address_all_succeed(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(tmp_path, clock, db, login_failures_per_source=20)
    try:
        for n in range(40):
            await make_user(app.deps, f"trader{n}")
        calls = [login(f"trader{n % 40}") for n in range(200)]
        assert refusals(await at_once(app, calls, 50)) == []
    finally:
        await app.stop()


async def test_60_simultaneous_wrong_passwords_still_check_at_most_the_limit(app: App) -> None:
    await make_user(app.deps, "victim")
    limit = app.settings.login_failures_per_user
    before = app.deps.hasher.checks
    answers = await at_once(app, [login("victim", "wrong-guess")] * 60, 60)
    assert app.deps.hasher.checks - before == limit
    said = sorted(refusals(answers))
    # Refused because failures reached the limit, not because others were in flight.
    assert said == sorted([INVALID] * limit + [TOO_MANY_LOGINS] * (60 - limit))


async def hold_slots(app: App, clock: Clock, username: str) -> list[tuple[Claim, float]]:
    """Every slot of ``username``'s login limit taken, as attempts being checked hold them (on
    ``app``'s node): the slots, to give back."""
    s = app.settings
    claims = [
        Claim(
            "login-failure-user",
            counter_key(app.deps.names_key, username),
            900,
            s.login_failures_per_user,
        ),
        Claim("login-failure-source", "127.0.0.1", 900, s.login_failures_per_source),
    ]
    held = []
    for _ in range(s.login_failures_per_user):
        now = clock()
        assert (await app.deps.store.admit(claims, now)).room is Room.FREE
        held += [(c, now) for c in claims]
        clock.advance(0.001)
    return held


async def test_a_wait_that_runs_out_is_refused_as_in_progress_not_as_failed(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    app = await started(tmp_path, clock, db, login_wait_seconds=0.3)
    try:
        await make_user(app.deps, "operator")
        await hold_slots(app, clock, "operator")
        assert refusals(await at_once(app, [login("operator")], 1)) == [IN_PROGRESS]
    finally:
        await app.stop()


@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_logins_wait_for_slots_held_on_the_other_node(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    a = await started(tmp_path, clock, db, secret_key_file=str(tmp_path / "oms-auth.key"))
    (tmp_path / "b").mkdir()
    b = await started(tmp_path / "b", clock, db, secret_key_file=str(tmp_path / "oms-auth.key"))
    try:
        await make_user(a.deps, "operator")
        held = await hold_slots(a, clock, "operator")  # node a is checking 10 attempts
        logins = asyncio.ensure_future(at_once(b, [login("operator")] * 24, 24))
        await asyncio.sleep(0.5)
        assert not logins.done()  # every slot is held on a: b's logins wait
        for claim, at in held:  # a's attempts end (not on b: b sees it by polling)
            await a.deps.store.release(claim.kind, claim.key, at)
        assert refusals(await asyncio.wait_for(logins, 30)) == []
    finally:
        await a.stop()
        await b.stop()


async def test_500_simultaneous_resumes_on_one_node_succeed_without_a_hash_or_a_slot(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    # Every slot of the user's login limit held by attempts in flight: a resume that took a
    # slot would wait, then be refused; one that checked a password would count a hash.
    app = await started(tmp_path, clock, db, max_connections_per_source=600)
    try:
        await make_user(app.deps, "operator")
        (first,) = await at_once(app, [login("operator")], 1)
        token = first["SessionToken"]
        await hold_slots(app, clock, "operator")
        before = app.deps.hasher.checks
        resume = ("WebAuthenticateUser", {"SessionToken": token})
        answers = await asyncio.wait_for(at_once(app, [resume] * 500, 500), 120)
        assert refusals(answers) == []
        assert app.deps.hasher.checks == before
    finally:
        await app.stop()


async def test_waiting_attempts_get_a_freed_slot_in_arrival_order(app: App, clock: Clock) -> None:
    await make_user(app.deps, "operator")
    held = await hold_slots(app, clock, "operator")
    user = held[0][0]
    order: list[int] = []

    async def arrive(n: int) -> None:
        (answer,) = await at_once(app, [login("operator")], 1)
        assert answer["Authenticated"], answer
        order.append(n)

    arrivals = []
    for n in range(6):  # one at a time: each is in the line before the next comes
        arrivals.append(asyncio.ensure_future(arrive(n)))
        await eventually(lambda n=n: app.sessions.turns.waiters(user.kind, user.key) == n + 1)
    claim, at = held[0]  # one attempt in flight ends: its slot passes down the line
    await app.deps.store.release(claim.kind, claim.key, at)
    await asyncio.wait_for(asyncio.gather(*arrivals), 30)
    assert order == list(range(6))


async def test_an_attempt_still_in_flight_a_minute_on_counts_as_a_failure(
    app: App, clock: Clock
) -> None:
    # Its node died while checking it: nobody waits for it, it counts as the failure it may be.
    await make_user(app.deps, "operator")
    await hold_slots(app, clock, "operator")
    clock.advance(61)
    assert refusals(await at_once(app, [login("operator")], 1)) == [TOO_MANY_LOGINS]
