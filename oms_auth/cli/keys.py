"""``oms-auth key list|rotate|retire``: the service key ring (docs/operations.md, "Rotating the
service key")."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from ..app import build_deps
from ..config import Settings
from ..engine.deps import Deps
from ..engine.reseal import Resealer
from ..keyring import MAGIC, KeyRing, RingError, ring_lock, sealed_prefix, write_ring
from ..keyservice import KeySource, binding_for, chain_keys
from ..store import StoreError
from ..store.sealed import SEALED

__all__ = ["key_args", "key_command"]


def key_args(parser: argparse.ArgumentParser, common: object) -> None:
    """The ``key`` subcommands (``common`` adds --db and --config to each)."""
    sub = parser.add_subparsers(dest="key_command", required=True)
    for name, text in (
        ("list", "one line per key: its id, when it was made, and which is current"),
        ("rotate", "add a new current key; re-seal everything under it"),
        ("retire", "drop an old key once nothing is sealed with it"),
    ):
        p = sub.add_parser(name, help=text)
        if callable(common):
            common(p)
        p.add_argument("--secret-key-file", dest="secret_key_file")
        if name == "retire":
            p.add_argument("key_id", metavar="ID")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def key_command(args: argparse.Namespace, settings: Settings) -> int:
    source = KeySource(settings)
    if args.key_command == "list":
        ring, binding = source.load()
        if binding.new:
            raise StoreError(f"there is no {source.describe}")
        _print(ring)
        return 0
    if source.path is None:
        raise StoreError(
            "the key ring comes from OMS_AUTH_SECRET_KEY: change the variable on every node"
            " (id:base64,id:base64, current first)"
        )
    # One change of the ring at a time, each from the ring as the one before left it (read by
    # build_deps under the lock): docs/operations.md, "Rotating the service key".
    with ring_lock(source.path):
        deps = await build_deps(settings)  # checks the ring against the store first
        try:
            if args.key_command == "rotate":
                return await _rotate(deps, source)
            return await _retire(deps, source, args.key_id)
        finally:
            await deps.store.close()
            deps.hasher.close()


def _print(ring: KeyRing) -> None:
    for k in ring.keys:
        mark = "  current" if k is ring.current else ""
        print(f"{k.id}  {_iso(k.created)}{mark}")
    for r in ring.retired:
        print(f"{r.id}  {_iso(r.created)}  retired")


async def _rotate(deps: Deps, source: KeySource) -> int:
    assert source.path is not None
    ring = deps.sealer.ring.rotated(time.time())
    write_ring(source.path, ring, replace=True)
    if not await deps.store.take_key(binding_for(ring), chain_keys(ring)):
        raise StoreError("the store is on a key this ring does not hold")
    deps.sealer.use(ring)
    resealer = Resealer(deps.store, deps.sealer)
    await resealer.run()
    print(f"key {ring.current.id} is current; re-sealed {resealer.done} values under it")
    if resealer.failed:
        print(f"{resealer.failed} values did not open with the ring and were left as they are")
    return 0


async def _retire(deps: Deps, source: KeySource, key_id: str) -> int:
    assert source.path is not None
    ring = deps.sealer.ring
    try:
        left = ring.retired_key(key_id)
    except RingError as exc:
        raise StoreError(str(exc)) from None
    gone = ring.get(key_id)
    magic = MAGIC if gone is ring.legacy else None
    counts = {
        column.name: await deps.store.sealed_count(column, sealed_prefix(key_id), magic)
        for column in SEALED
    }
    remaining = sum(counts.values())
    if remaining:
        detail = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
        raise StoreError(
            f"key {key_id} still seals {remaining} values ({detail}): let the re-seal pass"
            " finish (oms_auth_key_reseal_left in /metrics), then retire it"
        )
    write_ring(source.path, left, replace=True)
    print(f"retired key {key_id}; the audit rows it chained still verify")
    return 0
