"""The conformance kit: it passes against oms-auth, and it catches a server that departs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from oms_auth.app import App
from oms_auth.conformance import Options, run_suite
from oms_auth.conformance.kit import CASES

from .bad_server import start_bad_server
from .helpers import FAST, PASSWORD, make_user


async def cast(app: App) -> None:
    await make_user(app.deps, "op", permissions=["Operator"], accounts=[1])
    await make_user(app.deps, "trader", permissions=["Trading"], accounts=[10])
    await make_user(app.deps, "target", accounts=[10], question="Pet?", answer="Rex")


def options_for(app: App, tmp_path: Path) -> Options:
    return Options(
        url=app.url,
        operator=("op", PASSWORD),
        trader=("trader", PASSWORD),
        target="target",
        maildir=tmp_path / "mail",
    )


async def test_the_kit_passes_every_case_against_oms_auth(app: App, tmp_path: Path) -> None:
    await cast(app)
    results = await run_suite(options_for(app, tmp_path))
    assert len(results) == len(CASES) >= 30
    failed = [(r.case, r.reason, r.evidence) for r in results if r.verdict != "pass"]
    assert failed == []


async def test_cases_needing_credentials_or_mail_are_skipped_with_the_reason(app: App) -> None:
    results = {r.case: r for r in await run_suite(Options(url=app.url))}
    assert results["reset-operator"].verdict == "skip"
    assert results["reset-operator"].reason == "needs --operator USER:PASS"
    assert results["reset-link"].reason == "needs --mail maildir:PATH and --target USERNAME"
    assert results["ping"].verdict == "pass"
    assert not [r for r in results.values() if r.verdict == "fail"]


async def test_the_kit_catches_a_server_that_departs_from_the_contract() -> None:
    server = await start_bad_server()
    port = server.sockets[0].getsockname()[1]
    try:
        results = {
            r.case: r for r in await run_suite(Options(url=f"ws://127.0.0.1:{port}/", timeout=2))
        }
    finally:
        server.close()
        await server.wait_closed()
    assert results["ping"].verdict == "fail"
    assert "echoes i=1, sent 0" in results["ping"].reason
    assert results["m1-business-error"].verdict == "fail"
    assert results["m1-business-error"].reason == "expected m=1, got m=5"
    assert results["m5-unknown-function"].verdict == "fail"
    assert results["m5-unknown-function"].reason == "expected m=5, got m=1"
    # The evidence is the frames themselves.
    assert any(line.startswith("> ") for line in results["ping"].evidence)
    assert any(line.startswith("< ") for line in results["ping"].evidence)


async def test_the_command_reports_a_table_json_and_junit_with_its_exit_status(
    app: App, tmp_path: Path
) -> None:
    await cast(app)
    junit = tmp_path / "report.xml"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "oms_auth.cli", "conformance", *args],
            env={**os.environ, **FAST},
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = await asyncio.to_thread(
        run,
        app.url,
        "--operator",
        f"op:{PASSWORD}",
        "--trader",
        f"trader:{PASSWORD}",
        "--target",
        "target",
        "--mail",
        f"maildir:{tmp_path / 'mail'}",
        "--junit",
        str(junit),
    )
    assert good.returncode == 0, good.stdout
    assert f"{len(CASES)} passed, 0 failed, 0 skipped" in good.stdout
    assert b'failures="0"' in junit.read_bytes()
    assert PASSWORD not in good.stdout and PASSWORD not in junit.read_text()

    server = await start_bad_server()
    port = server.sockets[0].getsockname()[1]
    try:
        bad = await asyncio.to_thread(run, f"ws://127.0.0.1:{port}/", "--json", "--timeout", "2")
    finally:
        server.close()
        await server.wait_closed()
    assert bad.returncode == 1
    verdicts = {r["case"]: r["verdict"] for r in json.loads(bad.stdout)}
    assert verdicts["ping"] == "fail" and verdicts["reset-operator"] == "skip"
