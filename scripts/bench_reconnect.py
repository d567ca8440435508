"""The ``reconnect`` case: a node's clients all coming back at once, as after a restart.

Every connection is opened first (not timed); then each sends one request, all at once, and the
figure is the time until the last one is answered authenticated:

- resume: WebAuthenticateUser ``{SessionToken}`` on every connection. It checks no password and
  takes no login slot, so the event loop bounds it; its ceiling is the same number of frames
  sent at once to the bare websockets server (``scripts.bench_echo``), in the same run.
- login: AuthenticateUser of one user with the right password on every connection, under the
  default login limits (10 slots per user, 50 per address): the attempts past the slots wait
  their turn (docs/rules.md, "Fair limits"), so Argon2id bounds it; its ceiling is that many
  hashes spread over the hash workers (one hash timed here, at the server's cost).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from oms_auth.config import load_settings

from .bench_procs import log, start_ceiling, start_oms
from .bench_report import Row, ratio
from .bench_setup import PASSWORD, hash_seconds, login, seed

__all__ = ["RESUME", "LOGIN", "reconnect_case"]

RESUME = "reconnect: resumes at once"
LOGIN = "reconnect: logins of one user at once"
OK = '\\"Authenticated\\":true'  # inside the answer's "o", a JSON string
# The login limits as shipped: the bench's raised LIMITS would leave nothing to wait for. The
# wait is raised: N logins take N hashes over the hash workers, and on a slow or busy machine
# that passes the default login_wait_seconds (10), refusing the last ones "in progress"; the
# case measures the hashing bound, not that one.
DEFAULT_LIMITS = {
    "OMS_AUTH_LOGIN_FAILURES_PER_USER": "10",
    "OMS_AUTH_LOGIN_FAILURES_PER_SOURCE": "50",
    "OMS_AUTH_LOGIN_WAIT_SECONDS": "120",
}


async def at_once(url: str, payloads: list[dict[str, Any]], name: str, marker: str) -> float:
    """Open one connection per payload, then send every ``name`` request at once: seconds from
    the first send to the last answer. Raises unless every answer holds ``marker``."""
    sockets = [await connect(url, compression=None, max_size=None) for _ in payloads]
    try:
        frames = [
            json.dumps({"m": 0, "i": 2, "n": name, "o": json.dumps(payload)})
            for payload in payloads
        ]
        started = time.perf_counter()
        await asyncio.gather(*(ws.send(frame) for ws, frame in zip(sockets, frames, strict=True)))
        answers = await asyncio.gather(*(ws.recv() for ws in sockets))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    failed = [a for a in answers if marker not in str(a)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(answers)} {name} failed: {failed[0]!r}")
    return elapsed


def reconnect_case(
    loop: str, tmp: Path, resumes: int, logins: int, env: dict[str, str]
) -> list[Row]:
    tmp.mkdir(parents=True)
    db = tmp / "reconnect.sqlite3"
    seed(db, [{"prefix": "back", "count": 1, "permissions": ["Trading"], "accounts": [10]}])
    ceiling = start_ceiling(loop, tmp)
    try:
        echo_s = asyncio.run(at_once(ceiling.url, [{}] * resumes, "Ping", "result"))
    finally:
        ceiling.stop()
    server_env = {**env, **DEFAULT_LIMITS}
    server = start_oms(loop, tmp, db, server_env)
    try:
        token = asyncio.run(login(server.url, "back0"))
        resume = {"SessionToken": token}
        resume_s = asyncio.run(at_once(server.url, [resume] * resumes, "WebAuthenticateUser", OK))
        right = {"UserName": "back0", "Password": PASSWORD}
        login_s = asyncio.run(at_once(server.url, [right] * logins, "AuthenticateUser", OK))
    finally:
        server.stop()
    workers = load_settings(environ=server_env).hash_workers
    floor = hash_seconds(server_env) * logins / workers
    log(
        f"[{loop}] {resumes} resumes at once {resume_s:.3f} s (ceiling {echo_s:.3f} s); "
        f"{logins} logins at once {login_s:.2f} s (hashing floor {floor:.2f} s)"
    )
    return [
        Row(
            loop,
            RESUME,
            str(resumes),
            target=(
                f"all authenticated in {resume_s:.3f} s; ceiling {echo_s:.3f} s for as many "
                f"frames = {ratio(resume_s, echo_s):.2f}x: the loop bounds it"
            ),
            fixed={"s": f"{resume_s:.3f}"},
        ),
        Row(
            loop,
            LOGIN,
            str(logins),
            target=(
                f"all authenticated in {login_s:.2f} s; {logins} Argon2id hashes over "
                f"{workers} workers take {floor:.2f} s = {ratio(login_s, floor):.2f}x: "
                "hashing bounds it"
            ),
            fixed={"s": f"{login_s:.2f}"},
        ),
    ]
