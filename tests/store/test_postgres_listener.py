"""The LISTEN/NOTIFY listener's own rules, without a database: the notice's format, and which
notices reach the callbacks (other nodes' only, this schema's only, each once)."""

from __future__ import annotations

import pytest

from oms_auth.store import Revocation
from oms_auth.store.postgres_listener import RevocationListener, notice, parse_notice


async def never() -> object:
    raise AssertionError("no connection in these tests")


def listener(told: list[Revocation]) -> RevocationListener:
    heard = RevocationListener(never, schema="ex_a", node="me")  # type: ignore[arg-type]
    heard.add(told.append)
    return heard


def test_a_notice_round_trips() -> None:
    one = Revocation(7, "LoggedOut", b"\x01\xff")
    every = Revocation(8, "PasswordChanged")
    assert notice("ex_a", "n1", 3, one) == "ex_a n1 3 7 LoggedOut 01ff"
    assert parse_notice(notice("ex_a", "n1", 3, one)) == ("ex_a", "n1", 3, one)
    assert parse_notice(notice("ex_a", "n1", 4, every)) == ("ex_a", "n1", 4, every)
    for bad in ("", "ex_a n1 x 7 R -", "ex_a n1 3 7 R zz", "a b c"):
        with pytest.raises(ValueError):
            parse_notice(bad)


def test_only_other_nodes_of_this_schema_are_told_each_once() -> None:
    told: list[Revocation] = []
    heard = listener(told)
    r = Revocation(7, "PasswordChanged")
    heard._notified(None, 1, "ch", notice("ex_a", "me", 1, r))  # our own: handled locally
    heard._notified(None, 1, "ch", notice("ex_b", "other", 2, r))  # another exchange
    heard._notified(None, 1, "ch", "garbage")  # malformed: logged, ignored
    heard._notified(None, 1, "ch", notice("ex_a", "other", 3, r))
    heard._notified(None, 1, "ch", notice("ex_a", "other", 3, r))  # the same change again
    assert told == [r]


def test_a_failing_callback_does_not_stop_the_others() -> None:
    told: list[Revocation] = []
    heard = RevocationListener(never, schema="ex_a", node="me")  # type: ignore[arg-type]

    def broken(_: Revocation) -> None:
        raise RuntimeError("boom")

    heard.add(broken)
    heard.add(told.append)
    heard._notified(None, 1, "ch", notice("ex_a", "other", 1, Revocation(1, "LoggedOut")))
    assert told == [Revocation(1, "LoggedOut")]
    assert not heard.listening and not heard.started
