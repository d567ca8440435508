"""The benchmark scripts run end to end with tiny numbers. Nothing about speed is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = (
    "| Ping |",
    "| AuthenticateUser |",
    "| ResetPassword (Operator) |",
    "| ResetPassword2 |",
    "| Ping during ResetPassword2 |",
    "idle authenticated connections |",
    "| start to listening |",
    "| reconnect: resumes at once | 20 |",
    "| reconnect: logins of one user at once | 8 |",
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_bench_quick_run_prints_the_table_with_every_case() -> None:
    done = _run("scripts.bench", "--quick")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| loop | case | conns | req/s | p50 ms | p99 ms | p99.9 ms |" in done.stdout
    assert "Machine:" in done.stdout
    for case in CASES:
        assert case in done.stdout, f"{case} missing from:\n{done.stdout}"


@pytest.mark.slow
def test_codec_benchmark_runs() -> None:
    done = _run("scripts.bench_codec", "--quick")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| op | frame | protocol.frame (msgspec) ns | stdlib json ns |" in done.stdout
    for op in ("| decode | Ping |", "| encode | AuthenticateUser |"):
        assert op in done.stdout


@pytest.mark.slow
def test_import_benchmark_runs_on_both_stores() -> None:
    done = _run("scripts.bench_import", "--quick")
    assert done.returncode == 0, done.stderr[-4000:]
    heading = "| store | users | import s | import CPU s | import rows/s | peak RSS MiB | bare"
    assert heading in done.stdout
    for store in ("| sqlite | 2,000 |", "| postgres | 2,000 |"):
        assert store in done.stdout, done.stdout
    assert done.stderr.count("imported 2000, already there 0, refused 0") == 2, done.stderr


def test_bench_runs_the_request_cases_on_postgresql_on_one_and_two_nodes() -> None:
    from .helpers import PG_URL

    done = _run("scripts.bench", "--quick", "--only", "reset", "--db", PG_URL)
    assert done.returncode == 0, done.stderr[-4000:]
    for case in (
        "| ResetPassword (Operator) |",
        "| ResetPassword (Operator) [PostgreSQL] |",
        "| ResetPassword (Operator) [PostgreSQL, 2 nodes] |",
    ):
        assert case in done.stdout, f"{case} missing from:\n{done.stdout}"
    assert "| db CPU us/req |" in done.stdout
    # The run's own database is gone again.
    assert "dropped database oms_bench_" in done.stderr
