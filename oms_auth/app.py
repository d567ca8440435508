"""Wiring: one running service built from Settings (store, engine, mail, server)."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from typing import Any

from websockets.asyncio.server import Server, serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from .config import ConfigError, Settings
from .crypto import Hasher, Sealer
from .engine import legacy_hashes
from .engine.deps import Clock, Deps
from .engine.reset import Resets
from .engine.sessions import TOUCH_EVERY, Sessions
from .keyring import KeyRing
from .keyservice import KeySource, KeyWatcher, chain_keys
from .logs import pin_library_loggers
from .mail.outbox import OutboxWorker, Transport, transport_for
from .server.forwarded import Proxies
from .server.functions import Functions
from .server.http import HttpPages
from .server.http1 import PortConnection
from .server.http_gateway import HttpGateway
from .server.metrics import Metrics
from .server.page import ResetPage
from .server.registry import Registry
from .server.transport import Admission
from .server.ws import WS_PATHS, Gateway
from .store import KeyRefused, Store, StoreError, check_location, open_store
from .store.keys import MISSING
from .tasks import cancel

__all__ = ["App", "build_deps"]

log = logging.getLogger("oms_auth")


# Descriptors a node keeps for itself beside its connections: the store (a file and its WAL, or
# a pool), the key, Maildir files being written, logs, listeners.
RESERVED_DESCRIPTORS = 128


DEFAULT_MAX_CONNECTIONS = 10000


def connections_within_descriptors(wanted: int | None) -> int:
    """``max_connections`` as this process's descriptors allow. The soft RLIMIT_NOFILE is
    raised to the hard one first; a node holds up to twice its connections' worth (each
    admitted connection may have a refused one waiting to be told), so the cap is kept within
    that rather than letting accept() fail and turn every client away: the default quietly,
    a configured cap that does not fit lowered with a warning."""
    room = _descriptor_room()
    if wanted is None:
        return min(DEFAULT_MAX_CONNECTIONS, room)
    if wanted > room:
        log.warning(
            "max_connections lowered from %d to %d: this process may open %d descriptors"
            " (raise it with ulimit -n)",
            wanted,
            room,
            room * 2 + RESERVED_DESCRIPTORS,
        )
        return room
    return wanted


def _descriptor_room() -> int:
    """How many connections fit twice in this process's descriptors, after raising the soft
    limit to the hard one where it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # kept as it was: the cap follows it
    return max(1, (soft - RESERVED_DESCRIPTORS) // 2)


def _tls_context(s: Settings) -> ssl.SSLContext | None:
    """TLS terminated in the process (``tls_cert``/``tls_key``), for a deployment without a
    proxy; None without. A file that cannot be read or does not match is StoreError-like: the
    start fails with one line."""
    if s.tls_cert is None or s.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use --tls-cert {s.tls_cert} / --tls-key {s.tls_key}: {exc}"
        ) from None
    return ctx


def _key_refused(refused: KeyRefused, settings: Settings, source: str) -> StoreError:
    """The one line a refused key gives: which key, which store, what to do."""
    if refused.reason != MISSING and refused.current_id is not None:
        return StoreError(
            f"the secret key differs from the one {refused.where} is on (key"
            f" {refused.current_id}): the {source} does not hold it; give every node the"
            ' store\'s key ring (docs/operations.md, "Rotating the service key")'
        )
    if refused.reason == MISSING:
        return StoreError(
            f"the secret key file {settings.key_file()} is missing, but {refused.where} was"
            " used with a key: restore that file (a new key would lock every TOTP user out,"
            " leave API keys and queued mail unreadable and break the audit chain)"
        )
    return StoreError(
        f"the secret key differs from the one {refused.where} was first used with ({source}"
        " holds another); give every node the same key (OMS_AUTH_SECRET_KEY or secret_key_file)"
    )


async def _open_with_key(
    settings: Settings, *, retry: bool = True
) -> tuple[Store, KeyRing, KeySource]:
    """The store, opened with the service key ring it was used with (docs/operations.md, "The
    service key")."""
    source = KeySource(settings)
    ring, binding = source.load()
    try:
        store = await open_store(settings.db, audit_key=chain_keys(ring), key=binding)
    except KeyRefused as refused:
        # Two processes on an empty store, both without a key file: the one that wrote its
        # file first bound the store, and the other reads that file now.
        if retry and binding.new and refused.reason == MISSING and settings.key_file().exists():
            return await _open_with_key(settings, retry=False)
        raise _key_refused(refused, settings, source.describe) from None
    return store, ring, source


async def build_deps(settings: Settings, clock: Clock = time.time) -> Deps:
    """Open the store and load the key ring: what the CLI's offline commands need too."""
    deps, _ = await _build_deps(settings, clock)
    return deps


async def _build_deps(settings: Settings, clock: Clock) -> tuple[Deps, KeySource]:
    check_location(settings.db)  # before the key file beside it is created
    store, ring, source = await _open_with_key(settings)
    hasher = Hasher(
        workers=settings.hash_workers,
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        legacy=legacy_hashes.verify,
    )
    deps = Deps(
        store=store,
        hasher=hasher,
        sealer=Sealer(ring),
        settings=settings,
        clock=clock,
        names_key=ring.names_key(),
        devices_key=ring.devices_key(),
    )
    return deps, source


