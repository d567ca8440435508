"""Wire codec micro-benchmark: ``protocol.frame`` (msgspec) against stdlib ``json`` (and orjson)
on the same frames, decode (frame, then its payload) and encode (a reply frame).

    python -m scripts.bench_codec [--quick]

Prints a Markdown table of nanoseconds per operation (best of 5 repeats).
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from protocol import messages as msg
from protocol.errors import SUCCESS
from protocol.frame import Frame, decode, encode_reply

__all__ = ["rows", "table", "main"]


def _frame(n: str, payload: dict[str, Any]) -> str:
    return json.dumps({"m": 0, "i": 123456, "n": n, "o": json.dumps(payload)})


REQUESTS: list[tuple[str, str, type[msgspec.Struct]]] = [
    ("Ping", _frame("Ping", {}), msg.Empty),
    (
        "AuthenticateUser",
        _frame("AuthenticateUser", {"UserName": "trader1", "Password": "Heron-Trade-3141"}),
        msg.AuthenticateUserRequest,
    ),
    (
        "ResetPassword2",
        _frame(
            "ResetPassword2",
            {
                "UserId": 2,
                "Password": "New-Passw0rd!x",
                "PendingCode": "48abe435-bce3-4aa2-8805-054087e913d1",
            },
        ),
        msg.ResetPassword2Request,
    ),
]

REPLIES: list[tuple[str, msgspec.Struct]] = [
    ("Ping", msg.PingReply()),
    ("ResetPassword", SUCCESS),
    (
        "AuthenticateUser",
        msg.AuthenticateUserReply(
            Authenticated=True,
            SessionToken="Zmg2jWQ8z4FCbG9uZy10b2tlbi1mb3ItdGhlLWJlbmNobWFyaw",
            User=msg.UserInfo(
                UserId=2,
                UserName="trader1",
                Email="trader1@example.test",
                EmailVerified=False,
                AccountId=10,
                OMSId=1,
                Use2FA=False,
            ),
        ),
    ),
]


def _ns(fn: Callable[[], object], quick: bool) -> float:
    timer = timeit.Timer(fn)
    if quick:
        return min(timer.repeat(repeat=1, number=200)) / 200 * 1e9
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=number))
    return best / number * 1e9


def rows(quick: bool = False) -> list[tuple[str, str, float, float, float]]:
    out: list[tuple[str, str, float, float, float]] = []
    for name, data, payload_type in REQUESTS:
        payload_decoder = msg.PayloadDecoder(payload_type)

        def ours(data: str = data, pd: Any = payload_decoder) -> object:
            frame = decode(data)
            assert isinstance(frame, Frame)
            return pd.decode(frame.o)

        def stdlib(data: str = data) -> object:
            doc = json.loads(data)
            return json.loads(doc["o"])

        def orj(data: str = data) -> object:
            doc = orjson.loads(data)
            return orjson.loads(doc["o"])

        out.append(("decode", name, _ns(ours, quick), _ns(stdlib, quick), _ns(orj, quick)))
    for name, reply in REPLIES:
        as_dict = msgspec.to_builtins(reply)

        def ours_enc(reply: msgspec.Struct = reply, name: str = name) -> object:
            return encode_reply(123456, name, reply)

        def stdlib_enc(d: Any = as_dict, name: str = name) -> object:
            return json.dumps(
                {"m": 1, "i": 123456, "n": name, "o": json.dumps(d, separators=(",", ":"))},
                separators=(",", ":"),
            ).encode()

        def orj_enc(d: Any = as_dict, name: str = name) -> object:
            return orjson.dumps({"m": 1, "i": 123456, "n": name, "o": orjson.dumps(d).decode()})

        out.append(
            ("encode", name, _ns(ours_enc, quick), _ns(stdlib_enc, quick), _ns(orj_enc, quick))
        )
    return out


def table(quick: bool = False) -> str:
    lines = [
        "| op | frame | protocol.frame (msgspec) ns | stdlib json ns | orjson ns "
        "| stdlib / msgspec |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for op, name, ours, stdlib, orj in rows(quick):
        lines.append(
            f"| {op} | {name} | {ours:,.0f} | {stdlib:,.0f} | {orj:,.0f} | {stdlib / ours:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke runs)")
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, msgspec {msgspec.__version__}")
    print("decode = frame then payload Struct (msgspec) / two json.loads (stdlib, orjson)")
    print(table(args.quick))


if __name__ == "__main__":
    main()
