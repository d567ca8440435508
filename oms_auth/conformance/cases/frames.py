"""Frames: the envelope, its echoes, the m=5 refusals, size and concurrency
(docs/protocol.md, "Frames" and "The standard response and its codes")."""

from __future__ import annotations

import orjson

from ..kit import CaseFunction, Options, expect
from ..probe import Probe
from ..registry import CASES, case
from .checks import MAX_I, check_refusal, still_serving

__all__: list[str] = []


@case("ping", "Ping answers m=1 {msg: PONG}, echoing i and n, o as a string")
async def _ping(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("Ping", i=0)
        expect(answer["m"] == 1, f"expected m=1, got m={answer['m']}")
        expect(isinstance(answer["o_raw"], str), "o must be a JSON string")
        expect(answer["o"] == {"msg": "PONG"}, f"expected {{'msg': 'PONG'}}, got {answer['o']!r}")


@case("i-range", "i from 0 to 2^63-1 is echoed exactly")
async def _i_range(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        for i in (0, 1, 2**53 + 1, MAX_I):
            answer = await p.call("Ping", i=i)
            expect(answer["m"] == 1, f"i={i}: expected m=1")


@case("name-case", "function names match case-insensitively and n is echoed as sent")
async def _name_case(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("pInG")
        expect(answer["m"] == 1 and answer["o"] == {"msg": "PONG"}, "pInG must be Ping")


@case("o-forms", "o may be an object or missing; answers carry o as a string")
async def _o_forms(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send({"m": 0, "i": 2, "n": "Ping", "o": {}})
        a = await p.recv()
        await p.send({"m": 0, "i": 4, "n": "Ping"})
        b = await p.recv()
    for answer in (a, b):
        expect(answer.get("m") == 1 and answer.get("o") == {"msg": "PONG"}, "expected PONG")
        expect(isinstance(answer.get("o_raw"), str), "o must be a JSON string")


UNROUTABLE = [
    ("not-json", "text that is not JSON", "}{", 100, 0, ""),
    ("not-object", "a JSON array", "[1, 2]", 100, 0, ""),
    ("missing-i", "a frame without i", '{"m":0,"n":"Ping","o":"{}"}', 100, 0, "Ping"),
    ("i-mistyped", "i as a string", '{"m":0,"i":"7","n":"Ping","o":"{}"}', 100, 0, "Ping"),
    ("n-mistyped", "n as a number", '{"m":0,"i":7,"n":7,"o":"{}"}', 100, 7, ""),
    ("o-not-json", "o that is not JSON", '{"m":0,"i":7,"n":"Ping","o":"{x"}', 100, 7, "Ping"),
    ("o-not-object", "o holding an array", '{"m":0,"i":7,"n":"Ping","o":"[1]"}', 100, 7, "Ping"),
    (
        "unknown-function",
        "an unknown function",
        '{"m":0,"i":7,"n":"NoSuchFunction","o":"{}"}',
        104,
        7,
        "NoSuchFunction",
    ),
    ("m-out-of-range", "m=9", '{"m":9,"i":7,"n":"Ping","o":"{}"}', 106, 7, "Ping"),
    (
        "m-unsupported",
        "m=2 (subscribe) on ResetPassword",
        '{"m":2,"i":7,"n":"ResetPassword","o":"{}"}',
        106,
        7,
        "ResetPassword",
    ),
]


def _unroutable(data: str, code: int, i: int, n: str) -> CaseFunction:
    async def run(options: Options, evidence: list[str]) -> None:
        async with Probe(options, evidence) as p:
            await p.send(data)
            answer = await p.recv()
            check_refusal(answer, 5, code)
            expect(
                (answer.get("i"), answer.get("n")) == (i, n),
                f"expected i={i}, n={n!r}; got i={answer.get('i')!r}, n={answer.get('n')!r}",
            )
            await still_serving(p)

    return run


for _name, _what, _data, _code, _i, _n in UNROUTABLE:
    CASES.add(
        f"m5-{_name}",
        f"{_what}: m=5, code {_code}, connection stays open",
        _unroutable(_data, _code, _i, _n),
    )


@case("m5-binary", "a binary frame: m=5, code 100, connection stays open")
async def _binary(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send(b'{"m":0,"i":1,"n":"Ping","o":"{}"}')
        check_refusal(await p.recv(), 5, 100)
        await still_serving(p)


@case("m1-business-error", "a function's refusal is an m=1 reply (ResetPassword, no UserName)")
async def _business(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        check_refusal(
            await p.call("ResetPassword", {}), 1, 100, "Invalid value provided for Username"
        )


@case("m1-wrong-key-type", "a payload key of the wrong type: m=1, code 100 naming the key")
async def _wrong_key(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        answer = await p.call("ResetPassword", {"UserName": 12345})
        check_refusal(answer, 1, 100)
        expect("UserName" in answer["o"]["detail"], "the detail must name UserName")


@case("concurrent-answers", "twenty requests sent at once get twenty answers, matched by i")
async def _concurrent(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        for i in range(100, 140, 2):
            await p.send({"m": 0, "i": i, "n": "Ping", "o": "{}"})
        seen = []
        for _ in range(20):
            seen.append(int((await p.recv()).get("i") or -1))
        seen.sort()
        expect(seen == list(range(100, 140, 2)), f"answers for i {seen}")


@case("frame-size-limit", "a frame over 64 KiB closes the connection with 1009")
async def _size(options: Options, evidence: list[str]) -> None:
    async with Probe(options, evidence) as p:
        await p.send(
            {"m": 0, "i": 1, "n": "Ping", "o": orjson.dumps({"pad": "x" * 70_000}).decode()}
        )
        code = await p.close_code()
        expect(code == 1009, f"expected close code 1009, got {code}")
