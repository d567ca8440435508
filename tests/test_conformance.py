"""The conformance kit: it passes against oms-auth, and it catches a server that departs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
from websockets.asyncio.server import ServerConnection, serve

from oms_auth.app import App
from oms_auth.conformance import CASES, Options, run_suite
from oms_auth.conformance.mask import mask

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


async def test_the_kit_repeats_against_one_server_making_its_own_target(
    app: App, tmp_path: Path
) -> None:
    await cast(app)
    for run in range(3):  # past the server's 3 reset requests per user and hour
        options = Options(
            url=app.url,
            operator=("op", PASSWORD),
            trader=("trader", PASSWORD),
            maildir=tmp_path / "mail",
        )
        results = await run_suite(options)
        failed = [(r.case, r.reason) for r in results if r.verdict != "pass"]
        assert failed == [], (run, failed)
        assert options.own_target is not None and options.own_target.startswith("conformance-")


async def test_cases_needing_credentials_or_mail_are_skipped_with_the_reason(app: App) -> None:
    results = {r.case: r for r in await run_suite(Options(url=app.url))}
    assert results["reset-operator"].verdict == "skip"
    assert results["reset-operator"].reason == "needs --operator USER:PASS"
    assert results["reset-link"].reason == "needs --mail maildir:PATH"
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


async def test_an_event_with_i_0_is_not_taken_for_the_answer_to_request_0() -> None:
    event = '{"m":3,"i":0,"n":"LogoutEvent","o":"{\\"Reason\\":\\"LoggedOutElsewhere\\"}"}'

    async def pushes_an_event_first(ws: ServerConnection) -> None:
        async for data in ws:
            frame = orjson.loads(data)
            await ws.send(event)
            answer = {"m": 1, "i": frame["i"], "n": frame["n"], "o": '{"msg":"PONG"}'}
            await ws.send(orjson.dumps(answer).decode())

    async with serve(pushes_an_event_first, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        [result] = await run_suite(Options(url=f"ws://127.0.0.1:{port}/", timeout=2), ["ping"])
    assert (result.verdict, result.reason) == ("pass", "")
    assert f"< {event}" in result.evidence  # kept as evidence, passed over as an answer


def test_the_kit_stands_on_protocol_alone() -> None:
    code = (
        "import json, sys, oms_auth.conformance\n"
        "print(json.dumps([m for m in sys.modules if m.startswith('oms_auth.')]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert loaded and all(m.startswith("oms_auth.conformance") for m in loaded), loaded


def test_the_evidence_masks_passwords_codes_and_tokens_however_they_are_quoted() -> None:
    password = 'Qx"zz\\et-Pass1'
    code = "48abe435-bce3-4aa2-8805-054087e913d1"
    payload = {"UserName": "op", "Password": password, "PendingCode": code, "Code": 123456}
    as_string = orjson.dumps({"m": 0, "i": 2, "n": "X", "o": orjson.dumps(payload).decode()})
    as_object = orjson.dumps({"m": 0, "i": 2, "n": "X", "o": payload})
    link = f"http://h/reset?UserId=3&PendingCode={code}"
    token = "Zmg2jWQ8z4FC" * 4
    for text in (as_string.decode(), as_object.decode(), link, f"token {token} here"):
        masked = mask(text)
        for secret in ("Qx", "zz", "Pass1", code, "123456", token):
            assert secret not in masked, (text, masked)
    assert "op" in mask(as_string.decode())  # what is not secret stays readable
    assert mask("given Sekrit-9 here", ["Sekrit-9"]) == "given [secret] here"
    codes = orjson.dumps({"o": {"RecoveryCodes": ["abcd-efgh-ijk2", "zzzz-2345-mnop"]}}).decode()
    assert "abcd" not in mask(codes) and "2345" not in mask(codes)
