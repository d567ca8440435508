"""Property-based tests: frames of every shape, to the decoder and to a live server. Each gets
exactly one answer with the right code, and the connection keeps serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from oms_auth.app import App
from protocol.errors import ErrorCode
from protocol.frame import MAX_SEQUENCE, Frame, FrameError, decode

from .helpers import STORES, drop_pg_schema, is_postgres, new_pg_schema, settings_for

FUNCTIONS = [
    "Ping",
    "AuthenticateUser",
    "ResetPassword",
    "ResetPassword2",
    "LogOut",
    "GetUserIdForPasswordSet",
    "GetRequirementsForPasswordSet",
    "UnlockUser",
    "Authenticate2FA",
    "WebAuthenticateUser",
    "CreateRecoveryCodes",
    "GetRecoveryCodesLeft",
    "ResetUser2FA",
    "NoSuchThing",
    "",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payload_keys = st.sampled_from(
    [
        "UserName",
        "Password",
        "PendingCode",
        "UserId",
        "Code",
        "SessionToken",
        "SecurityQuestionAnswer",
        "x",
    ]
)
payloads = st.dictionaries(payload_keys, json_values, max_size=5)
o_values = st.one_of(
    payloads.map(lambda d: orjson.dumps(d).decode()),
    payloads,
    json_values,
    st.text(max_size=40),
)
names = st.one_of(st.sampled_from(FUNCTIONS), st.text(max_size=40), json_values)
seqs = st.one_of(st.integers(min_value=0, max_value=MAX_SEQUENCE), json_values)
types = st.one_of(st.integers(min_value=0, max_value=5), json_values)


@st.composite
def frames(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {}
    for key, strategy in (("m", types), ("i", seqs), ("n", names), ("o", o_values)):
        if draw(st.integers(0, 9)) > 0:  # each key is sometimes missing
            doc[key] = draw(strategy)
    text = msgspec.json.encode(doc).decode()
    mutation = draw(st.integers(0, 6))
    if mutation == 0 and text:  # cut short
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif mutation == 1:  # a duplicate key
        text = text.replace("{", '{"m":0,', 1)
    elif mutation == 2:  # deep nesting
        depth = draw(st.integers(1, 3000))
        text = text.replace("{", '{"deep":' + "[" * depth + "]" * depth + ",", 1)
    elif mutation == 3:  # a lone surrogate escape
        text = text.replace('"n":"', '"n":"\\udc80', 1)
    return text


@settings(max_examples=600, deadline=None)
@given(frames() | st.text(max_size=200) | st.binary(max_size=50))
def test_the_decoder_never_raises_and_answers_with_100_or_106(data: str | bytes) -> None:
    result = decode(data)
    if isinstance(result, FrameError):
        assert result.code in (ErrorCode.INVALID_REQUEST, ErrorCode.NOT_SUPPORTED)
        assert result.detail and 0 <= result.i <= MAX_SEQUENCE and isinstance(result.n, str)
    else:
        assert isinstance(result, Frame) and 0 <= result.m <= 5 and 0 <= result.i <= MAX_SEQUENCE


class LiveServer:
    """oms-auth in a thread of its own, for the synchronous client hypothesis drives."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = App(
            settings_for(
                tmp,
                db=db,
                max_requests_per_second=1e6,
                reset_requests_per_source=10**6,
                invalid_codes_per_source=10**6,
                login_failures_per_source=10**6,
            ),
            login_delay=0,
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module", params=STORES)
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    db = str(tmp / "oms-auth.sqlite3") if request.param == "sqlite" else new_pg_schema()
    server = LiveServer(tmp, db)
    try:
        yield server
    finally:
        server.stop()
        if is_postgres(db):
            drop_pg_schema(db)


@pytest.fixture(scope="module")
def ws(live: LiveServer) -> Iterator[ClientConnection]:
    with connect(live.app.url, max_size=None) as conn:
        yield conn


def expected(data: str | bytes) -> tuple[int, int | None]:
    """(m, errorcode) the frame must get, from the sans-I/O decoder; None: any function
    outcome."""
    result = decode(data)
    if isinstance(result, FrameError):
        return 5, int(result.code)
    if result.n.lower() not in {f.lower() for f in FUNCTIONS if f not in ("NoSuchThing", "")}:
        return 5, 104
    if result.m != 0:
        return 5, 106
    return -1, None  # m=1 (an outcome), or m=5 100 when o is not an object


def _probe(ws: ClientConnection, i: int) -> None:
    ws.send(f'{{"m":0,"i":{i},"n":"Ping","o":"{{}}"}}')
    answer = orjson.loads(ws.recv(timeout=10))
    # Anything but our Ping's answer here would be a second answer to the fuzzed frame.
    assert (answer["m"], answer["i"], answer["o"]) == (1, i, '{"msg":"PONG"}')


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames() | st.binary(max_size=30))
def test_the_live_server_answers_every_frame_exactly_once(
    ws: ClientConnection, data: str | bytes
) -> None:
    ws.send(data)
    answer = orjson.loads(ws.recv(timeout=10))
    m, code = expected(data)
    o = orjson.loads(answer["o"])
    if m == 5:
        assert (answer["m"], o["errorcode"]) == (5, code), (data, answer)
    else:
        assert answer["m"] == 1 or (answer["m"] == 5 and o["errorcode"] == 100), (data, answer)
        assert not (isinstance(o, dict) and o.get("errorcode") == 102), (data, answer)
    frame = decode(data)
    if isinstance(frame, Frame):
        assert (answer["i"], answer["n"]) == (frame.i, frame.n) or "\\ud" in answer["n"]
    _probe(ws, 7_777_777)


def test_giant_function_names_and_empty_frames_are_answered(ws: ClientConnection) -> None:
    for data in ("", " ", "{}", '{"m":0,"i":1,"n":"' + "x" * 60_000 + '"}'):
        ws.send(data)
        answer = orjson.loads(ws.recv(timeout=10))
        assert answer["m"] == 5 and len(answer["o"]) < 1000
        _probe(ws, 5)
