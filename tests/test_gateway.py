"""docs/protocol.md, "Frames", through a real socket: routing, m=5 vs m=1, echo, concurrency, size
limit."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from oms_auth.app import App
from protocol.client import Client
from protocol.frame import MAX_SEQUENCE
from protocol.messages import Empty, PingReply

PONG = {"msg": "PONG"}


async def test_ping_answers_pong_as_an_m1_reply_echoing_i_and_n(client: Client) -> None:
    answer = await client.raw('{"m":0,"i":0,"n":"Ping","o":"{}"}')
    assert (answer.m, answer.i, answer.n, answer.o) == (1, 0, "Ping", PONG)


@pytest.mark.parametrize("i", [0, 2, MAX_SEQUENCE - 1, MAX_SEQUENCE])
async def test_i_is_echoed_across_its_whole_range(client: Client, i: int) -> None:
    answer = await client.raw(orjson.dumps({"m": 0, "i": i, "n": "Ping", "o": "{}"}).decode())
    assert (answer.m, answer.i) == (1, i)


async def test_function_names_match_case_insensitively_and_are_echoed_as_sent(
    client: Client,
) -> None:
    answer = await client.call("pInG")
    assert (answer.m, answer.n, answer.o) == (1, "pInG", PONG)


async def test_o_may_be_an_object_or_missing(client: Client) -> None:
    assert (await client.raw('{"m":0,"i":1,"n":"Ping","o":{}}')).o == PONG
    assert (await client.raw('{"m":0,"i":1,"n":"Ping"}')).o == PONG


@pytest.mark.parametrize(
    ("data", "code", "i", "n"),
    [
        ("}{", 100, 0, ""),
        ("[]", 100, 0, ""),
        ('{"m":0,"n":"Ping"}', 100, 0, "Ping"),
        ('{"m":0,"i":"x","n":"Ping"}', 100, 0, "Ping"),
        ('{"m":0,"i":3,"n":5}', 100, 3, ""),
        ('{"m":"x","i":3,"n":"Ping"}', 100, 3, "Ping"),
        ('{"m":0,"i":3,"n":"Ping","o":"not json"}', 100, 3, "Ping"),
        ('{"m":0,"i":3,"n":"Ping","o":"[1]"}', 100, 3, "Ping"),
        ('{"m":0,"i":3,"n":"Ping","o":7}', 100, 3, "Ping"),
        ('{"m":0,"i":3,"n":"NoSuchFunction"}', 104, 3, "NoSuchFunction"),
        ('{"m":9,"i":3,"n":"Ping"}', 106, 3, "Ping"),
        ('{"m":2,"i":3,"n":"Ping"}', 106, 3, "Ping"),
        ('{"m":1,"i":3,"n":"LogOut"}', 106, 3, "LogOut"),
        (b"\x00\x01", 100, 0, ""),
        ("", 100, 0, ""),
    ],
)
async def test_frames_that_cannot_be_routed_get_m5_and_the_connection_stays_open(
    client: Client, data: str | bytes, code: int, i: int, n: str
) -> None:
    answer = await client.raw(data)
    assert (answer.m, answer.i, answer.n) == (5, i, n)
    assert answer.o["errorcode"] == code and answer.o["result"] is False
    assert answer.o["detail"]
    assert (await client.call("Ping")).o == PONG


async def test_a_payload_key_of_the_wrong_type_is_an_m1_reply_naming_the_key(
    client: Client,
) -> None:
    answer = await client.call("AuthenticateUser", {"UserName": ["x"], "Password": "p"})
    assert answer.m == 1
    assert answer.o == {
        "result": False,
        "errormsg": "Invalid Response",
        "errorcode": 100,
        "detail": "UserName must be a string, not an array",
    }


async def test_every_request_gets_exactly_one_answer(client: Client) -> None:
    frames = [orjson.dumps({"m": 0, "i": i, "n": "Ping", "o": "{}"}).decode() for i in range(50)]
    frames += ["nonsense"] * 10
    for frame in frames:
        await client.send_raw(frame)
    answers = [await client.next_unmatched() for _ in frames]
    assert sorted(a.i for a in answers if a.m == 1) == list(range(50))
    assert sum(a.m == 5 for a in answers) == 10
    with pytest.raises(asyncio.TimeoutError):
        await client.next_unmatched(timeout=0.3)


async def test_a_slow_request_does_not_hold_back_ping_on_the_same_connection(
    app: App, client: Client
) -> None:
    release = asyncio.Event()

    async def slow(conn: object, req: Empty) -> PingReply:
        await release.wait()
        return PingReply(msg="SLOW")

    app.functions.add("Slow", Empty, slow)
    slow_call = asyncio.create_task(client.call("Slow"))
    await asyncio.sleep(0.05)
    assert (await client.call("Ping", timeout=2)).o == PONG
    assert not slow_call.done()
    release.set()
    assert (await slow_call).o == {"msg": "SLOW"}


async def test_an_unexpected_exception_is_code_102_with_a_reference_and_no_trace(
    app: App, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(conn: object, req: Empty) -> PingReply:
        raise RuntimeError("secret internals")

    app.functions.add("Broken", Empty, broken)
    answer = await client.call("Broken")
    assert answer.m == 1 and answer.o["errorcode"] == 102
    assert answer.o["errormsg"] == "Server Error"
    assert "secret internals" not in answer.o["detail"]
    reference = answer.o["detail"].rsplit(" ", 1)[1]
    assert any(reference in r.getMessage() for r in caplog.records)
    assert (await client.call("Ping")).o == PONG


async def test_a_frame_over_64_kib_closes_the_connection_with_1009(client: Client) -> None:
    big = orjson.dumps({"m": 0, "i": 1, "n": "Ping", "o": {"pad": "x" * 70_000}}).decode()
    await client.send_raw(big)
    with pytest.raises(ConnectionClosed) as closed:
        await client.next_unmatched()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_frame_just_under_the_limit_is_served(client: Client) -> None:
    body = orjson.dumps({"m": 0, "i": 1, "n": "Ping", "o": {"pad": ""}}).decode()
    pad = 65536 - len(body)
    answer = await client.raw(body.replace('"pad":""', '"pad":"' + "x" * pad + '"'))
    assert answer.o == PONG


async def test_the_gateway_answers_on_all_three_paths(app: App) -> None:
    for path in ("/WSGateway/", "/WSGateway", "/"):
        async with await Client.connect(f"ws://127.0.0.1:{app.port}{path}") as c:
            assert (await c.call("Ping")).o == PONG
