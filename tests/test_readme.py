"""Every example in README.md runs as written: each ```python block as a script, and each shell
session (its ``$ `` lines) as one bash script, in a fresh folder holding the demo store, with the
venv's commands on PATH, as a reader who ran the README's first command and activated the venv.

Only the address is adapted: ``8765``/``8766`` become free ports (and a PostgreSQL schema a
fresh one), so the examples run beside anything else on this machine. Where an example needs the
service running and does not start it itself, it is started first, as the README's first command
leaves it. A block preceded by ``<!-- readme: not run, REASON -->`` is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .helpers import FAST, PG_URL

README = Path(__file__).resolve().parent.parent / "README.md"
VENV_BIN = Path(sys.executable).parent
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!-- readme: not run, (.+?) -->\s*$")

pytestmark = pytest.mark.slow


def _blocks() -> list[tuple[int, str, str, str | None]]:
    text = README.read_text()
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        out.append((line, m[1], m[2], skip[1] if skip else None))
    return out


def shell_session(body: str) -> list[tuple[str, list[str]]]:
    """A shell session's commands (``$ `` lines with their continuation lines and here-
    documents), each with the output lines the README shows after it."""
    session: list[tuple[str, list[str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            if session:
                session[-1][1].append(line)
            continue
        command = [line[2:]]
        while command[-1].endswith("\\") and i < len(lines):
            command.append(lines[i])
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", "\n".join(command))
        if heredoc:
            while i < len(lines):
                command.append(lines[i])
                i += 1
                if lines[i - 1].strip() == heredoc[1]:
                    break
        session.append(("\n".join(command), []))
    return session


def normalized(line: str) -> str:
    """A line with what differs from run to run (times, codes, tokens, ids, ports) blanked."""
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", line)
    line = re.sub(r"\d+", "#", line)
    return line.strip()


def check_output(report: str, session: list[tuple[str, list[str]]], stdout: str) -> None:
    """Each output line the README shows (but an elided ``...`` one) is printed by its command."""
    printed: dict[int, list[str]] = {}
    step = -1
    for line in stdout.splitlines():
        marker = re.fullmatch(r"@@step (\d+)", line)
        if marker:
            step = int(marker[1])
            continue
        printed.setdefault(step, []).append(normalized(line))
    for n, (command, shown) in enumerate(session):
        # A service in the background may print after the next command has begun.
        later = [x for k, lines in printed.items() if k >= n for x in lines]
        for line in shown:
            if "..." in line or not line.strip():
                continue
            assert normalized(line) in later, (
                f"{report}\n--- `{command.splitlines()[0]}` did not print: {line}"
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


CASES = [
    pytest.param(line, lang, body, id=f"README.md:{line}", marks=pytest.mark.skip(reason=skip))
    if skip
    else pytest.param(line, lang, body, id=f"README.md:{line}")
    for line, lang, body, skip in _blocks()
    if lang == "python" or any(x.startswith("$ ") for x in body.splitlines())
]


@pytest.mark.parametrize(("line", "lang", "body"), CASES)
def test_the_readme_example_runs_as_written(
    tmp_path: Path, line: int, lang: str, body: str
) -> None:
    ports = {"8765": str(_free_port()), "8766": str(_free_port())}
    schema = "readme_" + uuid.uuid4().hex[:8]

    def adapted(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(old, new)
        return text.replace("schema=exchange_a", f"schema={schema}")

    env = {
        **os.environ,
        **FAST,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "OMS_AUTH_PORT": ports["8765"],  # where `oms-auth serve` listens when not told
        "PYTHONPATH": str(README.parent),
    }
    env.pop("OMS_AUTH_DB", None)
    subprocess.run(["oms-auth", "demo"], cwd=tmp_path, env=env, check=True, capture_output=True)
    starts_its_own = "oms-auth serve" in body
    server = None
    if not starts_its_own:
        server = subprocess.Popen(
            ["oms-auth", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(int(ports["8765"]))
    try:
        if lang == "python":
            script = tmp_path / "example.py"
            script.write_text(adapted(body))
            done = subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        else:
            steps = []
            session = shell_session(adapted(body))
            for n, (command, _) in enumerate(session):
                steps.append(f"printf '\\n@@step {n}\\n'")
                # A service left running (in the background, or as a session's last word) is
                # started in the background and waited for; anything else runs as it is.
                served = re.fullmatch(
                    r"(?:\w+=(?:'[^']*'|\"[^\"]*\"|\S+)\s+)*oms-auth serve[^;|]*", command.strip()
                )
                if served:
                    port = re.search(r"--port (\d+)", command)
                    wait = port[1] if port else ports["8765"]
                    background = command.rstrip().rstrip("&").rstrip()
                    # Its log (stderr) aside: in a terminal it would interleave with the
                    # next commands' output, not replace it.
                    steps.append(f"{background} 2>>serve.log &\nwait_for {wait} || fail 'serve'")
                else:
                    # As typed at a prompt: a session goes on after `a; b`; `b`'s status counts.
                    quoted = command.splitlines()[0].replace("'", "")[:80]
                    steps.append(f"{{\n{command}\n}} || fail '{quoted}'")
            script = "\n".join(
                [
                    "set -uo pipefail",
                    'fail() { echo "README command failed: $1" >&2; exit 1; }',
                    "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
                    "wait_for() { for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$1) "
                    "2>/dev/null && return 0; sleep 0.05; done; return 1; }",
                    *steps,
                ]
            )
            # What a terminal shows: stdout and stderr, in order.
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=180,
            )
        report = f"README.md:{line}\n--- output\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, report
        assert "Traceback" not in done.stdout + (done.stderr or ""), report
        if lang != "python":
            check_output(report, session, done.stdout)
        if lang == "python":
            # What the example says it prints (`print(...)  # True 2`) is what it prints.
            promised = re.findall(r"print\(.*\)\s+# (.+)$", body, re.M)
            assert done.stdout.splitlines()[: len(promised)] == promised, report
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        if "postgresql://" in body:
            subprocess.run(
                ["psql", PG_URL, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                capture_output=True,
            )
