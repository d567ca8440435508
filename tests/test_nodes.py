"""Several nodes, one exchange: two ``oms-auth serve`` processes on one PostgreSQL schema, and
every rule of the engine holds across them (codes, races, limits, lockouts, sessions, mail, and
logging a user off everywhere after a reset, an API key's nonce)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from oms_auth.app import App, build_deps
from protocol.client import Client

from .helpers import (
    PASSWORD,
    Clock,
    ServerProcess,
    eventually,
    make_user,
    parse_mail,
    pg_connect,
    settings_for,
    sql,
    terminate_backends,
)
from .test_apikeys import INVALID, add_key, burst, key_login
from .test_nonces import key_sessions, random_nonce

# Only a store shared by processes can have two nodes: PostgreSQL.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db", ["postgres"], indirect=True)]
NEW = "Fresh-Start42"
OK = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
INVALID_KEY = {
    "result": False,
    "errormsg": "Resource Not Found",
    "errorcode": 104,
    "detail": "Invalid password recovery key",
}


class Cluster:
    """Nodes a and b: one database schema, one key, a Maildir each."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp = tmp
        self.db = db
        self.key = tmp / "oms-auth.key"
        self.nodes: dict[str, ServerProcess] = {}
        self.clients: list[Client] = []

    async def users(self, *names: str, **kwargs: Any) -> dict[str, int]:
        deps = await build_deps(settings_for(self.tmp, db=self.db, secret_key_file=str(self.key)))
        try:
            ids = {"op": await make_user(deps, "op", permissions=["Operator"], accounts=[1])}
            for name in names:
                ids[name] = await make_user(deps, name, **kwargs.get(name, {}))
            return ids
        finally:
            await deps.store.close()
            deps.hasher.close()

    async def start(self, **settings: object) -> None:
        env = {"OMS_AUTH_SECRET_KEY_FILE": str(self.key)}
        env.update({f"OMS_AUTH_{k.upper()}": str(v) for k, v in settings.items()})
        for name in ("a", "b"):
            mail = f"maildir:{self.tmp / ('mail-' + name)}"
            self.nodes[name] = ServerProcess(self.tmp, "--db", self.db, "--mail", mail, env=env)
        await asyncio.gather(*(node.start() for node in self.nodes.values()))

    async def stop(self) -> None:
        for c in self.clients:
            await c.close()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.returncode is None:
                await node.stop()

    async def client(self, node: str, username: str | None = None) -> Client:
        c = await Client.connect(self.nodes[node].url)
        self.clients.append(c)
        if username is not None:
            reply = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
            assert reply.o["Authenticated"], reply.o
        return c

    def mail_files(self) -> dict[str, list[Path]]:
        out = {}
        for name in self.nodes:
            new = self.tmp / f"mail-{name}" / "new"
            out[name] = (
                sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.exists() else []
            )
        return out

    async def code_for(self, target: str, via: str) -> dict[str, Any]:
        """The operator on node ``via`` asks for a reset; the link, whichever node mailed it."""

        def to_target() -> set[Path]:
            # Mail for other users may still be arriving from earlier requests: only a new
            # message to this target counts.
            paths = {p for files in self.mail_files().values() for p in files}
            return {p for p in paths if parse_mail(p)["to"].startswith(f"{target}@")}

        before = to_target()
        op = await self.client(via, "op")
        assert (await op.call("ResetPassword", {"UserName": target})).o == OK
        await eventually(lambda: bool(to_target() - before))
        (newest,) = to_target() - before
        mail = parse_mail(newest)
        assert "code" in mail, mail["text"]
        return mail


async def test_a_code_issued_on_one_node_is_redeemed_on_the_other(cluster: Cluster) -> None:
    await cluster.users("alice")
    await cluster.start()
    mail = await cluster.code_for("alice", via="a")
    on_b = await cluster.client("b")
    payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
    assert (await on_b.call("ResetPassword2", payload)).o == OK
    on_a = await cluster.client("a")
    assert (await on_a.call("ResetPassword2", payload)).o == INVALID_KEY  # used, everywhere
    new = await on_a.call("AuthenticateUser", {"UserName": "alice", "Password": NEW})
    old = await on_a.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
    assert (new.o["Authenticated"], old.o["Authenticated"]) == (True, False)


