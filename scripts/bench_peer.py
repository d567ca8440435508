"""The peer benchmark: the password-reset service a Python team would pick (FastAPI +
fastapi-users on uvicorn and SQLite, ``scripts/peer/app.py``) under the same closed-loop load
as ours, for a figure to set ours against.

``python -m scripts.bench_peer --conns 64 --duration 10 --warmup 1 --targets 5000`` sets up the
peer's venv (``.bench-peer/venv``, from ``scripts/peer/requirements.txt`` when it exists, else
the latest releases, then pinned there), seeds a fresh database, starts one uvicorn process with
its defaults, drives POST /auth/forgot-password from a load generator in its own process
(``scripts.peer.http_load``) and prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .bench_procs import PROCS, PY, ROOT, log, run_module, stop_everything

__all__ = ["main"]

VENV = ROOT / ".bench-peer" / "venv"
VENV_PY = VENV / "bin" / "python"
APP_DIR = ROOT / "scripts" / "peer"
REQUIREMENTS = APP_DIR / "requirements.txt"
PACKAGES = ["fastapi", "fastapi-users[sqlalchemy]", "uvicorn[standard]", "aiosqlite"]
# What the JSON reports (the peer venv's installed versions); uvloop and httptools are the
# loop and HTTP parser uvicorn picks by itself when they are installed.
REPORTED = [
    "fastapi",
    "fastapi-users",
    "fastapi-users-db-sqlalchemy",
    "uvicorn",
    "uvloop",
    "httptools",
    "SQLAlchemy",
    "aiosqlite",
    "pwdlib",
    "argon2-cffi",
]
# Not @bench.test as our bench: the route's EmailStr answers 422 for the special-use .test.
EMAIL = "t{k}@bench.example"
PATH = "/auth/forgot-password"


def ensure_venv() -> None:
    """The peer's own venv, made once; a failed setup is removed so the next run starts over."""
    if VENV_PY.exists():
        return
    log(f"setting up the peer venv in {VENV}")
    pip = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # pip's chatter to stderr: stdout carries only the result line.
    quiet: dict[str, Any] = {"check": True, "stdout": sys.stderr}
    try:
        subprocess.run([PY, "-m", "venv", str(VENV)], **quiet)
        if REQUIREMENTS.exists():
            subprocess.run([*pip, "-r", str(REQUIREMENTS)], **quiet)
        else:
            subprocess.run([*pip, *PACKAGES], **quiet)
            frozen = subprocess.run(
                [str(VENV_PY), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
            ).stdout
            REQUIREMENTS.write_text(frozen)
            log(f"pinned {len(frozen.splitlines())} packages in {REQUIREMENTS.relative_to(ROOT)}")
    except BaseException:
        shutil.rmtree(VENV, ignore_errors=True)
        raise


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        f"v = {{n: m.version(n) for n in {REPORTED!r}}}\n"
        "print(json.dumps({'python': platform.python_version(), **v}))"
    )
    out = subprocess.run([str(VENV_PY), "-c", code], check=True, capture_output=True, text=True)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_answering(proc: subprocess.Popen[str], port: int, log_path: Path, limit: float) -> None:
    """Until the route answers 202 (for an unknown address: no outbox row)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}",
        data=b'{"email": "nobody@bench.example"}',
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 202:
                    return
        except urllib.error.HTTPError as exc:  # answering, but not as the bench needs
            raise RuntimeError(f"{PATH} answered {exc.code}: {exc.read()[:300]!r}") from None
        except OSError:  # not listening yet (URLError is an OSError)
            pass
        time.sleep(0.2)
    raise RuntimeError(f"uvicorn did not answer in {limit:.0f} s: {log_path.read_text()[-2000:]}")


def _serve(env: dict[str, str], log_path: Path) -> tuple[Any, int]:
    """The peer on uvicorn, answering: its process and port."""
    port = free_port()
    # uvicorn's defaults (loop and http "auto", access log on), one process: no --workers.
    uvicorn = [str(VENV_PY), "-m", "uvicorn", "app:app", "--app-dir", str(APP_DIR)]
    with open(log_path, "w") as out:
        server = PROCS.start(
            [*uvicorn, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wait_answering(server, port, log_path, 60)
    log(f"uvicorn (pid {server.pid}) answering on port {port}")
    return server, port


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    db = tmp / "peer.sqlite3"
    env = {**os.environ, "PEER_DB": str(db)}
    started = time.perf_counter()
    app = str(APP_DIR / "app.py")
    subprocess.run([str(VENV_PY), app, "seed", str(args.targets), EMAIL], env=env, check=True)
    log(f"seeded {args.targets} users in {time.perf_counter() - started:.1f} s")

    log_path = tmp / "uvicorn.log"
    server, port = _serve(env, log_path)

    spec = {
        "host": "127.0.0.1",
        "port": port,
        "path": PATH,
        "conns": args.conns,
        "warmup": args.warmup,
        "duration": args.duration,
        "server_pid": server.pid,
        "targets": args.targets,
        "email": EMAIL,
    }
    log(f"load: {args.conns} connections, {args.warmup} s warm-up, {args.duration} s measured")
    timeout = args.warmup + args.duration + 120
    run = json.loads(
        run_module("scripts.peer.http_load", json.dumps(spec), what="load", timeout=timeout)
    )
    PROCS.stop(server)
    loop_line = [line for line in log_path.read_text().splitlines() if "peer: event loop" in line]
    log(
        f"server {run['server_cpu_s']:.2f} s CPU, generator {run['gen_cpu_s']:.2f} s, machine "
        f"busy {run['machine_busy_s']:.2f} s, steal {run['steal_s']:.2f} s; errors "
        f"{run['error_kinds']}; {loop_line[-1].split('peer: ')[-1] if loop_line else 'loop ?'}"
    )
    if run["errors"]:  # the server's own account of them (its lines other than access log)
        problems = [line for line in log_path.read_text().splitlines() if ' - "' not in line]
        log("uvicorn log, last lines:\n" + "\n".join(problems[-12:]))
    with sqlite3.connect(db) as conn:
        (outbox_rows,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    n = run["n"]
    return {
        "rps": round(run["rps"], 1),
        "p50_ms": round(run["p50_ms"], 1),
        "p99_ms": round(run["p99_ms"], 1),
        "p999_ms": round(run["p999_ms"], 1),
        "n": n,
        "errors": run["errors"],
        "server_cpu_us_per_req": round(run["server_cpu_s"] * 1e6 / n) if n else None,
        "outbox_rows": outbox_rows,
        "versions": versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--targets", type=int, default=5000)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, stop_everything():
        ensure_venv()
        result = bench(args, Path(tmp))
    log(f"done in {time.perf_counter() - started:.1f} s")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
