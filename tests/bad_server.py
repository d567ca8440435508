"""A deliberately wrong OMS-frame server, to prove the conformance kit catches departures.

Its faults: business errors answered with m=5, Ping answered with the wrong i, unknown functions
answered with m=1. Everything else it answers plausibly.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

__all__ = ["start_bad_server"]


def _frame(m: int, i: int, n: str, o: dict[str, Any]) -> str:
    return json.dumps({"m": m, "i": i, "n": n, "o": json.dumps(o)})


def _refusal(code: int, text: str, detail: str) -> dict[str, Any]:
    return {"result": False, "errormsg": text, "errorcode": code, "detail": detail}


async def _handle(ws: ServerConnection) -> None:
    async for data in ws:
        try:
            frame = json.loads(data)
            i, n = frame["i"], frame["n"]
        except (ValueError, KeyError, TypeError):  # its only well-behaved answer
            await ws.send(_frame(5, 0, "", _refusal(100, "Invalid Response", "bad frame")))
            continue
        if n.lower() == "ping":
            await ws.send(_frame(1, i + 1, n, {"msg": "PONG"}))  # wrong i
        elif n.lower() == "resetpassword":
            detail = "Invalid value provided for Username"
            await ws.send(_frame(5, i, n, _refusal(100, "Invalid Response", detail)))  # m=5
        else:
            await ws.send(_frame(1, i, n, _refusal(104, "Resource Not Found", "unknown")))  # m=1


async def start_bad_server() -> Server:
    return await serve(_handle, "127.0.0.1", 0)