async def test_fifty_concurrent_redemptions_over_both_nodes_give_exactly_one_success(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start(invalid_codes_per_source=1000)
    mail = await cluster.code_for("alice", via="b")
    clients = [await cluster.client("ab"[n % 2]) for n in range(50)]
    payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
    answers = await asyncio.gather(*(c.call("ResetPassword2", payload) for c in clients))
    assert sorted(a.o["errorcode"] for a in answers) == [0] + [104] * 49
    assert all(a.o == INVALID_KEY for a in answers if a.o["errorcode"])
    winners = {"ab"[n % 2] for n, a in enumerate(answers) if a.o["errorcode"] == 0}
    assert len(winners) == 1
    changed = await sql(cluster.db, "SELECT count(*) FROM audit WHERE action = 'password-set'")
    queued = await sql(cluster.db, "SELECT count(*) FROM outbox WHERE kind = 'password-changed'")
    assert changed == queued == [(1,)]


async def test_request_limits_and_lockouts_count_across_nodes(cluster: Cluster) -> None:
    await cluster.users(
        "alice", "guarded", guarded={"question": "First pet?", "answer": "Rex the Dog"}
    )
    await cluster.start(login_failures_per_user=4)
    ops = {"a": await cluster.client("a", "op"), "b": await cluster.client("b", "op")}

    # Three reset requests an hour for one user, whichever nodes take them, however at once.
    burst = await asyncio.gather(
        *(ops["ab"[n % 2]].call("ResetPassword", {"UserName": "alice"}) for n in range(16))
    )
    assert sorted(a.o["errorcode"] for a in burst) == [0] * 3 + [101] * 13
    assert all("Too many password reset requests" in a.o["detail"] for a in burst if not a.ok)

    # Five wrong answers, alternating nodes, lock the user on both.
    mail = await cluster.code_for("guarded", via="a")
    base = {"UserId": mail["user_id"], "PendingCode": mail["code"], "Password": NEW}
    for n in range(5):
        c = await cluster.client("ab"[n % 2])
        wrong = await c.call("ResetPassword2", {**base, "SecurityQuestionAnswer": "Fluffy"})
        assert wrong.o["errorcode"] == 20, wrong.o
    c = await cluster.client("b")
    right = await c.call("ResetPassword2", {**base, "SecurityQuestionAnswer": "Rex the Dog"})
    assert right.o["detail"] == "Account has been locked for 30 minutes"
    a = await cluster.client("a")
    login = await a.call("AuthenticateUser", {"UserName": "guarded", "Password": PASSWORD})
    assert login.o["Locked"] is True and login.o["Authenticated"] is False

    # Failed logins: three free tries counted over both nodes, then slower, then refused.
    b = await cluster.client("b")
    for c in (a, b, a):
        await c.call("AuthenticateUser", {"UserName": "alice", "Password": "wrong"})
    started = time.monotonic()
    await b.call("AuthenticateUser", {"UserName": "alice", "Password": "wrong"})
    assert time.monotonic() - started >= 0.2  # b saw one failure itself, the store three
    refused = await a.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})
    assert refused.o["Authenticated"] is False
    assert refused.o["errormsg"] == "Too many failed login attempts; try again later"


async def test_a_session_made_on_one_node_resumes_on_the_other(cluster: Cluster) -> None:
    await cluster.users("alice")
    await cluster.start()
    a = await cluster.client("a")
    token = (await a.call("AuthenticateUser", {"UserName": "alice", "Password": PASSWORD})).o[
        "SessionToken"
    ]
    b = await cluster.client("b")
    resumed = await b.call("WebAuthenticateUser", {"SessionToken": token})
    assert resumed.o["Authenticated"] is True and resumed.o["User"]["UserName"] == "alice"
    assert (await b.call("LogOut")).o == OK
    again = await (await cluster.client("a")).call("WebAuthenticateUser", {"SessionToken": token})
    assert again.o["Authenticated"] is False  # logged out on b: gone on a too


