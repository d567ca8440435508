"""Performance benchmark: oms-auth against a bare ``websockets`` ceiling, on one machine.

    python -m scripts.bench [--loop asyncio|uvloop|both] [--connections 1,8,64]
                            [--duration 3] [--slow-duration 8] [--rounds 2] [--idle 5000]
                            [--only ping,auth,...] [--server-env NAME=VALUE] [--quick]

Prints the machine, then one Markdown table (ready for the README), then notes; progress goes
to stderr. ``--quick`` is a smoke run with tiny numbers (its figures mean nothing).

What runs, each in its own process, all on 127.0.0.1:

- the ceiling (``scripts.bench_echo``): a bare websockets server answering every frame with a
  fixed standard response after decoding only ``i`` and ``n``: what this stack can do at best;
- oms-auth (``scripts.bench_serve``, the real ``oms-auth serve``) on a fresh store with generated
  users (``scripts.bench_seed``), request limits raised so the bench is never refused;
- the load generator (``scripts.bench_load``): closed loop, one request in flight per
  connection, latency from ``time.perf_counter_ns``; it runs on uvloop when installed, whichever
  loop the servers use, so the instrument stays the same.

Request cases are run A B A B (ceiling, oms-auth, ceiling, oms-auth ...; ``--rounds``) and
medians quoted, because the machine drifts between batches; each oms-auth figure is divided by
the ceiling's from the same run. Argon2id runs at the default cost (the realistic figure).

Cases: Ping; AuthenticateUser; ResetPassword by an Operator (durable: the code and its mail
are committed before the answer); ResetPassword2 (Argon2id hash of the new password, codes read
from the Maildir); paced Ping while ResetPassword2 saturates the hash pool (against the same
paced Ping on an idle server); RSS with ``--idle`` idle authenticated connections (sessions
resumed with WebAuthenticateUser); time from spawn to the "listening" line on a fresh store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._bench_util import cpu_seconds, have_uvloop, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PASSWORD = "Bench-Pass-2468!"
NEW_PASSWORD = "Fresh-Bench-Pw7!"
OMS_MARKERS = {
    "Ping": "PONG",
    "AuthenticateUser": '\\"Authenticated\\":true',
    "ResetPassword": '\\"result\\":true',
    "ResetPassword2": '\\"result\\":true',
}
# The bench must never be refused by a limit meant for attackers.
LIMITS = {
    "OMS_AUTH_RESET_REQUESTS_PER_USER": "1000000",
    "OMS_AUTH_RESET_REQUESTS_PER_SOURCE": "1000000",
    "OMS_AUTH_INVALID_CODES_PER_SOURCE": "1000000",
    "OMS_AUTH_LOGIN_FAILURES_PER_USER": "1000000",
    "OMS_AUTH_LOGIN_FAILURES_PER_SOURCE": "1000000",
    "OMS_AUTH_LOCKOUT_FAILURES": "1000000",
    # Overload protection (when the server has it): every bench connection comes from
    # 127.0.0.1, and one connection's closed loop can pass any per-connection rate.
    "OMS_AUTH_MAX_CONNECTIONS_PER_SOURCE": "1000000",
    "OMS_AUTH_MAX_REQUESTS_PER_SECOND": "1000000000",
}
CASES = (
    "Ping",
    "AuthenticateUser",
    "ResetPassword (Operator)",
    "ResetPassword2",
    "Ping during ResetPassword2",
    "idle authenticated connections",
    "start to listening",
)
HEADER = (
    "| loop | case | conns | req/s | p50 ms | p99 ms | p99.9 ms | n | server CPU us/req "
    "| ceiling req/s | ceiling p99 ms | ceiling CPU us/req | x ceiling req/s | x ceiling p99 "
    "| target |"
)
SLOW = ("AuthenticateUser", "ResetPassword2")
ONLY = {  # --only keys
    "Ping": "ping",
    "AuthenticateUser": "auth",
    "ResetPassword": "reset",
    "ResetPassword2": "reset2",
}
ALL_CASES = (
    "ping",
    "auth",
    "reset2",
    "saturation",
    "reset",
    "idle",
    "startup",
)  # one Argon2id computation per request


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without OMS_AUTH_* (the bench pins its own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_AUTH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class Processes:
    """Every process the bench starts; ``stop_all`` ends whatever is still running."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, cwd=ROOT, text=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 15) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc, timeout=5)


