"""The benchmark's processes: starting and stopping servers, load generators and one-shot runs.

Every process the bench starts goes through :data:`PROCS`, so :func:`stop_everything` (around
a whole bench run) ends whatever is still running, on an exception or a SIGTERM alike. Each
child runs from the checkout (``ROOT``) with the inherited environment minus ``OMS_AUTH_*``
(:func:`child_env`): the bench pins every setting it depends on.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._bench_util import cpu_seconds

__all__ = [
    "ROOT",
    "PY",
    "LIMITS",
    "log",
    "child_env",
    "Processes",
    "PROCS",
    "read_line",
    "Server",
    "start_ceiling",
    "start_oms",
    "start_loader",
    "load",
    "run_module",
    "wait_idle",
    "stop_everything",
]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
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


def log(message: str) -> None:
    """Progress, on stderr (stdout carries the results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
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


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The next line of a child's stdout, waiting at most ``timeout`` seconds for it."""
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


def _start_server(
    kind: str,
    args: list[str],
    tmp: Path,
    env: dict[str, str],
    timeout: float,
    address: Callable[[str], str | None],
) -> Server:
    """Spawn a server (its stderr to a log file in ``tmp``) and wait for the line it prints
    once listening; ``address`` reads its URL from that line."""
    log_path = tmp / f"{kind}-{time.monotonic_ns()}.log"
    with open(log_path, "w") as errors:
        started = time.perf_counter()
        proc = PROCS.start(args, stdout=subprocess.PIPE, stderr=errors, env=env)
    try:
        line = read_line(proc, timeout, kind)
    except RuntimeError:
        PROCS.stop(proc)
        raise RuntimeError(f"{kind} did not start: {log_path.read_text()[-2000:]}") from None
    elapsed = time.perf_counter() - started
    url = address(line)
    if url is None:
        PROCS.stop(proc)
        raise RuntimeError(f"{kind} printed {line!r}, not its address")
    return Server(kind, proc, url, log_path, elapsed)


def start_ceiling(loop: str, tmp: Path) -> Server:
    """The bare websockets server (``scripts.bench_echo``) on a free port."""
    args = [PY, "-m", "scripts.bench_echo", "--port", "0", "--loop", loop]
    return _start_server("ceiling", args, tmp, child_env(), 30, lambda line: line.split()[-1])


def start_oms(
    loop: str,
    tmp: Path,
    db: Path | str,
    env: dict[str, str] | None = None,
    mail: Path | None = None,
) -> Server:
    """The real ``oms-auth serve`` (``scripts.bench_serve``) on a free port, with the bench's
    raised ``LIMITS`` unless ``env`` sets them otherwise; ``db`` a SQLite file (its mail in
    ``mail/`` beside it) or a PostgreSQL URL (its mail in ``mail``)."""
    args = [PY, "-m", "scripts.bench_serve", "--loop", loop, "--", "serve", "--port", "0"]
    maildir = mail if mail is not None else Path(db).parent / "mail"
    args += ["--db", str(db), "--mail", f"maildir:{maildir}"]
    server_env = child_env({**LIMITS, **(env or {})})
    return _start_server("oms-auth", args, tmp, server_env, 60, _listening_url)


def _listening_url(line: str) -> str | None:
    match = re.search(r"listening on (ws://\S+)", line)
    return match[1] if match else None


def start_loader(stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """A load-generator process, reading its job as one JSON line on stdin."""
    return PROCS.start(
        [PY, "-m", "scripts.bench_load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=child_env(),
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


def run_module(
    module: str, *args: str, what: str, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run ``python -m module args...`` to its end, from the checkout (``env`` added to its
    environment); its stdout. A failure raises "``what`` failed" with the end of its stderr."""
    done = subprocess.run(
        [PY, "-m", module, *args],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return done.stdout


def wait_idle(server: Server, limit: float, sample: float = 0.5) -> float:
    """Seconds until the server used under 5% of a core (at least 0.01 s of CPU) over
    ``sample`` seconds, waiting at most about ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds(server.pid)
        time.sleep(sample)
        if cpu_seconds(server.pid) - before <= max(0.05 * sample, 0.01):
            break
    return time.monotonic() - started


@contextmanager
def stop_everything() -> Iterator[None]:
    """Around a whole run: on leaving (or on SIGTERM) every process still running is ended."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        PROCS.stop_all()
        signal.signal(signal.SIGTERM, previous)