async def test_resets_of_one_user_asked_on_both_nodes_at_once_issue_exactly_the_limit(
    cluster: Cluster,
) -> None:
    # Each node takes the limit's slot in the statement that counts it, after the user's row
    # lock and the limit's advisory lock. The events table is held locked while 96 requests
    # (16 connections, half on each node) reach it, then let go: every transaction comes at
    # the count at the same moment, and still only 5 may pass.
    await cluster.users("trader")
    await cluster.start(reset_requests_per_user=5)
    ops = [await cluster.client(node, "op") for node in "ab" * 8]
    holder = await pg_connect(cluster.db)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        calls = asyncio.gather(
            *(ops[k % 16].call("ResetPassword", {"UserName": "trader"}) for k in range(96))
        )

        async def queued() -> bool:
            waiting = await holder.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
            return bool(waiting >= 12)

        await eventually(queued)
        await held.rollback()
        answers = await calls
    finally:
        await holder.close()
    assert sum(a.o == OK for a in answers) == 5
    assert {a.o["detail"] for a in answers if a.o != OK} == {
        "Too many password reset requests for this user; try again later"
    }
    ((codes,),) = await sql(cluster.db, "SELECT count(*) FROM reset_codes")
    ((queued_mail,),) = await sql(cluster.db, "SELECT count(*) FROM outbox")
    assert (codes, queued_mail) == (5, 5)


async def test_each_queued_mail_is_delivered_once_with_both_workers_running(
    cluster: Cluster, clock: Clock
) -> None:
    names = [f"u{n}" for n in range(40)]
    await cluster.users(*names)
    # Queue 80 messages while no worker runs (a node whose worker is held), then start both
    # nodes at once: their workers go for the same rows at the same moment.
    settings = settings_for(
        cluster.tmp, db=cluster.db, secret_key_file=str(cluster.key), reset_requests_per_user=9
    )
    app = App(settings, clock=clock, login_delay=0)
    await app.start()
    await app.outbox.stop()
    async with await Client.connect(app.url) as op:
        await op.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        for name in names * 2:
            assert (await op.call("ResetPassword", {"UserName": name})).o == OK
    await app.stop()
    await cluster.start(reset_requests_per_user=9, reset_requests_per_source=10000)
    # And more while both run, from both.
    ops = {"a": await cluster.client("a", "op"), "b": await cluster.client("b", "op")}
    answers = await asyncio.gather(
        *(ops[node].call("ResetPassword", {"UserName": name}) for name in names for node in "ab")
    )
    assert all(a.o == OK for a in answers)

    async def settled() -> bool:
        ((left,),) = await sql(cluster.db, "SELECT count(*) FROM outbox WHERE state <> 'sent'")
        return left == 0 and sum(map(len, cluster.mail_files().values())) >= 160

    await eventually(settled, timeout=30)
    await asyncio.sleep(0.5)  # time for a second delivery, were there one
    files = cluster.mail_files()
    ids = [int(re.search(r"\.oms-auth-(\d+)\.", p.name)[1]) for f in files.values() for p in f]  # type: ignore[index]
    assert len(ids) == 160 and len(set(ids)) == 160  # each message once, across both Maildirs
    assert files["a"] and files["b"], "both nodes' workers delivered"
    codes = [parse_mail(p)["code"] for f in files.values() for p in f]
    assert len(set(codes)) == 160


async def logged_in(c: Client) -> bool:
    """Asking to reset an unknown user: a logged-in Trading user is refused (20), anyone else
    gets the self-service answer. Changes nothing."""
    answer = await c.call("ResetPassword", {"UserName": "nobody"})
    return bool(answer.o["errorcode"] == 20)


