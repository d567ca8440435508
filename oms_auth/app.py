"""Wiring: one running service built from Settings (store, engine, mail, server)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time

from websockets.asyncio.server import Server, serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from protocol.messages import LogoutReason

from .config import Settings
from .crypto import Hasher, Sealer, audit_key, load_or_create_key
from .engine.deps import Clock, Deps
from .engine.reset import Resets
from .engine.sessions import Sessions
from .logs import pin_library_loggers
from .mail.outbox import OutboxWorker, transport_for
from .server.functions import Functions
from .server.http import HttpPages
from .server.metrics import Metrics
from .server.page import ResetPage
from .server.registry import Registry
from .server.ws import WS_PATHS, Gateway
from .store import Store, open_store

__all__ = ["App", "build_deps"]

log = logging.getLogger("oms_auth")


async def build_deps(settings: Settings, clock: Clock = time.time) -> Deps:
    """Open the store and load the key: what the CLI's offline commands need too."""
    key = load_or_create_key(settings.key_file(), os.environ.get("OMS_AUTH_SECRET_KEY"))
    store: Store = await open_store(settings.db, audit_key=audit_key(key))
    try:
        # A store shared by several nodes refuses a node whose key differs from the others'.
        await store.bind_key(hmac.new(key, b"oms-auth key fingerprint", "sha256").hexdigest())
    except BaseException:
        await store.close()
        raise
    hasher = Hasher(
        workers=settings.hash_workers,
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
    )
    return Deps(store=store, hasher=hasher, sealer=Sealer(key), settings=settings, clock=clock)


class App:
    """The service: ``await start()``, then ``port`` is known; ``await stop()`` ends it."""

    def __init__(
        self, settings: Settings, *, clock: Clock = time.time, login_delay: float = 0.25
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.login_delay = login_delay
        self.metrics = Metrics()
        self.server: Server | None = None
        self._deps: Deps | None = None
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def deps(self) -> Deps:
        assert self._deps is not None, "App.start() first"
        return self._deps

    async def start(self) -> None:
        s = self.settings
        pin_library_loggers()
        self._deps = deps = await build_deps(s, self.clock)
        self.sessions = Sessions(deps, delay_unit=self.login_delay)
        self.resets = Resets(deps)
        self.registry = Registry(Gateway.send)
        self.functions = Functions(self.sessions, self.resets, self.registry)
        deps.on_event.append(self.metrics.event)
        self.outbox = OutboxWorker(deps, transport_for(s.mail))
        deps.on_mail_queued.append(self.outbox.wake)
        self.outbox.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        self.gateway = Gateway(self.functions, self.sessions, self.metrics, s)
        # Sessions this node ends, and those other nodes sharing the store end, log off every
        # connection here that holds them, with a LogoutEvent.
        deps.on_password_changed.append(
            lambda user_id: self.registry.end_user(user_id, LogoutReason.PASSWORD_CHANGED)
        )
        deps.on_session_revoked.append(self.registry.end_session)
        try:
            await deps.store.listen_revocations(self.registry.revoked)
        except BaseException:
            await self.stop()
            raise
        self.http = HttpPages(deps.store, self.metrics, WS_PATHS)
        self.http.extra_metrics = self._store_metrics
        self.server = await serve(
            self.gateway.handle,
            s.host,
            s.port,
            process_request=self.http,
            server_header=None,
            max_size=s.max_frame_bytes,
            # permessage-deflate with small windows: browsers still get compression, at about
            # a third of the default's memory per connection (5,000 idle sessions: 218 MB
            # instead of 338 MB in scripts/bench.py).
            compression=None,
            extensions=[
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=9,
                    client_max_window_bits=9,
                    compress_settings={"memLevel": 1},
                )
            ],
            ping_interval=s.ping_interval_seconds or None,
            ping_timeout=s.ping_timeout_seconds or None,
        )
        if not s.public_url:
            # Port 0 picks a port at bind time: links must carry the real one.
            s.public_url = f"http://{s.display_host()}:{self.port}"
        ResetPage(s.public_url, self.resets.policy).install(self.http)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.settings.display_host()}:{self.port}/WSGateway/"

    async def _maintain(self) -> None:
        """Every so often, delete counted events and sessions no rule looks at any more."""
        s = self.settings
        keep = max(
            s.reset_window_seconds,
            s.lockout_window_seconds,
            s.login_window_seconds,
            s.code_valid_seconds,
        )
        while True:
            now = self.clock()
            try:
                gone = await self.deps.store.prune(now - keep, now - s.session_idle_seconds)
                if gone:
                    log.info("pruned %d expired rows", gone)
            except Exception:
                log.exception("pruning failed; will try again")
            await asyncio.sleep(s.maintenance_seconds)

    async def _store_metrics(self) -> dict[str, int]:
        counts = await self.deps.store.mail_counts()
        return {
            **{f"mail_{state}": n for state, n in counts.items()},
            "secret_checks": self.deps.hasher.checks,
        }

    async def stop(self) -> None:
        """Graceful: stop listening, let requests in flight finish, close connections with
        1001, then finish background work and close the store."""
        if self.server is not None:
            self.server.close(close_connections=False)
            await self.gateway.drain(self.settings.shutdown_grace_seconds)
            await self.registry.flush()
            await self.server.wait_closed()
            self.server = None
        if self._deps is not None:
            if self._maintenance is not None:
                self._maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._maintenance
            await self.resets.drain()
            await self.outbox.stop()
            await self._deps.store.close()
            self._deps.hasher.close()
            self._deps = None

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_stopped(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("stopping")
