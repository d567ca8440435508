"""Every example in README.md and docs/*.md runs as written, and prints what it shows.

A reader ran the README's first command (the demo store, and ``oms-auth serve`` on 8765 in the
checkout) and activated the venv. Each example runs like that: in a fresh folder holding the
demo store, with that service running, the venv's commands on PATH. Three kinds of block run:

- ```` ```python ````: run as a script; what it says it prints (``print(...)  # True 2``) is
  all it prints, in order; or, when a block marked ``<!-- readme: output -->`` follows it,
  that block is all it prints.
- a shell session (its ``$ `` lines, with continuation lines and here-documents): one bash
  script; each command prints exactly the lines shown under it. A shown line ``...`` stands for
  any number of lines; ``...`` inside a line for any text, and ``abc123...`` for the rest of a
  token (a secret, a time) that differs from run to run. A shell block marked
  ``<!-- readme: continued -->`` goes on with the session of the one before it.
- a frame session (``>`` sent, ``<`` received): one WebSocket connection to the running
  service; each ``<`` line is the next frame received. A token shown elided in an answer
  (``"SessionToken":"XH3tAwZm..."``) is sent as its real value where a later ``>`` shows it.

What differs from run to run and is not elided is blanked on both sides before comparing: GUIDs
and times. Only the addresses are adapted: 8765 to 8769 become free ports (and a PostgreSQL
schema a fresh one), so the examples run beside anything else on this machine, and the service
the examples run next to holds 8765 as the reader's does: an example that starts a service of
its own must pick another port and store. A block preceded by
``<!-- readme: not run, REASON -->`` is skipped with that reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from .helpers import FAST, PG_URL

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
PORTS = ("8765", "8766", "8767", "8768", "8769")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!-- readme: not run, (.+?) -->\s*$")
_CONTINUED = re.compile(r"<!-- readme: continued -->\s*$")
_OUTPUT = re.compile(r"<!-- readme: output -->\s*$")

pytestmark = pytest.mark.slow


def blocks(page: Path) -> list[tuple[int, str, str, str | None, str | None]]:
    """``(line, kind, body, skip reason, output)`` of every block of ``page`` that runs. A shell
    block marked ``<!-- readme: continued -->`` goes on with the session of the shell block
    before it (its variables, its folder): they run as one. A block marked ``<!-- readme:
    output -->`` is all the python block before it prints."""
    text = page.read_text()
    out: list[tuple[int, str, str, str | None, str | None]] = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        kind = kind_of(m[1], m[2])
        if _OUTPUT.search(before):
            assert out and out[-1][1] == "python", f"{page.name}:{line}: no example before"
            out[-1] = (*out[-1][:4], m[2])
            continue
        if kind is None:
            continue
        if _CONTINUED.search(before):
            shell = [k for k, block in enumerate(out) if block[1] == "shell"]
            assert kind == "shell" and shell, f"{page.name}:{line}: nothing to continue"
            first, _, body, reason, _ = out[shell[-1]]
            out[shell[-1]] = (first, kind, body + m[2], reason, None)
            continue
        out.append((line, kind, m[2], skip[1] if skip else None, None))
    return out


def kind_of(lang: str, body: str) -> str | None:
    lines = [x for x in body.splitlines() if x.strip()]
    if lang == "python":
        return "python"
    if any(x.startswith("$ ") for x in lines):
        return "shell"
    if lines and lines[0].startswith("> ") and all(x.startswith(("> ", "< ")) for x in lines):
        return "frames"
    return None


def shell_session(body: str) -> list[tuple[str, list[str]]]:
    """A shell session's commands (``$ `` lines with their continuation lines and here-
    documents), each with the output lines shown after it."""
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


# -- comparing what is shown with what is printed ---------------------------------------------

_BLANKED = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d(?:,\d+)?)?(?: UTC)?"), "<time>"),
]
# ``abc123...`` (the rest of a token) or ``...`` (anything).
_ELIDED = re.compile(r"[A-Za-z0-9_\-+/=]+\.\.\.|\.\.\.")


def blanked(line: str) -> str:
    for pattern, mark in _BLANKED:
        line = pattern.sub(mark, line)
    return line.rstrip()


class Shown:
    """One line as the page shows it, as a pattern; ``tokens`` names each elided token's
    group by the text the page shows for it."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.tokens: dict[str, str] = {}
        parts, at = [], 0
        text = blanked(line)
        for m in _ELIDED.finditer(text):
            parts.append(re.escape(text[at : m.start()]))
            if m[0] == "...":
                parts.append(".*?")
            elif m[0] in self.tokens:  # the same token again
                parts.append(f"(?P={self.tokens[m[0]]})")
            else:
                self.tokens[m[0]] = group = f"t{len(self.tokens)}"
                parts.append(f'(?P<{group}>[^"\\\\\\s]*?)')
            at = m.end()
        parts.append(re.escape(text[at:]))
        self.pattern = re.compile("".join(parts) + r"\Z")
        self.any_lines = line.strip() == "..."

    def match(self, printed: str) -> dict[str, str] | None:
        """The elided tokens' real values when ``printed`` is this line, else None."""
        found = self.pattern.match(blanked(printed))
        if found is None:
            return None
        return {shown: found[group] for shown, group in self.tokens.items()}