async def reset_and_time_logoff(cluster: Cluster, via: str, watched: Client) -> float:
    """Reset mover's password on node ``via``; seconds until ``watched`` is logged off."""
    assert await logged_in(watched)
    mail = await cluster.code_for("mover", via=via)
    c = await cluster.client(via)
    payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
    assert (await c.call("ResetPassword2", payload)).o == OK
    done = time.monotonic()
    while await logged_in(watched):
        assert time.monotonic() - done < 10, "never logged off"
        await asyncio.sleep(0.02)
    return time.monotonic() - done


async def test_a_reset_logs_the_user_off_on_every_node_within_a_second(cluster: Cluster) -> None:
    await cluster.users("mover", mover={"permissions": ["Trading"], "accounts": [10]})
    await cluster.start()
    on_a = await cluster.client("a", "mover")
    on_b = await cluster.client("b", "mover")
    assert await logged_in(on_a)
    assert await reset_and_time_logoff(cluster, "a", on_b) < 1.0
    assert not await logged_in(on_a)


async def test_nodes_recover_when_the_database_cuts_their_connections(
    cluster: Cluster, db: str
) -> None:
    await cluster.users("mover", mover={"permissions": ["Trading"], "accounts": [10]})
    await cluster.start()
    assert await terminate_backends(db) >= 4  # two pools, two listeners
    for node in "ab":  # the pools connect again
        c = await cluster.client(node)
        login = await c.call("AuthenticateUser", {"UserName": "mover", "Password": PASSWORD})
        assert login.o["Authenticated"] is True
    # The listeners connect again (or catch up): the other node still hears of a reset.
    on_b = await cluster.client("b", "mover")
    assert await reset_and_time_logoff(cluster, "a", on_b) < 3.0


# -- rules under concurrency, across nodes (docs/rules.md, "Concurrency: what holds ...") ---


async def secret_checks(cluster: Cluster) -> int:
    """Passwords and answers checked so far by both nodes (their /metrics)."""
    import urllib.request

    def read(url: str) -> int:
        http = url.replace("ws://", "http://").removesuffix("/WSGateway/") + "/metrics"
        with urllib.request.urlopen(http, timeout=5) as response:
            text = response.read().decode()
        return int(re.search(r"^oms_auth_secret_checks (\d+)$", text, re.M)[1])  # type: ignore[index]

    counts = await asyncio.gather(
        *(asyncio.to_thread(read, node.url) for node in cluster.nodes.values())
    )
    return sum(counts)


async def test_a_login_burst_over_both_nodes_checks_at_most_the_limit(cluster: Cluster) -> None:
    await cluster.users("victim")
    await cluster.start(login_failures_per_user=10)
    clients = [await cluster.client("ab"[n % 2]) for n in range(8)]
    before = await secret_checks(cluster)
    guesses = [{"UserName": "victim", "Password": f"guess{n}"} for n in range(80)]
    guesses.append({"UserName": "victim", "Password": PASSWORD})
    answers = await asyncio.gather(
        *(clients[n % 8].call("AuthenticateUser", g) for n, g in enumerate(guesses))
    )
    assert await secret_checks(cluster) - before <= 10
    assert not answers[-1].o["Authenticated"]


async def test_a_reset2_burst_over_both_nodes_checks_at_most_the_lockout(
    cluster: Cluster,
) -> None:
    await cluster.users("guarded", guarded={"question": "First pet?", "answer": "Rex"})
    await cluster.start(invalid_codes_per_source=1000)
    mail = await cluster.code_for("guarded", via="a")
    base = {"UserId": mail["user_id"], "PendingCode": mail["code"], "Password": NEW}
    clients = [await cluster.client("ab"[n % 2]) for n in range(8)]
    before = await secret_checks(cluster)
    answers = await asyncio.gather(
        *(
            clients[n % 8].call("ResetPassword2", {**base, "SecurityQuestionAnswer": f"cat{n}"})
            for n in range(40)
        )
    )
    assert await secret_checks(cluster) - before <= 5
    details = [a.o["detail"] for a in answers]
    assert details.count("Invalid answer provided for security question") == 5
    assert details.count("Account has been locked for 30 minutes") == 35


