"""Recovery codes and ResetUser2FA across two nodes (docs/rules.md, "Recovery codes"): two
``oms-auth serve`` processes on one PostgreSQL schema, as in :mod:`tests.test_nodes`."""

from __future__ import annotations

import asyncio
import time

import pyotp
import pytest

from protocol.client import Client

from .helpers import PASSWORD
from .test_nodes import OK, Cluster, logged_in, next_event

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


async def second_step(cluster: Cluster, node: str) -> Client:
    """A connection on ``node`` that gave the password and waits for its second step."""
    c = await cluster.client(node)
    first = await c.call("AuthenticateUser", {"UserName": "phone", "Password": PASSWORD})
    assert first.o["Requires2FA"] is True, first.o
    return c


async def test_one_recovery_code_used_twenty_times_over_both_nodes_logs_in_once(
    cluster: Cluster,
) -> None:
    await cluster.users("phone", phone={"totp_secret": SECRET})
    await cluster.start()
    maker = await second_step(cluster, "a")
    made = await maker.call("Authenticate2FA", {"Code": pyotp.TOTP(SECRET).now()})
    assert made.o["Authenticated"] is True
    code = (await maker.call("CreateRecoveryCodes", {})).o["RecoveryCodes"][0]
    clients = [await second_step(cluster, "ab"[n % 2]) for n in range(20)]
    answers = await asyncio.gather(*(c.call("Authenticate2FA", {"Code": code}) for c in clients))
    assert sum(a.o["Authenticated"] is True for a in answers) == 1, [a.o for a in answers]
    assert (await maker.call("GetRecoveryCodesLeft", {})).o == {"Left": 9}


async def test_reset_user_2fa_on_one_node_logs_the_user_off_on_both(cluster: Cluster) -> None:
    ids = await cluster.users("phone", phone={"totp_secret": SECRET})
    await cluster.start()
    held = []
    for node in ("a", "b"):
        c = await second_step(cluster, node)
        code = pyotp.TOTP(SECRET).at(time.time() + 30 * (len(held) - 1))  # one step each
        assert (await c.call("Authenticate2FA", {"Code": code})).o["Authenticated"] is True
        held.append(c)
    op = await cluster.client("a", "op")
    started = time.monotonic()
    assert (await op.call("ResetUser2FA", {"UserId": ids["phone"]})).o == OK
    for c in held:
        event = await next_event(c, timeout=1)
        assert event.o == {"Reason": "ForcedLogoff"}
    assert time.monotonic() - started < 1
    assert not any([await logged_in(c) for c in held])
    again = await cluster.client("b")
    login = await again.call("AuthenticateUser", {"UserName": "phone", "Password": PASSWORD})
    assert login.o["Authenticated"] is True and login.o["Requires2FA"] is False
