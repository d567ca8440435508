"""``oms-auth demo``: a demo OMS whose users the README's walk-through logs in as; with
``--reset``, those users put back as printed."""

from __future__ import annotations

from typing import Any

from ..engine import users
from ..engine.deps import Deps
from ..engine.restore import forget_counters, restore
from ..store import User

__all__ = ["DEMO_USERS", "demo"]


DEMO_USERS: list[dict[str, Any]] = [
    dict(
        username="operator",
        email="operator@example.test",
        password="Kestrel-Op-2718",
        permissions=["Operator"],
        accounts=[1],
    ),
    dict(
        username="trader1",
        email="trader1@example.test",
        password="Heron-Trade-3141",
        permissions=["Trading"],
        accounts=[10],
    ),
    dict(
        username="trader2",
        email="trader2@example.test",
        password="Plover-Trade-1618",
        permissions=["Trading"],
        accounts=[10, 11],
    ),
    dict(
        username="master",
        email="master@example.test",
        password="Osprey-Master-1414",
        permissions=["Trading"],
        accounts=[12],
        master=True,
        totp_secret="JBSWY3DPEHPK3PXPJBSWY3DP",
        question="Name of your first pet?",
        answer="Rex",
    ),
    dict(
        username="boss",
        email="boss@example.test",
        password="Condor-Boss-5772",
        permissions=["Trading"],
        accounts=[13],
        master=True,
    ),
    dict(
        username="newhire",
        email="newhire@example.test",
        password=None,
        permissions=["Trading"],
        accounts=[10],
    ),
]


async def demo(deps: Deps, *, reset: bool = False) -> int:
    if reset:
        await forget_counters(deps)
    print("Demo OMS 1 (passwords are for this demo only):")
    for spec in DEMO_USERS:
        existing = await deps.store.user_by_name(spec["username"])
        if existing is not None and reset:
            await _put_back(deps, existing, spec)
        user_id = existing.id if existing else await users.create_user(deps, **spec)
        created = await deps.store.user_by_id(user_id)
        assert created is not None
        extra = ""
        if spec.get("totp_secret"):
            extra = f"  TOTP secret {spec['totp_secret']}, answer {spec['answer']!r}"
        if spec.get("master") and not spec.get("question"):
            extra = "  master, no security questions yet"
        password = spec["password"]
        if password is None:
            if existing is None:
                await users.invite(deps, created, actor_id=None, source="demo")
            password = "(invited: the link is mailed)" if created.invited else "(set by the user)"
        elif existing is not None and not await deps.hasher.verify(created.password_hash, password):
            password = "(changed since)"  # the demo prints only what it set and still holds
        state = "created" if existing is None else "put back" if reset else "exists"
        print(
            f"  {spec['username']:<9} UserId {user_id:<3} password {password:<18} "
            f"{'/'.join(spec['permissions']) or '-'} accounts {spec['accounts']}{extra} ({state})"
        )
    return 0


async def _put_back(deps: Deps, user: User, spec: dict[str, Any]) -> None:
    """``demo --reset``: the user as ``spec`` has it (:mod:`.engine.restore`)."""
    question, answer = spec.get("question"), spec.get("answer")
    await restore(
        deps,
        user,
        password=spec["password"],
        totp_secret=spec.get("totp_secret"),
        questions=[(question, answer)] if question and answer else [],
        source="demo",
    )