async def test_one_totp_code_logs_in_once_over_both_nodes(cluster: Cluster) -> None:
    import pyotp

    secret = "JBSWY3DPEHPK3PXPJBSWY3DP"
    await cluster.users("totp", totp={"totp_secret": secret})
    await cluster.start()
    clients = [await cluster.client("ab"[n % 2]) for n in range(6)]
    for c in clients:
        step = await c.call("AuthenticateUser", {"UserName": "totp", "Password": PASSWORD})
        assert step.o["Requires2FA"] is True
    code = pyotp.TOTP(secret).now()
    answers = await asyncio.gather(*(c.call("Authenticate2FA", {"Code": code}) for c in clients))
    assert sum(bool(a.o["Authenticated"]) for a in answers) == 1


async def next_event(c: Client, timeout: float) -> Any:
    while True:
        frame = await c.next_unmatched(timeout)
        if frame.m == 3:
            return frame


async def test_logout_on_one_node_ends_the_session_on_the_other_within_a_second(
    cluster: Cluster,
) -> None:
    await cluster.users("mover", mover={"permissions": ["Trading"], "accounts": [10]})
    await cluster.start()
    a = await cluster.client("a", "mover")
    token = (await a.call("AuthenticateUser", {"UserName": "mover", "Password": PASSWORD})).o[
        "SessionToken"
    ]
    b = await cluster.client("b")
    assert (await b.call("WebAuthenticateUser", {"SessionToken": token})).o["Authenticated"]
    assert await logged_in(b)
    started = time.monotonic()
    assert (await a.call("LogOut")).o == OK
    event = await next_event(b, timeout=1)
    assert time.monotonic() - started < 1
    assert event.n == "LogoutEvent" and event.o == {"Reason": "LoggedOutElsewhere"}
    assert not await logged_in(b)


async def test_a_reset_on_one_node_sends_logout_events_on_the_other(cluster: Cluster) -> None:
    await cluster.users("mover", mover={"permissions": ["Trading"], "accounts": [10]})
    await cluster.start()
    on_b = await cluster.client("b", "mover")
    mail = await cluster.code_for("mover", via="a")
    c = await cluster.client("a")
    payload = {"UserId": mail["user_id"], "Password": NEW, "PendingCode": mail["code"]}
    assert (await c.call("ResetPassword2", payload)).o == OK
    event = await next_event(on_b, timeout=1)
    assert event.o == {"Reason": "PasswordChanged"}
    assert not await logged_in(on_b)


async def test_a_forced_logoff_on_one_node_ends_the_users_sessions_on_the_other(
    cluster: Cluster,
) -> None:
    ids = await cluster.users("mover", mover={"permissions": ["Trading"], "accounts": [10]})
    await cluster.start()
    on_a = await cluster.client("a", "mover")
    on_b = await cluster.client("b", "mover")
    op = await cluster.client("a", "op")
    started = time.monotonic()
    assert (await op.call("ForceUserLogoff", {"UserId": ids["mover"]})).o == OK
    for c in (on_a, on_b):
        event = await next_event(c, timeout=1)
        assert event.o == {"Reason": "ForcedLogoff"}
    assert time.monotonic() - started < 1
    assert not await logged_in(on_a) and not await logged_in(on_b)


async def test_thirty_logins_with_one_nonce_over_two_nodes_open_one_session(
    cluster: Cluster,
) -> None:
    await cluster.users("bot", bot={"permissions": ["Trading"]})
    await cluster.start(login_failures_per_user=100, login_failures_per_source=100)
    owner = await cluster.client("a", "bot")
    key = await add_key(owner, {"Permissions": []})
    cs = [await cluster.client(node) for node in ("a", "b") * 3]
    answers = await burst(cs, [key_login(key, "same on both nodes")] * 30)
    assert sum(a.o["Authenticated"] for a in answers) == 1
    assert all(a.o == INVALID for a in answers if not a.o["Authenticated"])
    assert await key_sessions(cluster.db, f"API key {key['APIKey']}") == 1
    # The other node took up none of it: a fresh nonce still logs in there.
    fresh = await burst(cs[1:2], [key_login(key, random_nonce())])
    assert fresh[0].o["Authenticated"] is True


