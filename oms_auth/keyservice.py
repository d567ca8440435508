"""The key ring a node serves with: where it comes from, how the store takes it, and how a
running node takes up a rotated one (docs/operations.md, "Rotating the service key").

Rules:

- The ring comes from ``OMS_AUTH_SECRET_KEY`` or the key file. A missing key file gives a new
  key whose file the store writes only if it is empty (``store.keys``).
- A running node re-reads the key file on SIGHUP and every :data:`POLL_SECONDS` when it
  changed (its modification time, size or inode). A ring that reads and holds the store's
  current key is taken up: sealing moves to its current key, the store records that key as
  its own (so a node with an older ring is refused at start), and a re-seal pass moves every
  sealed value to it. A ring that does not read, or is older than the store's, is logged and
  the node keeps the one it has.
- A value naming a key this node does not hold yet makes the sealer re-read the file at once:
  another node took up the new ring first, and no request fails for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Final

from .config import Settings
from .crypto import checkout_holding, key_fingerprint
from .engine.deps import Deps
from .engine.reseal import Resealer
from .keyring import KeyRing, RingError, new_ring, read_ring, ring_from_env, write_ring
from .store import ChainKeys, KeyBinding, StoreError

__all__ = ["POLL_SECONDS", "KeySource", "binding_for", "chain_keys", "KeyWatcher"]

log = logging.getLogger("oms_auth")

POLL_SECONDS: Final = 2.0


def binding_for(ring: KeyRing, adopt: object = None) -> KeyBinding:
    """What the store checks of ``ring``: its current key's fingerprint and id, and its
    other live keys' fingerprints."""
    return KeyBinding(
        fingerprint=key_fingerprint(ring.current.key),
        key_id=ring.current.id,
        older=frozenset(key_fingerprint(k.key) for k in ring.keys[1:]),
        adopt=adopt if callable(adopt) else None,
    )


def chain_keys(ring: KeyRing) -> ChainKeys:
    """The audit keys the store chains and checks rows with, for ``ring``."""
    by_id, legacy = ring.audit_keys()
    return ChainKeys(current_id=ring.current.id, by_id=by_id, legacy=legacy)


class KeySource:
    """Where a node's ring comes from: ``OMS_AUTH_SECRET_KEY`` or the key file."""

    def __init__(self, settings: Settings) -> None:
        self.env = os.environ.get("OMS_AUTH_SECRET_KEY") or None
        self.path: Path | None = None if self.env else settings.key_file()
        self._seen: tuple[int, int, int] | None = None
        self.describe = "OMS_AUTH_SECRET_KEY" if self.env else f"key file {self.path}"

    def load(self) -> tuple[KeyRing, KeyBinding]:
        """The ring and its binding; for a missing key file, a new key the store adopts (writes)
        only if it is empty. StoreError when the ring cannot be read."""
        try:
            if self.env is not None:
                ring = ring_from_env(self.env)
                return ring, binding_for(ring)
            assert self.path is not None
            self._warn_if_tracked(self.path)
            self._seen = self._stamp()
            found = read_ring(self.path)
        except RingError as exc:
            raise StoreError(str(exc)) from None
        except OSError as exc:
            raise StoreError(f"cannot read the {self.describe}: {exc.strerror}") from None
        if found is not None:
            return found, binding_for(found)
        ring, path = new_ring(), self.path

        def adopt() -> None:
            try:
                write_ring(path, ring, replace=False)
            except OSError as exc:  # FileExistsError too: another process made one meanwhile
                raise StoreError(
                    f"cannot create the secret key file {path}: {exc.strerror or exc}"
                ) from None

        return ring, binding_for(ring, adopt)

    @staticmethod
    def _warn_if_tracked(path: Path) -> None:
        checkout = checkout_holding(path)
        if checkout is not None:
            log.warning(
                "the service key %s is inside the git checkout %s: keep it out of version"
                " control (set secret_key_file or OMS_AUTH_SECRET_KEY to keep it elsewhere)",
                path,
                checkout,
            )

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> KeyRing | None:
        """The file's ring when the file changed since last read; None otherwise, and when it
        does not read (logged: the node keeps its ring)."""
        stamp = self._stamp()
        if self.path is None or stamp is None or stamp == self._seen:
            return None
        self._seen = stamp
        try:
            return read_ring(self.path)
        except (RingError, OSError) as exc:
            log.error("the key ring was not taken up: %s", exc)
            return None


class KeyWatcher:
    """Takes up a rotated ring while the node runs (see the module's rules)."""

    _all: set[KeyWatcher] = set()

    def __init__(self, source: KeySource, deps: Deps) -> None:
        self.source = source
        self.deps = deps
        self.resealer = Resealer(deps.store, deps.sealer)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reseal: asyncio.Task[None] | None = None
        self._pending: KeyRing | None = None  # read by the sealer, for the store to take up
        deps.sealer.set_refresh(self._refresh_now)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="key ring")
        KeyWatcher._all.add(self)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, KeyWatcher._hup)
        # Values left under an older key (a pass cut short by a stop) are taken up again.
        self._reseal = asyncio.create_task(self._reseal_pass(), name="re-seal")

    @classmethod
    def _hup(cls) -> None:
        for watcher in cls._all:
            watcher._wake.set()

    def _refresh_now(self) -> KeyRing | None:
        ring = self.source.changed()
        if ring is not None:
            self._wake.set()  # the store takes it up in the watcher's next turn
            self._pending = ring
        return ring

    async def stop(self) -> None:
        KeyWatcher._all.discard(self)
        if not KeyWatcher._all:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._task, self._reseal):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reseal = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            ring, self._pending = self.source.changed() or self._pending, None
            if ring is not None:
                try:
                    await self.take_up(ring)
                except Exception:
                    log.exception("the key ring was not taken up; will try again")
                    self._pending = ring

    async def take_up(self, ring: KeyRing) -> bool:
        """Seal with ``ring`` and make its current key the store's; False (kept as it was)
        when the store's current key is not in it."""
        if not await self.deps.store.take_key(binding_for(ring), chain_keys(ring)):
            log.error(
                "the key ring in the %s does not hold the store's current key: not taken up",
                self.source.describe,
            )
            return False
        self.deps.sealer.use(ring)
        log.info("took up key %s from the %s", ring.current.id, self.source.describe)
        if self._reseal is not None:
            self._reseal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reseal
        self._reseal = asyncio.create_task(self._reseal_pass(), name="re-seal")
        return True

    async def _reseal_pass(self) -> None:
        try:
            before = self.resealer.done
            await self.resealer.run()
            if self.resealer.done > before:
                current = self.deps.sealer.ring.current.id
                log.info("re-sealed %d values under key %s", self.resealer.done - before, current)
        except Exception:  # the next rotation or start runs it again
            log.exception("the re-seal pass stopped")
