"""What every case checks an answer against: the standard response, refused or not."""

from __future__ import annotations

import secrets
from typing import Any

from protocol.errors import ErrorCode

from ..kit import expect
from ..probe import Probe

__all__ = ["SUCCESS", "MAX_I", "missing_name", "check_refusal", "check_success", "still_serving"]


SUCCESS = {"result": True, "errormsg": None, "errorcode": 0, "detail": None}


MAX_I = 2**63 - 1


def missing_name() -> str:
    return "conformance-" + secrets.token_hex(6)


def check_refusal(answer: dict[str, Any], m: int, code: int, detail: str | None = None) -> None:
    """An answer is a standard response refusing with ``code`` (exact texts)."""
    expect(answer.get("m") == m, f"expected m={m}, got m={answer.get('m')}")
    expect(isinstance(answer.get("o_raw"), str), "o must be a JSON document encoded as a string")
    o = answer.get("o")
    expect(isinstance(o, dict), "o must hold a standard response object")
    assert isinstance(o, dict)
    expect(
        set(o) >= {"result", "errormsg", "errorcode", "detail"},
        f"standard response keys missing: {sorted(o)}",
    )
    expect(o["result"] is False, "result must be false")
    expect(o["errorcode"] == code, f"expected errorcode {code}, got {o['errorcode']}")
    text = ErrorCode(code).text
    expect(o["errormsg"] == text, f"errormsg must be {text!r}, got {o['errormsg']!r}")
    if detail is not None:
        expect(o["detail"] == detail, f"detail must be {detail!r}, got {o['detail']!r}")
    else:
        expect(bool(o["detail"]), "detail must name the problem")


def check_success(answer: dict[str, Any]) -> None:
    expect(answer.get("m") == 1, f"expected an m=1 reply, got m={answer.get('m')}")
    expect(answer.get("o") == SUCCESS, f"expected the success response, got {answer.get('o')!r}")


async def still_serving(p: Probe) -> None:
    """The connection stays open after an m=5: a Ping still gets its answer."""
    pong = await p.call("Ping", i=424242)
    expect(pong.get("m") == 1, "the connection stopped serving after the frame")
