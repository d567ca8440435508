"""docs/protocol.md, "Frames", sans-I/O: every malformed frame shape becomes a typed FrameError."""

from __future__ import annotations

import orjson
import pytest

from protocol.errors import ErrorCode
from protocol.frame import (
    MAX_SEQUENCE,
    Frame,
    FrameError,
    decode,
    encode,
    encode_error,
    encode_reply,
)
from protocol.messages import PingReply


def err(data: str | bytes) -> FrameError:
    result = decode(data)
    assert isinstance(result, FrameError), result
    return result


def test_a_well_formed_request_decodes() -> None:
    assert decode('{"m":0,"i":2,"n":"Ping","o":"{}"}') == Frame(m=0, i=2, n="Ping", o="{}")


def test_o_may_be_an_object_and_defaults_to_empty() -> None:
    assert decode('{"m":0,"i":2,"n":"Ping","o":{"a":1}}') == Frame(0, 2, "Ping", {"a": 1})
    assert decode('{"m":0,"i":2,"n":"Ping"}') == Frame(0, 2, "Ping", "{}")


@pytest.mark.parametrize("i", [0, 1, MAX_SEQUENCE - 1, MAX_SEQUENCE])
def test_every_i_from_zero_to_2_63_minus_1_is_accepted(i: int) -> None:
    frame = decode(orjson.dumps({"m": 0, "i": i, "n": "Ping", "o": "{}"}).decode())
    assert isinstance(frame, Frame) and frame.i == i


@pytest.mark.parametrize(
    ("text", "detail", "i", "n"),
    [
        ("not json", "Frame is not valid JSON", 0, ""),
        ("", "Frame is not valid JSON", 0, ""),
        ("[1, 2]", "Frame must be a JSON object, not an array", 0, ""),
        ('"Ping"', "Frame must be a JSON object, not a string", 0, ""),
        ("null", "Frame must be a JSON object, not null", 0, ""),
        ('{"i":1,"n":"Ping"}', "Frame is missing key m", 1, "Ping"),
        ('{"m":0,"n":"Ping"}', "Frame is missing key i", 0, "Ping"),
        ('{"m":0,"i":1}', "Frame is missing key n", 1, ""),
        ('{"m":"0","i":1,"n":"Ping"}', "Key m must be an integer, not a string", 1, "Ping"),
        ('{"m":true,"i":1,"n":"Ping"}', "Key m must be an integer, not a boolean", 1, "Ping"),
        ('{"m":0,"i":"1","n":"Ping"}', "Key i must be an integer from 0 to 2^63-1", 0, "Ping"),
        ('{"m":0,"i":1.5,"n":"Ping"}', "Key i must be an integer from 0 to 2^63-1", 0, "Ping"),
        ('{"m":0,"i":0.0,"n":"Ping"}', "Key i must be an integer from 0 to 2^63-1", 0, "Ping"),
        ('{"m":0,"i":false,"n":"Ping"}', "Key i must be an integer from 0 to 2^63-1", 0, "Ping"),
        ('{"m":0,"i":-1,"n":"Ping"}', "Key i must be an integer from 0 to 2^63-1", 0, "Ping"),
        ('{"m":0,"i":9223372036854775808,"n":"Ping"}', "Key i must be an integer", 0, "Ping"),
        ('{"m":0,"i":1' + "0" * 40 + ',"n":"Ping"}', "Key i must be an integer", 0, "Ping"),
        ('{"m":0,"i":1,"n":7}', "Key n must be a string, not a number", 1, ""),
        ('{"m":0,"i":1,"n":null}', "Key n must be a string, not null", 1, ""),
        ('{"m":0,"i":1,"n":"Ping","o":5}', "Key o must be a JSON object or a string", 1, "Ping"),
        ('{"m":0,"i":1,"n":"Ping","o":null}', "Key o must be a JSON object or a str", 1, "Ping"),
        ('{"m":0,"i":1,"n":"Ping","o":[]}', "Key o must be a JSON object or a str", 1, "Ping"),
        ("[" * 5000 + "]" * 5000, "Frame is not valid JSON", 0, ""),
        (
            '{"m":0,"i":1,"n":"Ping","x":' + "[" * 5000 + "]" * 5000 + "}",
            "Frame is not valid",
            0,
            "",
        ),
    ],
)
def test_malformed_frames_are_code_100_with_a_detail_naming_the_problem(
    text: str, detail: str, i: int, n: str
) -> None:
    e = err(text)
    assert e.code == ErrorCode.INVALID_REQUEST
    assert e.detail.startswith(detail), e.detail
    assert (e.i, e.n) == (i, n)


def test_a_binary_frame_is_code_100() -> None:
    e = err(b'{"m":0,"i":1,"n":"Ping","o":"{}"}')
    assert e.code == ErrorCode.INVALID_REQUEST and "Binary" in e.detail


@pytest.mark.parametrize("m", [-1, 6, 99, 2**70])
def test_m_outside_0_to_5_is_code_106_echoing_i_and_n(m: int) -> None:
    e = err(f'{{"m":{m},"i":4,"n":"Ping","o":"{{}}"}}')
    assert e.code == ErrorCode.NOT_SUPPORTED
    assert (e.i, e.n) == (4, "Ping") or m == 2**70


def test_a_lone_surrogate_in_n_is_answered_not_raised() -> None:
    result = decode('{"m":0,"i":1,"n":"\\ud800","o":"{}"}')
    # Either it decodes (and must then encode) or it is a clean 100: never an exception.
    if isinstance(result, Frame):
        out = orjson.loads(encode(1, result.i, result.n, b"{}"))
        assert out["i"] == 1
    else:
        assert result.code == ErrorCode.INVALID_REQUEST


def test_reply_encoding_carries_o_as_a_json_string() -> None:
    out = orjson.loads(encode_reply(9, "ping", PingReply()))
    assert out == {"m": 1, "i": 9, "n": "ping", "o": '{"msg":"PONG"}'}


def test_error_encoding_is_m5_with_a_standard_response() -> None:
    out = orjson.loads(
        encode_error(FrameError(ErrorCode.NOT_FOUND, "Unknown function 'X'", 3, "X"))
    )
    assert out["m"] == 5 and out["i"] == 3 and out["n"] == "X"
    assert orjson.loads(out["o"]) == {
        "result": False,
        "errormsg": "Resource Not Found",
        "errorcode": 104,
        "detail": "Unknown function 'X'",
    }