def lines_match(shown: list[str], printed: list[str]) -> bool:
    """``printed`` is exactly ``shown``, where a ``...`` line stands for any lines."""
    patterns = [Shown(x) for x in shown if x.strip()]
    printed = [x for x in printed if x.strip()]

    def walk(i: int, j: int) -> bool:
        if i == len(patterns):
            return j == len(printed)
        if patterns[i].any_lines:
            return any(walk(i + 1, k) for k in range(j, len(printed) + 1))
        return j < len(printed) and patterns[i].match(printed[j]) is not None and walk(i + 1, j + 1)

    return walk(0, 0)


# A service started in the background prints these when it pleases (before or after the next
# command's output): they must be printed when shown, and may be printed when not.
_BACKGROUND = re.compile(r"^oms-auth (listening on|stopped)")


def check_session(report: str, session: list[tuple[str, list[str]]], stdout: str) -> None:
    printed: dict[int, list[str]] = {}
    background: list[str] = []
    step = -1
    for line in stdout.splitlines():
        marker = re.fullmatch(r"@@step (\d+)", line)
        if marker:
            step = int(marker[1])
        elif _BACKGROUND.match(line):
            background.append(line)
        else:
            printed.setdefault(step, []).append(line)
    assert not [x for x in printed.get(-1, []) if x.strip()], report
    for n, (command, shown) in enumerate(session):
        for line in [x for x in shown if _BACKGROUND.match(x)]:
            assert any(Shown(line).match(x) is not None for x in background), (
                f"{report}\n--- `{command.splitlines()[0]}` did not print: {line}"
            )
        wanted = [x for x in shown if not _BACKGROUND.match(x)]
        got = printed.get(n, [])
        assert lines_match(wanted, got), (
            f"{report}\n--- `{command.splitlines()[0]}` printed:\n"
            + "\n".join(got)
            + "\n--- where the page shows:\n"
            + "\n".join(wanted)
        )


# -- running ----------------------------------------------------------------------------------


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