PROCS = Processes()


def _read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"{what}: no output within {timeout:.0f} s (exit {proc.poll()})")
    return line


@dataclass
class Server:
    kind: str  # "ceiling" or "oms-auth"
    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    started_s: float  # spawn to listening line

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http(self) -> str:
        return self.url.split("/WSGateway", 1)[0].replace("ws://", "http://", 1)

    def stop(self) -> None:
        PROCS.stop(self.proc)


def start_ceiling(loop: str, tmp: Path) -> Server:
    log_path = tmp / f"ceiling-{time.monotonic_ns()}.log"
    with open(log_path, "w") as errors:
        started = time.perf_counter()
        proc = PROCS.start(
            [PY, "-m", "scripts.bench_echo", "--port", "0", "--loop", loop],
            stdout=subprocess.PIPE,
            stderr=errors,
            env=_env(),
        )
    try:
        line = _read_line(proc, 30, "ceiling")
    except RuntimeError:
        PROCS.stop(proc)
        raise RuntimeError(f"ceiling did not start: {log_path.read_text()[-2000:]}") from None
    return Server("ceiling", proc, line.split()[-1], log_path, time.perf_counter() - started)


def start_oms(loop: str, tmp: Path, db: Path, env: dict[str, str] | None = None) -> Server:
    log_path = tmp / f"oms-auth-{time.monotonic_ns()}.log"
    args = [PY, "-m", "scripts.bench_serve", "--loop", loop, "--", "serve", "--port", "0"]
    args += ["--db", str(db), "--mail", f"maildir:{db.parent / 'mail'}"]
    with open(log_path, "w") as errors:
        started = time.perf_counter()
        proc = PROCS.start(
            args, stdout=subprocess.PIPE, stderr=errors, env=_env({**LIMITS, **(env or {})})
        )
    try:
        line = _read_line(proc, 60, "oms-auth")
    except RuntimeError:
        PROCS.stop(proc)
        raise RuntimeError(f"oms-auth did not start: {log_path.read_text()[-2000:]}") from None
    elapsed = time.perf_counter() - started
    match = re.search(r"listening on (ws://\S+)", line)
    if match is None:
        PROCS.stop(proc)
        raise RuntimeError(f"oms-auth printed {line!r}, not its address")
    return Server("oms-auth", proc, match[1], log_path, elapsed)


