"""Who may do what, across two nodes (issue 22): a write made on one node for a caller whose
password is reset on the other lands before the reset or not at all, however long the node
serving the caller takes to hear of the reset. Two ``oms-auth serve`` processes on one
PostgreSQL schema, as in :mod:`tests.test_nodes`."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from protocol.client import Client

from .helpers import sql
from .test_apikeys import INVALID, key_login
from .test_authority import OPERATOR_WRITES, operator_calls
from .test_nodes import NEW, OK, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]


ROOMY = {
    "api_keys_per_user": 100000,
    "reset_requests_per_user": 100000,
    "login_failures_per_source": 1000,
}


async def race_a_reset_across_nodes(
    cluster: Cluster, username: str, calls: list[tuple[str, dict[str, Any]]]
) -> list[Any]:
    """Keep ``calls`` in flight for ``username`` on node b (six password logins, four calls at
    a time each) while its password is reset on node a; stop once node a says it is done."""
    link = await cluster.code_for(username, via="a")
    cs = [await cluster.client("b", username) for _ in range(6)]
    answers: list[Any] = []
    done, started = asyncio.Event(), asyncio.Event()
    call_iter = itertools.cycle(calls)

    async def keep_calling(c: Client) -> None:
        while not done.is_set():
            name, payload = next(call_iter)
            answers.append(await c.call(name, payload))
            if len(answers) >= 8:
                started.set()

    async def reset() -> None:
        await started.wait()
        on_a = await cluster.client("a")
        payload = {"UserId": link["user_id"], "PendingCode": link["code"], "Password": NEW}
        assert (await on_a.call("ResetPassword2", payload)).o == OK
        done.set()

    await asyncio.gather(reset(), *(keep_calling(c) for c in cs for _ in range(4)))
    return answers


async def test_keys_minted_on_one_node_during_a_reset_on_the_other_never_log_in(
    cluster: Cluster,
) -> None:
    ids = await cluster.users("owner")
    await cluster.start(**ROOMY)
    answers = await race_a_reset_across_nodes(
        cluster, "owner", [("AddUserAPIKey", {"Permissions": []})]
    )
    minted = [a.o for a in answers if "APISecret" in a.o]
    assert minted, "no key was minted before the reset: the race was not run"
    left = await sql(cluster.db, "SELECT key FROM api_keys WHERE user_id = ?", ids["owner"])
    assert left == []
    for n, key in enumerate(minted, 1):
        c = await cluster.client("ab"[n % 2])
        assert (await c.call("AuthenticateUser", key_login(key, n))).o == INVALID


async def test_operator_writes_on_one_node_during_its_reset_on_the_other_land_before_it(
    cluster: Cluster,
) -> None:
    ids = await cluster.users("victim")
    await cluster.start(**ROOMY)
    await race_a_reset_across_nodes(cluster, "op", operator_calls(ids["victim"]))
    rows = await sql(cluster.db, "SELECT id, action, actor_id, target_id FROM audit ORDER BY id")
    reset_at = next(
        row_id
        for row_id, action, _, target in rows
        if action == "password-set" and target == ids["op"]
    )
    writes = [(i, a) for i, a, actor, _ in rows if actor == ids["op"] and a in OPERATOR_WRITES]
    # (one of them is the operator's own request for the reset that the race ends with)
    assert len(writes) > 1, "no write landed before the reset: the race was not run"
    assert [f"{a} #{i}" for i, a in writes if i > reset_at] == []