class App:
    """The service: ``await start()``, then ``port`` and ``public_url`` are known; ``await
    stop()`` ends it. It is also the engine's :class:`~.engine.deps.Events`: what the engine
    tells goes to the metrics, the connection registry and the mail worker from here."""

    def __init__(
        self, settings: Settings, *, clock: Clock = time.time, login_delay: float = 0.25
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.login_delay = login_delay
        self.metrics = Metrics()
        self.registry = Registry(Gateway.send)
        self.server: Server | None = None
        self.outbox: OutboxWorker | None = None
        self._deps: Deps | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.keys: KeyWatcher | None = None
        self._public_url: str | None = None

    @property
    def deps(self) -> Deps:
        assert self._deps is not None, "App.start() first"
        return self._deps

    # -- Events: what the engine tells ------------------------------------------------------

    def count(self, name: str) -> None:
        self.metrics.event(name)

    def sessions_ended(self, user_id: int, reason: str) -> None:
        self.registry.end_user(user_id, reason)

    def session_revoked(self, token_digest: bytes, reason: str) -> None:
        self.registry.end_session(token_digest, reason)

    def mail_queued(self) -> None:
        if self.outbox is not None:
            self.outbox.wake()

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the engine, mail and servers; if any part cannot start,
        what did start is stopped again before the error goes on (nothing left half-open)."""
        s = self.settings
        pin_library_loggers()
        transport = transport_for(s.mail)  # a malformed --mail fails before anything opens
        try:
            await self._start(transport)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, transport: Transport) -> None:
        s = self.settings
        deps, source = await _build_deps(s, self.clock)
        self._deps = deps
        deps.events = self
        self.keys = keys = KeyWatcher(source, deps)
        self.sessions = Sessions(deps, delay_unit=self.login_delay)
        self.resets = Resets(deps)
        # Before listening: a second serve on a single-node store stops here, quietly.
        reclaimed = await deps.store.start_serving(self.clock())
        if reclaimed:
            log.info("took back %d mail claim(s) a stopped process left", reclaimed)
        self.functions = Functions(self.sessions, self.resets, self.registry)
        self.gateway = Gateway(self.functions, self.sessions, self.metrics, s)
        # Sessions that other nodes sharing the store end log off this node's connections.
        await deps.store.listen_revocations(self.registry.revoked)
        proxies = self.gateway.proxies
        self.http = HttpPages(deps.store, self.metrics, WS_PATHS, proxies, tls=s.tls)
        self.http.extra_metrics = self._store_metrics
        self.http.mail_writable = transport.writable
        self.http.api = HttpGateway(self.gateway, self.sessions)
        self.server = await self._listen(proxies)
        # Known only now: port 0 picks a port at bind time, and links must carry the real one.
        self._public_url = s.resolved_public_url(self.port)
        ResetPage(self.public_url, self.resets.policy, login_url=s.login_url).install(self.http)
        self.outbox = OutboxWorker(deps, transport, self.public_url)
        self.outbox.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        keys.start()

    async def _listen(self, proxies: Proxies) -> Server:
        """One port for WebSocket and HTTP, each connection within what a peer may cost."""
        s = self.settings
        self.admission = admission = Admission(
            connections_within_descriptors(s.max_connections),
            s.max_connections_per_source,
            proxies,
            self.metrics.event,
        )
        tls = _tls_context(s)
        # What open_timeout (None below) would have given the TLS handshake; only with TLS.
        tls_timeout: dict[str, Any] = {"ssl_handshake_timeout": 10} if tls is not None else {}
        return await serve(
            self.gateway.handle,
            s.host,
            s.port,
            # Only requests that ask for an upgrade reach websockets; plain HTTP is read by
            # h11, kept alive, bodies at most a frame's size (server/http1.py).
            process_request=self.http,
            process_response=self.http.finish,
            # Counts every connection toward the caps and bounds what each costs
            # (server/transport.py).
            create_connection=PortConnection.configured(
                admission=admission,
                pages=self.http,
                max_body=s.max_frame_bytes,
                idle_seconds=s.http_idle_seconds,
                rate=s.max_requests_per_second,
            ),
            # A connection may serve HTTP requests for a while before one asks for a
            # WebSocket: PortConnection's deadline bounds the wait for each request instead.
            open_timeout=None,
            # Past this much unsent for one peer, it is dropped (GuardedConnection).
            write_limit=s.max_pending_output_bytes,
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
            ssl=tls,
            **tls_timeout,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.tls else "ws"
        return f"{scheme}://{self.settings.display_host()}:{self.port}/WSGateway/"

    @property
    def public_url(self) -> str:
        """Where users reach this deployment (``public_url``, else the address it bound)."""
        assert self._public_url is not None, "App.start() first"
        return self._public_url

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
                # A session's last_seen in the store lags its connection by up to TOUCH_EVERY:
                # only sessions idle past that margin too are gone for sure.
                idle_since = now - s.session_idle_seconds - TOUCH_EVERY
                gone = await self.deps.store.prune(now - keep, idle_since)
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
            **{
                f"legacy_hashes{{scheme={scheme}}}": n
                for scheme, n in legacy_hashes.count(await self.deps.store.hash_heads()).items()
            },
            **(self.keys.resealer.metrics() if self.keys else {}),
        }

    async def stop(self) -> None:
        """Graceful (docs/operations.md, "Overload and shutdown"): stop listening, answer the
        requests in flight (up to ``drain_seconds``), close WebSockets with 1012 so clients
        reconnect and resume, hand back mail claims, finish background work, close the store."""
        if self.server is not None:
            self.server.close(close_connections=False)
            grace = self.settings.drain_seconds
            await asyncio.gather(self.gateway.drain(grace), self.http.drain(grace))
            await self.registry.flush()
            await self.server.wait_closed()
            self.server = None
        if self._deps is not None:
            await cancel(self._maintenance)
            self._maintenance = None
            if self.keys is not None:
                await self.keys.stop()
                self.keys = None
            await self.resets.drain()
            if self.outbox is not None:
                await self.outbox.stop()
                self.outbox = None
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
