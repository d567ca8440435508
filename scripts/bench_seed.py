"""Creates the benchmark's users in a store, the way ``oms-auth user add`` does.

    python -m scripts.bench_seed --db PATH --spec JSON

``--spec`` is ``{"password": P, "groups": [{"prefix": "t", "count": 100, "permissions": [...],
"accounts": [...]}, ...]}``: users ``t0``, ``t1``, ... with emails ``t0@bench.test`` and password
P. Argon2id runs at the configured (default) cost, once per distinct password: every user of
the same password gets that one real hash, so seeding thousands of users takes seconds while
every login still pays a real verification. Prints ``{"prefix": [first_id, ...]}`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from oms_auth.app import build_deps
from oms_auth.config import load_settings
from oms_auth.engine.users import create_user

_CHUNK = 200  # concurrent creations: the store's group commit shares one fsync between them


async def _seed(db: str, spec: dict[str, Any]) -> dict[str, list[int]]:
    deps = await build_deps(load_settings({"db": db}))
    try:
        real_hash = deps.hasher.hash
        cache: dict[str, str] = {}

        async def hash_once(secret: str) -> str:
            if secret not in cache:
                cache[secret] = await real_hash(secret)
            return cache[secret]

        deps.hasher.hash = hash_once  # type: ignore[method-assign]
        password = spec["password"]
        await hash_once(password)
        ids: dict[str, list[int]] = {}
        for group in spec["groups"]:
            prefix = group["prefix"]
            names = [f"{prefix}{k}" for k in range(group["count"])]
            created: list[int] = []
            for start in range(0, len(names), _CHUNK):
                created += await asyncio.gather(
                    *(
                        create_user(
                            deps,
                            username=name,
                            email=f"{name}@bench.test",
                            password=password,
                            permissions=group.get("permissions", ()),
                            accounts=group.get("accounts", ()),
                        )
                        for name in names[start : start + _CHUNK]
                    )
                )
            ids[prefix] = created
        return ids
    finally:
        await deps.store.close()
        deps.hasher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--spec", required=True, help="JSON, see above")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_seed(args.db, json.loads(args.spec)))))


if __name__ == "__main__":
    main()
