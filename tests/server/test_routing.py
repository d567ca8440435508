"""docs/protocol.md, "Frames", routing without a socket: what each frame gets, decided by one
function."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from oms_auth.server.functions import Function
from oms_auth.server.routing import Call, Immediate, route
from protocol import messages as msg


async def _never(conn: Any, payload: Any) -> msgspec.Struct:
    raise AssertionError("routing runs nothing")


TABLE = {
    "ping": Function("Ping", msg.PayloadDecoder(msg.Empty), _never),
    "resetpassword": Function(
        "ResetPassword", msg.PayloadDecoder(msg.ResetPasswordRequest), _never
    ),
}


def answer(routed: Immediate | Call) -> dict[str, Any]:
    assert isinstance(routed, Immediate), routed
    frame = orjson.loads(routed.data)
    frame["o"] = orjson.loads(frame["o"])
    return dict(frame)


def test_a_request_for_a_known_function_is_a_call_with_its_typed_payload() -> None:
    routed = route(TABLE, '{"m":0,"i":4,"n":"resetPASSWORD","o":"{\\"UserName\\":\\"a\\"}"}')
    assert isinstance(routed, Call)
    assert routed.function.name == "ResetPassword" and routed.frame.i == 4
    assert routed.payload == msg.ResetPasswordRequest(UserName="a")


@pytest.mark.parametrize(
    ("data", "m", "code"),
    [
        ("garbage", 5, 100),
        ('{"m":0,"i":2,"n":"Nope","o":"{}"}', 5, 104),
        ('{"m":2,"i":2,"n":"Ping","o":"{}"}', 5, 106),
        ('{"m":9,"i":2,"n":"Ping","o":"{}"}', 5, 106),
        ('{"m":0,"i":2,"n":"ResetPassword","o":"[1]"}', 5, 100),
        ('{"m":0,"i":2,"n":"ResetPassword","o":"{\\"UserName\\":7}"}', 1, 100),
    ],
)
def test_frames_that_cannot_run_are_answered_by_routing_alone(data: str, m: int, code: int) -> None:
    routed = route(TABLE, data)
    frame = answer(routed)
    assert (frame["m"], frame["o"]["errorcode"]) == (m, code)
    assert isinstance(routed, Immediate) and routed.code == code


def test_a_wrongly_typed_key_is_named_and_echoes_i_and_n() -> None:
    frame = answer(route(TABLE, '{"m":0,"i":8,"n":"resetpassword","o":{"UserName":[]}}'))
    assert (frame["i"], frame["n"]) == (8, "resetpassword")
    assert "UserName" in frame["o"]["detail"]
