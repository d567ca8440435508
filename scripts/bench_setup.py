"""What the benchmark's cases need before they run: users in a fresh store, an Operator's
session, reset codes read from the Maildir, the cost of one hash here, the outbox backlog.

Users are created by ``scripts.bench_seed`` in its own process; everything else goes through
the real protocol (``protocol.client``) or the server's ``/metrics``, as a client would.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

from .bench_procs import Server, log, run_module

__all__ = [
    "PASSWORD",
    "seed",
    "login",
    "request_resets",
    "read_codes",
    "hash_seconds",
    "mail_backlog",
    "metric",
]

PASSWORD = "Bench-Pass-2468!"  # every seeded user's


def seed(
    db: Path | str, groups: list[dict[str, Any]], env: dict[str, str] | None = None
) -> dict[str, list[int]]:
    """Create the groups' users (``scripts.bench_seed``, ``env`` added to its environment);
    their ids by prefix."""
    spec = json.dumps({"password": PASSWORD, "groups": groups})
    out = run_module(
        "scripts.bench_seed", "--db", str(db), "--spec", spec, what="seeding", timeout=600, env=env
    )
    ids: dict[str, list[int]] = json.loads(out.strip().splitlines()[-1])
    return ids


async def login(url: str, username: str) -> str:
    """A seeded user's session token."""
    from protocol.client import Client

    async with await Client.connect(url) as c:
        answer = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    if not answer.o.get("Authenticated"):
        raise RuntimeError(f"{username} could not log in: {answer.o}")
    return str(answer.o["SessionToken"])


async def request_resets(url: str, token: str, usernames: list[str]) -> None:
    """ResetPassword for each user, on the session ``token`` (an Operator's), over 8 lanes."""
    from protocol.client import Client

    async def one_connection(names: list[str]) -> None:
        async with await Client.connect(url) as c:
            resumed = await c.call("WebAuthenticateUser", {"SessionToken": token})
            if not resumed.o.get("Authenticated"):
                raise RuntimeError(f"operator session refused: {resumed.o}")
            for name in names:
                answer = await c.call("ResetPassword", {"UserName": name}, timeout=120)
                if not answer.ok:
                    raise RuntimeError(f"ResetPassword {name}: {answer.o}")

    lanes = 8
    await asyncio.gather(*(one_connection(usernames[k::lanes]) for k in range(lanes)))


_LINK = re.compile(r"^http\S*[?&]UserId=(\d+)&PendingCode=([0-9a-fA-F-]+)\s*$", re.MULTILINE)


def read_codes(maildir: Path, user_ids: set[int], timeout: float) -> dict[int, str]:
    """Each wanted user's PendingCode, from the delivered messages (newest per user wins)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[int, tuple[int, str]] = {}
        new = maildir / "new"
        for path in new.iterdir() if new.exists() else ():
            with suppress(FileNotFoundError):
                mtime = path.stat().st_mtime_ns
                for uid, code in _LINK.findall(path.read_text(errors="replace")):
                    uid_n = int(uid)
                    if uid_n in user_ids and mtime >= found.get(uid_n, (0, ""))[0]:
                        found[uid_n] = (mtime, code)
        if len(found) >= len(user_ids) or time.monotonic() > deadline:
            if len(found) < len(user_ids):
                log(f"only {len(found)} of {len(user_ids)} reset mails arrived in {timeout:.0f} s")
            return {uid: code for uid, (_, code) in found.items()}
        time.sleep(0.2)


def hash_seconds(server_env: dict[str, str] | None = None) -> float:
    """One Argon2id hash at the server's cost (the default, or what ``server_env`` sets), here:
    it sizes the supply of reset codes."""
    from argon2 import PasswordHasher

    from oms_auth.config import load_settings

    s = load_settings(environ=server_env or {})
    hasher = PasswordHasher(time_cost=s.argon2_time_cost, memory_cost=s.argon2_memory_kib)
    hasher.hash("warm-up")  # the first one also pays for faulting its memory in
    times = []
    for _ in range(3):
        started = time.perf_counter()
        hasher.hash("calibration")
        times.append(time.perf_counter() - started)
    return min(times)


def metric(server: Server, name: str) -> int | None:
    """One counter or gauge of the server's ``/metrics`` (``oms_auth_NAME``), if it says."""
    try:
        with urllib.request.urlopen(server.http + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    match = re.search(rf"^oms_auth_{name} (\d+)", text, re.MULTILINE)
    return int(match[1]) if match else None


def mail_backlog(server: Server) -> int | None:
    """Reset mails still queued in the server's outbox (from ``/metrics``), if it says."""
    return metric(server, "mail_queued")