async def test_clients_of_a_stopped_node_reconnect_to_the_other_and_resume_with_their_token(
    cluster: Cluster,
) -> None:
    await cluster.users("alice")
    await cluster.start()
    login = {"UserName": "alice", "Password": PASSWORD}
    clients = [await Client.connect(cluster.nodes["a"].url) for _ in range(5)]
    tokens = [(await c.call("AuthenticateUser", login)).o["SessionToken"] for c in clients]
    await cluster.nodes["a"].stop()  # SIGTERM: drained, then every WebSocket closed with 1012
    for c, token in zip(clients, tokens, strict=True):
        with pytest.raises(ConnectionClosed) as closed:
            await c.next_unmatched(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        other = await cluster.client("b")
        resumed = await other.call("WebAuthenticateUser", {"SessionToken": token})
        assert resumed.o["Authenticated"] is True, resumed.o


async def test_log_out_other_sessions_on_one_node_ends_them_on_the_other_with_events(
    cluster: Cluster,
) -> None:
    await cluster.users("mover")
    await cluster.start()
    on_b = [await cluster.client("b", "mover") for _ in range(3)]
    me = await cluster.client("a", "mover")
    listed = (await me.call("GetUserSessions")).o
    assert len(listed) == 4 and sum(s["Current"] for s in listed) == 1
    started = time.monotonic()
    assert (await me.call("LogOutOtherSessions")).o == OK
    for c in on_b:
        event = await next_event(c, timeout=1)
        assert event.o == {"Reason": "LoggedOutElsewhere"}
        assert not await logged_in(c)
    assert time.monotonic() - started < 1
    # One of them, by its id, from the other node.
    again = await cluster.client("b", "mover")
    (theirs,) = [s["SessionId"] for s in (await me.call("GetUserSessions")).o if not s["Current"]]
    assert (await me.call("LogOutSession", {"SessionId": theirs})).o == OK
    event = await next_event(again, timeout=1)
    assert event.o == {"Reason": "LoggedOutElsewhere"} and await logged_in(me)


async def test_ten_first_logins_from_a_new_device_over_both_nodes_send_one_notice(
    cluster: Cluster,
) -> None:
    await cluster.users("mover")
    await cluster.start()
    await cluster.client("a", "mover")  # the user's first device: never noticed

    async def first_login(node: str) -> Any:
        c = await cluster.client(node)
        payload = {"UserName": "mover", "Password": PASSWORD, "DeviceId": "new-laptop"}
        return (await c.call("AuthenticateUser", payload)).o

    replies = await asyncio.gather(*(first_login("ab"[k % 2]) for k in range(10)))
    assert all(r["Authenticated"] for r in replies)
    rows = await sql(cluster.db, "SELECT COUNT(*) FROM outbox WHERE kind = 'new-sign-in'")
    assert rows[0][0] == 1


async def test_a_device_code_used_twenty_times_over_both_nodes_trusts_once(
    cluster: Cluster,
) -> None:
    await cluster.users("mover")
    await cluster.start(verify_new_devices="true")
    c = await cluster.client("a")
    payload = {"UserName": "mover", "Password": PASSWORD}
    reply = (await c.call("AuthenticateUser", payload)).o
    assert reply["Authenticated"] is False and isinstance(reply["HashCode"], int)
    await eventually(lambda: sum(len(f) for f in cluster.mail_files().values()) == 1)
    (path,) = [p for files in cluster.mail_files().values() for p in files]
    (code,) = re.findall(r"^(\d{8})$", parse_mail(path)["text"], re.M)

    async def use(node: str) -> Any:
        other = await cluster.client(node)
        register = {"HashCode": reply["HashCode"], "PendingEmailCode": code}
        return (await other.call("RegisterNewDevice", register)).o

    answers = await asyncio.gather(*(use("ab"[k % 2]) for k in range(20)))
    assert sum(a == OK for a in answers) == 1
    assert (await c.call("AuthenticateUser", payload)).o["Authenticated"] is True