def seed(db: Path, groups: list[dict[str, Any]]) -> dict[str, list[int]]:
    spec = json.dumps({"password": PASSWORD, "groups": groups})
    done = subprocess.run(
        [PY, "-m", "scripts.bench_seed", "--db", str(db), "--spec", spec],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding failed: {done.stderr[-2000:]}")
    ids: dict[str, list[int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return ids


def start_loader(stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """A load-generator process, reading its job as one JSON line on stdin."""
    return PROCS.start(
        [PY, "-m", "scripts.bench_load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_env(),
    )


def load(spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """One load-generator run in its own process."""
    proc = start_loader()
    try:
        out, err = proc.communicate(json.dumps(spec) + "\n", timeout=timeout)
    finally:
        PROCS.stop(proc)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- setup through the real protocol ------------------------------------------------------------


async def _login(url: str, username: str) -> str:
    from protocol.client import Client

    async with await Client.connect(url) as c:
        answer = await c.call("AuthenticateUser", {"UserName": username, "Password": PASSWORD})
    if not answer.o.get("Authenticated"):
        raise RuntimeError(f"{username} could not log in: {answer.o}")
    return str(answer.o["SessionToken"])


async def _request_resets(url: str, token: str, usernames: list[str]) -> None:
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


QUIESCE_SECONDS = [0.5]  # --quick samples for less


def quiesce(server: Server, loop: str, limit: float = 120) -> None:
    """Wait until the server is idle (under 5% of a core over half a second): background work
    left by the last run (the outbox, in practice) must not run under the next one."""
    started = time.monotonic()
    sample = QUIESCE_SECONDS[0]
    while time.monotonic() - started < limit:
        before = cpu_seconds(server.pid)
        time.sleep(sample)
        if cpu_seconds(server.pid) - before <= max(0.05 * sample, 0.01):
            break
    waited = time.monotonic() - started
    if waited > 1.5:
        log(f"[{loop}] {server.kind} was busy for {waited:.1f} s after the last run")


def _foreign(result: dict[str, Any]) -> tuple[float, float]:
    """Cores used by processes other than the server and the load generator during a run,
    and cores stolen by the hypervisor: anything here disturbs the figures."""
    window = result.get("window_s") or 1.0
    ours = result.get("server_cpu_s", 0.0) + result.get("gen_cpu_s", 0.0)
    return (
        max(0.0, result.get("machine_busy_s", 0.0) - ours) / window,
        result.get("steal_s", 0.0) / window,
    )


def _disturbance(row: Row) -> None:
    if not row.foreign:
        return
    other = statistics.median(f[0] for f in row.foreign)
    steal = statistics.median(f[1] for f in row.foreign)
    if other >= 0.15 or steal >= 0.05:
        row.notes.append(
            f"other processes used {other:.2f} cores (steal {steal:.2f}) during these runs"
        )


def mail_backlog(server: Server) -> int | None:
    try:
        with urllib.request.urlopen(server.http + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    match = re.search(r"^oms_auth_mail_queued (\d+)", text, re.MULTILINE)
    return int(match[1]) if match else None


# -- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    loop: str
    case: str
    conns: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # oms-auth (or the loaded side)
    refs: list[dict[str, Any]] = field(default_factory=list)  # ceiling (or the idle side)
    target: str = ""
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)  # preformatted cells
    foreign: list[tuple[float, float]] = field(default_factory=list)  # (cores, steal) per run

    def med(self, key: str, ref: bool = False) -> float:
        values = [r[key] for r in (self.refs if ref else self.runs) if not _nan(r.get(key))]
        return statistics.median(values) if values else float("nan")

    def cpu_us(self, ref: bool = False) -> float:
        runs = self.refs if ref else self.runs
        per = [r["server_cpu_s"] / r["count"] * 1e6 for r in runs if r.get("count")]
        return statistics.median(per) if per else float("nan")


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: float, digits: int = 2) -> str:
    if _nan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not _nan(a) and not _nan(b) else float("nan")


def render(rows: list[Row]) -> str:
    lines = [HEADER, "| --- | --- | ---: " + "| ---: " * 11 + "| --- |"]
    for r in rows:
        if r.fixed:
            cells = [r.loop, r.case, r.conns] + ["-"] * 11 + [r.target]
        else:
            rps, p99 = r.med("rps"), r.med("p99_ms")
            ref_rps, ref_p99 = r.med("rps", True), r.med("p99_ms", True)
            cells = [
                r.loop,
                r.case,
                r.conns,
                _num(rps, 1),
                _num(r.med("p50_ms")),
                _num(p99),
                _num(r.med("p999_ms")),
                str(int(r.med("count"))) if not _nan(r.med("count")) else "-",
                _num(r.cpu_us(), 0),
                _num(ref_rps, 1),
                _num(ref_p99),
                _num(r.cpu_us(True), 0),
                f"{_ratio(rps, ref_rps):.3g}x" if not _nan(_ratio(rps, ref_rps)) else "-",
                f"{_ratio(p99, ref_p99):.3g}x" if not _nan(_ratio(p99, ref_p99)) else "-",
                r.target,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(loops: list[str], gen_loop: str) -> str:
    model = "unknown CPU"
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import msgspec
    import websockets

    usable = len(os.sched_getaffinity(0))
    return (
        f"Machine: {usable} CPUs usable (nproc), {model}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; websockets {websockets.__version__}, "
        f"msgspec {msgspec.__version__}; server loop(s): {', '.join(loops)}; "
        f"load generator loop: {gen_loop}, its own process"
    )


# -- the cases ----------------------------------------------------------------------------------


@dataclass
class Options:
    loops: list[str]
    conns: list[int]
    duration: float
    slow_duration: float
    warmup: float
    rounds: int
    idle: int
    startups: int
    sat_conns: int
    sat_rate: float
    quick: bool
    keep: bool
    json: str | None = None
    only: set[str] = field(default_factory=lambda: set(ALL_CASES))
    server_env: dict[str, str] = field(default_factory=dict)


def _hash_seconds() -> float:
    """One Argon2id hash at the default cost, here (sizes the supply of reset codes)."""
    from argon2 import PasswordHasher

    from oms_auth.config import Settings

    s = Settings()
    hasher = PasswordHasher(time_cost=s.argon2_time_cost, memory_cost=s.argon2_memory_kib)
    hasher.hash("warm-up")  # the first one also pays for faulting its memory in
    times = []
    for _ in range(3):
        started = time.perf_counter()
        hasher.hash("calibration")
        times.append(time.perf_counter() - started)
    return min(times)


def run_loop(opts: Options, loop: str, rows: list[Row], notes: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"oms-bench-{loop}-"))
    try:
        if opts.only & {"ping", "auth", "reset2", "saturation", "reset"}:
            _request_cases(opts, loop, tmp / "load", rows, notes)
        if "idle" in opts.only:
            _memory_case(opts, loop, tmp / "idle", rows)
        if "startup" in opts.only:
            _startup_case(opts, loop, tmp / "startup", rows)
    finally:
        if opts.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _request_cases(opts: Options, loop: str, tmp: Path, rows: list[Row], notes: list[str]) -> None:
    from oms_auth.config import Settings

    tmp.mkdir(parents=True)
    db = tmp / "bench.sqlite3"
    max_conns = max(opts.conns)
    workers = Settings().hash_workers
    per_hash = _hash_seconds()
    # Codes: every oms-auth ResetPassword2 run, then the saturation runs, at the hash pool's
    # pace (each request hashes once), twice over.
    window = opts.warmup + opts.slow_duration + 1.0
    sat_window = opts.warmup + opts.duration + 3.0  # the pressure outlasts the Ping
    rate = workers / per_hash
    need = 0.0
    if "reset2" in opts.only:
        need += sum(opts.rounds * window * min(n, workers) / per_hash for n in opts.conns)
    if "saturation" in opts.only:
        need += opts.rounds * sat_window * rate
    n_codes = int(need * 2) + 20 if need else 0
    n_targets = 200 if opts.quick else 5000
    log(
        f"[{loop}] seeding: 1 operator, {max_conns} login users, {n_targets} reset targets, "
        f"{n_codes} ResetPassword2 users (one Argon2id hash here: {per_hash * 1000:.0f} ms)"
    )
    ids = seed(
        db,
        [
            {"prefix": "operator", "count": 1, "permissions": ["Operator"], "accounts": [1]},
            {"prefix": "login", "count": max_conns, "permissions": ["Trading"], "accounts": [10]},
            {"prefix": "target", "count": n_targets, "permissions": ["Trading"]},
            {"prefix": "newpw", "count": n_codes, "permissions": ["Trading"]},
        ],
    )
    ceiling = start_ceiling(loop, tmp)
    oms = start_oms(loop, tmp, db, opts.server_env)
    try:
        token = asyncio.run(_login(oms.url, "operator0"))
        log(f"[{loop}] operator requests {n_codes} resets; reading the codes from the Maildir")
        asyncio.run(_request_resets(oms.url, token, [f"newpw{k}" for k in range(n_codes)]))
        wanted = set(ids["newpw"])
        codes = read_codes(db.parent / "mail", wanted, timeout=120)
        payloads_r2 = [
            {"UserId": uid, "Password": NEW_PASSWORD, "PendingCode": code}
            for uid, code in sorted(codes.items())
        ]
        cursor = 0

        def spec(case: str, server: Server, n: int, **extra: Any) -> dict[str, Any]:
            s: dict[str, Any] = {
                "url": server.url,
                "conns": n,
                "warmup": opts.warmup,
                "duration": opts.duration,
                "server_pid": server.pid,
                "name": case,
                "marker": OMS_MARKERS[case] if server is oms else None,
                "token": token if server is oms and case == "ResetPassword" else None,
            }
            if server is oms and case in SLOW:
                s["duration"] = opts.slow_duration
            s.update(extra)
            return s

        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("Ping", "Ping", {"payloads": [{}], "mode": "same"}),
            (
                "AuthenticateUser",
                "AuthenticateUser",
                {
                    "payloads": [
                        {"UserName": f"login{k}", "Password": PASSWORD} for k in range(max_conns)
                    ],
                    "mode": "per_conn",
                },
            ),
            ("ResetPassword2", "ResetPassword2", {"mode": "once"}),
            (
                "ResetPassword (Operator)",
                "ResetPassword",
                {
                    "payloads": [{"UserName": f"target{k}"} for k in range(n_targets)],
                    "mode": "cycle",
                },
            ),
        ]
        for label, function, extra in cases:
            if label == "ResetPassword (Operator)" and "saturation" in opts.only:
                # Last: its mail backlog would otherwise run under the cases after it.
                cursor = _saturation_case(opts, loop, oms, spec, payloads_r2, cursor, rows)
            if ONLY[function] not in opts.only:
                continue
            for n in opts.conns:
                row = Row(loop, label, str(n))
                for rnd in range(opts.rounds):
                    for server in (ceiling, oms):
                        more = dict(extra)
                        if function == "ResetPassword2" and server is oms:
                            more["payloads"] = payloads_r2[cursor:]
                        elif function == "ResetPassword2":
                            # The ceiling uses no code up: the same frames, round robin.
                            more.update(payloads=payloads_r2 or [{}], mode="cycle")
                        quiesce(oms, loop)  # its background work would disturb either run
                        result = load(spec(function, server, n, **more))
                        row.foreign.append(_foreign(result))
                        if function == "ResetPassword2" and server is oms:
                            cursor += result["used"]
                            if result["exhausted"]:
                                row.notes.append("ran out of reset codes")
                        (row.runs if server is oms else row.refs).append(result)
                        if result["errors"]:
                            row.notes.append(
                                f"{result['errors']} bad answers, e.g. {result['first_error']}"
                            )
                        log(
                            f"[{loop}] {label} x{n} round {rnd + 1} {server.kind}: "
                            f"{result['rps']:,.1f} req/s, p99 {result['p99_ms']:.2f} ms, "
                            f"server CPU {result['server_cpu_s']:.2f} s, "
                            f"load generator CPU {result['gen_cpu_s']:.2f} s"
                        )
                _targets(row, max_conns)
                _disturbance(row)
                if function == "Ping":
                    gen = [r["gen_cpu_s"] / opts.duration for r in row.refs]
                    row.notes.append(
                        f"the load generator used {statistics.median(gen):.2f} of a core "
                        "during the ceiling runs"
                    )
                rows.append(row)
                notes.extend(f"{loop} {label} x{n}: {note}" for note in dict.fromkeys(row.notes))
        backlog = mail_backlog(oms)
        if backlog:
            notes.append(
                f"{loop}: {backlog} reset mails still queued in the outbox after the "
                "ResetPassword runs (delivery runs behind the answers)"
            )
    finally:
        oms.stop()
        ceiling.stop()


def _targets(row: Row, max_conns: int) -> None:
    if row.conns != str(max_conns):
        return
    rps = _ratio(row.med("rps"), row.med("rps", True))
    p99 = _ratio(row.med("p99_ms"), row.med("p99_ms", True))
    if row.case == "Ping":
        met = rps >= 0.7 and p99 <= 1.5
        row.target = f">= 0.7x, p99 <= 1.5x: {'met' if met else 'SHORT'}"
    elif row.case == "ResetPassword (Operator)":
        row.target = f">= 0.25x: {'met' if rps >= 0.25 else 'SHORT'}"


def _saturation_case(
    opts: Options,
    loop: str,
    oms: Server,
    spec: Any,
    payloads_r2: list[dict[str, Any]],
    cursor: int,
    rows: list[Row],
) -> int:
    """Paced Ping on an idle server (the reference) and while ResetPassword2 keeps every hash
    worker busy, A B A B."""
    row = Row(loop, CASES[4], f"{opts.sat_conns}+{opts.sat_conns}")
    ping = spec("Ping", oms, opts.sat_conns, payloads=[{}], mode="same", rate=opts.sat_rate)
    busy_cpu: list[float] = []
    for rnd in range(opts.rounds):
        quiesce(oms, loop)
        row.refs.append(load(ping))
        row.foreign.append(_foreign(row.refs[-1]))
        log(f"[{loop}] paced Ping, idle server, round {rnd + 1}: p99 {row.refs[-1]['p99_ms']:.2f}")
        pressure = spec(
            "ResetPassword2",
            oms,
            opts.sat_conns,
            payloads=payloads_r2[cursor:],
            mode="once",
            warmup=0.0,
            duration=opts.warmup + opts.duration + 2.5,
        )
        proc = start_loader()
        quiesce(oms, loop)
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(pressure) + "\n")
            proc.stdin.flush()
            time.sleep(1.0)  # let the hash pool fill up
            cpu0, t0 = cpu_seconds(oms.pid), time.perf_counter()
            result = load(ping)
            busy_cpu.append((cpu_seconds(oms.pid) - cpu0) / (time.perf_counter() - t0))
            out, err = proc.communicate(timeout=600)
        finally:
            PROCS.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"ResetPassword2 pressure failed: {err[-2000:]}")
        r2 = json.loads(out.strip().splitlines()[-1])
        cursor += r2["used"]
        if r2["exhausted"]:
            row.notes.append("ran out of reset codes")
        if r2["errors"]:
            row.notes.append(f"ResetPassword2 bad answers, e.g. {r2['first_error']}")
        row.runs.append(result)
        log(
            f"[{loop}] paced Ping during ResetPassword2, round {rnd + 1}: p99 "
            f"{result['p99_ms']:.2f} ms; ResetPassword2 {r2['rps']:.1f}/s; server busy "
            f"{busy_cpu[-1]:.2f} cores"
        )
    _disturbance(row)
    ratio = _ratio(row.med("p99_ms"), row.med("p99_ms", True))
    row.target = (
        f"p99 <= 3x idle: {'met' if ratio <= 3 else 'SHORT'} "
        f"(ceiling columns: same Ping, idle server; server busy "
        f"{statistics.median(busy_cpu):.2f} cores)"
    )
    rows.append(row)
    for note in dict.fromkeys(row.notes):
        row.target += f"; {note}"
    return cursor


def _memory_case(opts: Options, loop: str, tmp: Path, rows: list[Row]) -> None:
    tmp.mkdir(parents=True)
    db = tmp / "idle.sqlite3"
    seed(db, [{"prefix": "idle", "count": 1, "permissions": ["Trading"], "accounts": [10]}])
    figures: dict[str, tuple[int, int, float]] = {}
    for kind in ("ceiling", "oms-auth"):
        server = (
            start_ceiling(loop, tmp)
            if kind == "ceiling"
            else start_oms(loop, tmp, db, opts.server_env)
        )
        holder: subprocess.Popen[str] | None = None
        try:
            token = asyncio.run(_login(server.url, "idle0")) if kind == "oms-auth" else None
            time.sleep(0.1 if opts.quick else 0.5)
            before = rss_bytes(server.pid)
            holder = start_loader(stderr=subprocess.DEVNULL)
            assert holder.stdin is not None
            spec = {"idle": True, "url": server.url, "conns": opts.idle, "batch": 100}
            holder.stdin.write(json.dumps({**spec, "token": token}) + "\n")
            holder.stdin.flush()
            ready = json.loads(_read_line(holder, 600, "idle connections"))
            time.sleep(0.1 if opts.quick else 1.0)
            figures[kind] = (before, rss_bytes(server.pid), ready["open_s"])
            log(
                f"[{loop}] {kind}: {ready['ready']} idle connections open in "
                f"{ready['open_s']:.1f} s; RSS {before / 2**20:.0f} -> "
                f"{figures[kind][1] / 2**20:.0f} MB"
            )
        finally:
            if holder is not None:
                with suppress(OSError):
                    assert holder.stdin is not None
                    holder.stdin.write("done\n")
                    holder.stdin.flush()
                PROCS.stop(holder)
            server.stop()
    before, after, open_s = figures["oms-auth"]
    ceiling_after = figures["ceiling"][1]
    per_conn = (after - before) / opts.idle / 1024
    mb = after / 2**20
    rows.append(
        Row(
            loop,
            f"{opts.idle:,} {CASES[5]}",
            f"{opts.idle:,}",
            target=(
                f"RSS {mb:.0f} MB ({before / 2**20:.0f} MB at start, {per_conn:.0f} KB/conn; "
                f"ceiling {ceiling_after / 2**20:.0f} MB = {after / ceiling_after:.2f}x; "
                f"opened+authenticated in {open_s:.1f} s) < 300 MB: "
                f"{'met' if mb < 300 else 'SHORT'}"
            ),
            fixed={"rss": f"{mb:.0f}"},
        )
    )


def _startup_case(opts: Options, loop: str, tmp: Path, rows: list[Row]) -> None:
    tmp.mkdir(parents=True)
    times: dict[str, list[float]] = {"ceiling": [], "oms-auth": []}
    for k in range(opts.startups):
        for kind in ("ceiling", "oms-auth"):
            fresh = tmp / f"run{k}"
            fresh.mkdir(exist_ok=True)
            if kind == "ceiling":
                server = start_ceiling(loop, fresh)
            else:
                server = start_oms(loop, fresh, fresh / "fresh.sqlite3", opts.server_env)
            server.stop()
            times[kind].append(server.started_s)
    oms, ceiling = statistics.median(times["oms-auth"]), statistics.median(times["ceiling"])
    log(f"[{loop}] start to listening: oms-auth {times['oms-auth']}, ceiling {times['ceiling']}")
    rows.append(
        Row(
            loop,
            CASES[6],
            "-",
            target=(
                f"{oms:.2f} s (median of {opts.startups}, fresh store; ceiling {ceiling:.2f} s) "
                f"< 1 s: {'met' if oms < 1 else 'SHORT'}"
            ),
            fixed={"s": f"{oms:.2f}"},
        )
    )


# -- command line -------------------------------------------------------------------------------


@contextmanager
def _stop_everything() -> Iterator[None]:
    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        PROCS.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "both"],
        help="server event loop (default: both when uvloop is installed; --quick: uvloop if "
        "installed, else asyncio)",
    )
    parser.add_argument("--connections", help="comma-separated (default 1,8,64; --quick 2)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 3)")
    parser.add_argument(
        "--slow-duration",
        type=float,
        help="seconds measured per oms-auth run of the Argon2id cases (default 8; --quick: "
        "--duration)",
    )
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 1)")
    parser.add_argument("--rounds", type=int, help="A B rounds per case (default 2)")
    parser.add_argument("--idle", type=int, help="idle authenticated connections (default 5000)")
    parser.add_argument("--startups", type=int, help="start-up runs (default 5)")
    parser.add_argument(
        "--sat-conns",
        type=int,
        default=8,
        help="Ping and ResetPassword2 connections in the saturation case (default 8 each)",
    )
    parser.add_argument(
        "--sat-rate",
        type=float,
        default=400.0,
        help="paced Ping requests/s in the saturation case (default 400)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated cases to run, of {','.join(ALL_CASES)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for oms-auth, e.g. OMS_AUTH_HASH_WORKERS=1 (experiments)",
    )
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(ALL_CASES):
        parser.error(f"--only takes some of {','.join(ALL_CASES)}")
    quick = args.quick
    uv = have_uvloop()
    loop = (
        args.loop or ("uvloop" if uv else "asyncio")
        if quick
        else args.loop or ("both" if uv else "asyncio")
    )
    loops = ["asyncio", "uvloop"] if loop == "both" else [loop]
    if "uvloop" in loops and not uv:
        parser.error("uvloop is not installed (pip install uvloop, or the 'uvloop' extra)")
    conns = [int(c) for c in (args.connections or ("2" if quick else "1,8,64")).split(",")]

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    opts = Options(
        loops=loops,
        conns=conns,
        duration=pick(args.duration, 3.0, 0.3),
        slow_duration=pick(args.slow_duration, max(8.0, args.duration or 0), args.duration or 0.3),
        warmup=pick(args.warmup, 1.0, 0.1),
        rounds=pick(args.rounds, 2, 1),
        idle=pick(args.idle, 5000, 20),
        startups=pick(args.startups, 5, 1),
        sat_conns=2 if quick and args.sat_conns == 8 else args.sat_conns,
        sat_rate=args.sat_rate,
        quick=quick,
        keep=args.keep,
        json=args.json,
        only=set(args.only.split(",")) if args.only else set(ALL_CASES),
        server_env=dict(kv.split("=", 1) for kv in args.server_env),
    )
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = _options(argv)
    if opts.quick:
        QUIESCE_SECONDS[0] = 0.1
    rows: list[Row] = []
    notes: list[str] = []
    gen_loop = "uvloop" if have_uvloop() else "asyncio"
    started = time.perf_counter()
    with _stop_everything():
        for loop in opts.loops:
            run_loop(opts, loop, rows, notes)
    print(machine(opts.loops, gen_loop))
    print(
        f"Per run: {opts.warmup:g} s warm-up, {opts.duration:g} s measured; {opts.rounds} "
        "rounds A B (ceiling, oms-auth), medians; closed loop, one request in flight per "
        "connection; Argon2id at the default cost; saturation case: Ping paced at "
        f"{opts.sat_rate:g}/s over {opts.sat_conns} connections beside {opts.sat_conns} "
        "ResetPassword2 connections."
        + "".join(f" Server environment: {k}={v}." for k, v in opts.server_env.items())
    )
    print()
    print(render(rows))
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    if opts.json:
        Path(opts.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