def _env(folder: Path, ports: dict[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        **FAST,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "OMS_AUTH_PORT": ports["8765"],  # where `oms-auth serve` listens when not told
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(folder),  # `mktemp -d` stays in the test's folder
    }
    for name in ("OMS_AUTH_DB", "OMS_AUTH_SECRET_KEY", "OMS_AUTH_SECRET_KEY_FILE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the README's first command leaves: the demo store and its key (made once,
    copied for each example)."""
    folder = tmp_path_factory.mktemp("demo")
    env = _env(folder, {"8765": "0"})
    subprocess.run(["oms-auth", "demo"], cwd=folder, env=env, check=True, capture_output=True)
    return folder


CASES = [
    pytest.param(
        page,
        line,
        kind,
        body,
        output,
        id=f"{page.relative_to(ROOT)}:{line}",
        marks=[pytest.mark.skip(reason=skip)] if skip else [],
    )
    for page in PAGES
    for line, kind, body, skip, output in blocks(page)
]


def test_every_page_is_found_and_every_block_runs_or_says_why_not() -> None:
    names = {p.name for p in PAGES}
    for page in ("architecture.md", "protocol.md", "rules.md", "operations.md", "performance.md"):
        assert page in names, page
    # A fenced block that looks like an example but is of no kind above would silently not
    # run: every ``$ `` line is in a shell block, every frame line in a frame block.
    for page in PAGES:
        for m in _FENCE.finditer(page.read_text()):
            lines = [x for x in m[2].splitlines() if x.strip()]
            if kind_of(m[1], m[2]) is None:
                assert not any(x.startswith(("> {", "< {")) for x in lines), (page, m[2][:80])


def _anchor(heading: str) -> str:
    """The anchor a heading gets on GitHub: lower case, punctuation gone, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_between_pages_reaches_a_page_and_a_heading() -> None:
    anchors = {}
    for page in PAGES:
        outside = _FENCE.sub("", page.read_text())
        anchors[page.resolve()] = {_anchor(m[1]) for m in re.finditer(r"^#+ (.+)$", outside, re.M)}
    for page in PAGES:
        outside = _FENCE.sub("", page.read_text())
        for target, fragment in re.findall(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)", outside):
            if not target and not fragment:
                continue
            linked = (page.parent / target).resolve() if target else page.resolve()
            assert linked in anchors, f"{page.name}: {target} is not a page"
            if fragment:
                assert fragment in anchors[linked], f"{page.name}: no heading #{fragment}"


@pytest.mark.parametrize(("page", "line", "kind", "body", "output"), CASES)
def test_the_example_runs_as_written(
    tmp_path: Path,
    demo_store: Path,
    page: Path,
    line: int,
    kind: str,
    body: str,
    output: str | None,
) -> None:
    ports = {p: str(_free_port()) for p in PORTS}
    schema = "readme_" + uuid.uuid4().hex[:8]

    def adapted(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(old, new)
        return text.replace("schema=exchange_a", f"schema={schema}")

    def canonical(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(new, old)
        return text

    for item in demo_store.iterdir():
        shutil.copy(item, tmp_path / item.name)
    env = _env(tmp_path, ports)
    # The README's first command left this running, next to every example.
    server = subprocess.Popen(
        ["oms-auth", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    report = f"{page.relative_to(ROOT)}:{line}"
    try:
        _wait_for(int(ports["8765"]))
        if kind == "python":
            _python(report, adapted(body), body, output, tmp_path, env)
        elif kind == "frames":
            url = f"ws://127.0.0.1:{ports['8765']}/WSGateway/"
            asyncio.run(_frames(report, body, url))
        else:
            _shell(report, body, adapted, canonical, ports, tmp_path, env)
    finally:
        server.terminate()
        server.wait(timeout=20)
        if "postgresql://" in body:
            subprocess.run(
                ["psql", PG_URL, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                capture_output=True,
            )


def _python(
    report: str, script: str, body: str, output: str | None, folder: Path, env: dict[str, str]
) -> None:
    path = folder / "example.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report += f"\n--- output\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0 and "Traceback" not in done.stderr, report
    # What the example says it prints (`print(...)  # True 2`, or the block after it) is all
    # it prints.
    promised = re.findall(r"print\(.*\)\s+# (.+)$", body, re.M)
    if output is not None:
        promised = output.splitlines()
    assert lines_match(promised, done.stdout.splitlines()), report


async def _frames(report: str, body: str, url: str) -> None:
    """Send each ``>`` frame; each ``<`` line is the next frame received."""
    tokens: dict[str, str] = {}
    async with connect(url) as ws:
        for line in body.splitlines():
            if line.startswith("> "):
                frame = line[2:]
                for shown, real in tokens.items():
                    frame = frame.replace(shown, real)
                await ws.send(frame)
            elif line.startswith("< "):
                shown = Shown(line[2:])
                got = await asyncio.wait_for(ws.recv(), 30)
                assert isinstance(got, str)
                found = shown.match(got)
                assert found is not None, f"{report}\n--- received:\n{got}\n--- shown:\n{line[2:]}"
                tokens.update({k: v for k, v in found.items() if k not in tokens})


def _shell(
    report: str,
    body: str,
    adapted: object,
    canonical: object,
    ports: dict[str, str],
    folder: Path,
    env: dict[str, str],
) -> None:
    assert callable(adapted) and callable(canonical)
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
            # Its log (stderr) aside: in a terminal it would interleave with the next
            # commands' output, not replace it.
            steps.append(f"{background} 2>>serve.log &\nwait_for {wait} || fail 'serve'")
        else:
            # As typed at a prompt: a session goes on after `a; b`; `b`'s status counts.
            quoted = command.splitlines()[0].replace("'", "")[:80]
            steps.append(f"{{\n{command}\n}} || fail '{quoted}'")
    script = "\n".join(
        [
            "set -uo pipefail",
            'fail() { echo "example command failed: $1" >&2; exit 1; }',
            "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
            "wait_for() { for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$1) "
            "2>/dev/null && return 0; sleep 0.05; done; return 1; }",
            *steps,
            # What services print as they stop comes after the last command's output.
            f"printf '\\n@@step {len(session)}\\n'",
        ]
    )
    # What a terminal shows: stdout and stderr, in order.
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    output = canonical(done.stdout)
    report += f"\n--- output\n{output}"
    assert done.returncode == 0, report
    assert "Traceback" not in output, report
    check_session(report, shell_session(body), output)
