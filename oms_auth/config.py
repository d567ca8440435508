"""Settings: defaults, a TOML file (``--config``), ``OMS_AUTH_*`` variables, then flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .store.urls import is_postgres_url, sqlite_path

__all__ = ["Settings", "load_settings", "ConfigError", "PROXY_HEADERS"]

PROXY_HEADERS = ("x-forwarded-for", "forwarded")


class ConfigError(Exception):
    """A configuration value that cannot be used; the message says which and why."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob of the service, with its default (docs/operations.md, "Configuration")."""

    db: str = "./oms-auth.sqlite3"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    public_url: str | None = None
    # Where the reset page sends the user once the new password is set (None: no link).
    login_url: str | None = None
    mail: str = "maildir:./mail"
    secret_key_file: str | None = None
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_frame_bytes: int = 65536
    # Behind a load balancer or reverse proxy (docs/operations.md, "Behind a proxy:
    # trusted_proxies and proxy_header"): peers whose Forwarded / X-Forwarded-For name the
    # client, as addresses or CIDRs.
    trusted_proxies: list[str] = []
    # The one header those proxies write: "x-forwarded-for" (nginx's and HAProxy's default) or
    # "forwarded" (RFC 7239). The other is never read: a client can send it through a proxy
    # that only appends to its own header.
    proxy_header: str = "x-forwarded-for"
    # Optional TLS termination in the process: a PEM certificate chain and its key.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Overload protection: refuse clearly rather than slow everyone down.
    # Per node; unset: 10,000, or fewer where the process's descriptors could not hold twice
    # that (app.connections_within_descriptors).
    max_connections: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_connections_per_source: int = 256
    max_in_flight_per_connection: int = 64
    # The frames of the requests in flight on all connections of a node together (64 MiB): each
    # connection's count is bounded above, but a count times a frame's size times connections
    # is not a memory bound; past it a request is refused 101 until others end.
    max_in_flight_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 64 * 1024 * 1024
    max_requests_per_second: float = 500  # requests and client pings alike
    # What may wait unsent for one peer (answers, events, pongs): past it the peer is not
    # reading and is disconnected, so a node's memory stays within its caps' worth. Above the
    # largest single answer (the reset page's word list is 272 KB unpacked).
    max_pending_output_bytes: Annotated[int, msgspec.Meta(ge=1 << 19)] = 1 << 20
    idle_timeout_seconds: float = 900
    # An HTTP/1.1 connection kept open between requests (docs/protocol.md,
    # "The HTTP gateway: /AP/"): closed once it has waited this long for its next request, or
    # for the rest of one it started.
    http_idle_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30
    ping_interval_seconds: float = 20
    ping_timeout_seconds: float = 20
    # On SIGTERM requests in flight get this long to be answered before every WebSocket is
    # closed with 1012 (docs/operations.md, "Overload and shutdown").
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10
    maintenance_seconds: float = 600  # how often expired events and sessions are deleted
    session_idle_seconds: float = 3600
    # Reset engine (docs/rules.md, "The code and the link", "Lockout")
    code_valid_seconds: float = 86400
    invite_valid_seconds: float = 72 * 3600  # an invitation's link (docs/rules.md)
    # The issuer an authenticator app shows beside the username (EnableGoogle2FA).
    totp_issuer: str = "oms-auth"
    self_service_reset: bool = True
    # Self-service requests are answered at once and worked off in the background: at most
    # this many wait (past it they are answered the same and dropped, counted in /metrics as
    # oms_auth_self_service_dropped), served by this many tasks, so a flood costs bounded
    # memory and store work.
    self_service_queue: Annotated[int, msgspec.Meta(ge=1)] = 1000
    self_service_workers: Annotated[int, msgspec.Meta(ge=1)] = 4
    reset_requests_per_user: int = 3
    reset_requests_per_source: int = 30
    reset_window_seconds: float = 3600
    lockout_failures: int = 5
    lockout_window_seconds: float = 1800
    lockout_seconds: float = 1800
    invalid_codes_per_source: int = 20
    login_failures_per_user: int = 10
    login_failures_per_source: int = 50
    login_window_seconds: float = 900
    # An attempt that finds every slot of a login limit held by attempts still being checked
    # waits this long for one to end before it is refused (docs/rules.md, "Fair limits").
    login_wait_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10
    # A login that passed its password step waits this long, for at most this many wrong
    # TOTP codes, for its second step (docs/rules.md, "TOTP").
    second_step_seconds: float = 300
    second_step_attempts: int = 5
    password_policy: Literal["default", "nist"] = "default"
    # A completed password reset revokes the user's API keys (docs/rules.md, "API keys") unless
    # this is set; the "password changed" email says which happened.
    reset_keeps_api_keys: bool = False
    # How many API keys one user may hold.
    api_keys_per_user: Annotated[int, msgspec.Meta(ge=1)] = 20
    # Fresh proof (docs/rules.md, "Fresh proof for account-security changes"):
    # account-security changes (EnableGoogle2FA,
    # Disable2FA without a code, adding or removing API keys) act only on a connection that proved
    # the password this recently, or with the password given again.
    fresh_auth_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600
    # New devices (docs/rules.md, "Devices"): with verify_new_devices a right password from a
    # device the user has not trusted is confirmed by an emailed code first, and the device is
    # then trusted for trusted_device_days; without it, a new device's login is mailed about.
    verify_new_devices: bool = False
    trusted_device_days: Annotated[float, msgspec.Meta(gt=0)] = 30
    # Argon2id cost; the defaults follow RFC 9106's second recommendation.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    hash_workers: int = 2
    mail_from: str = "oms-auth <no-reply@localhost>"
    # What the messages say (docs/operations.md, "Branding and languages"): a folder of templates
    # replacing the shipped ones file by file, the exchange's name, where users get help, and the
    # language of users who have none of their own (en and de ship).
    mail_templates: str | None = None
    brand_name: str = "OMS Exchange"
    support_email: str | None = None
    support_url: str | None = None
    default_locale: str = "en"
    # A message that cannot be delivered is tried again after mail_retry_seconds, doubling up
    # to 15 minutes between tries, until it is mail_max_age seconds old; only then is it
    # marked failed (docs/operations.md, "Mail").
    mail_retry_seconds: float = 5
    mail_max_age: Annotated[float, msgspec.Meta(gt=0)] = 72 * 3600
    # A claimed message not marked sent within this time (its worker died) is due again.
    mail_lease_seconds: float = 120

    def __post_init__(self) -> None:
        self.trusted_networks()  # a bad entry is a configuration error, at load
        self.proxy_header = self.proxy_header.strip().lower()
        if self.proxy_header not in PROXY_HEADERS:
            raise ValueError(
                f"proxy_header: {' or '.join(PROXY_HEADERS)}, not {self.proxy_header!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        out = []
        for value in self.trusted_proxies:
            try:
                out.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError:
                raise ValueError(f"trusted_proxies: not an address or CIDR: {value!r}") from None
        return tuple(out)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def display_host(self) -> str:
        """Where a local client reaches the service (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    def resolved_public_url(self, port: int | None = None) -> str:
        """``public_url``, else ``http://HOST:PORT`` (``port``: the one actually bound)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.display_host()}:{self.port if port is None else port}"

    def key_file(self) -> Path:
        if self.secret_key_file:
            return Path(self.secret_key_file)
        if is_postgres_url(self.db):
            # A database server has no folder of ours: the working directory's. Every node of
            # one exchange needs the same key (the store refuses a different one).
            return Path("oms-auth.key").resolve()
        db = Path(sqlite_path(self.db))
        return db.resolve().parent / (db.name + ".key")


_FIELDS = set(Settings.__struct_fields__)
_LISTS = {"trusted_proxies"}  # comma-separated in the environment
# Settings renamed: the old name still read (a file or the environment written for it).
_RENAMED = {"shutdown_grace_seconds": "drain_seconds"}


def load_settings(
    flags: dict[str, Any] | None = None,
    *,
    config_file: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge the sources in order of precedence; unknown keys and bad values are errors."""
    environ = dict(os.environ) if environ is None else environ
    merged: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        for key, value in doc.items():
            name = key.replace("-", "_")
            name = _RENAMED.get(name, name)
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r} in {config_file}")
            merged[name] = value
    for old, new in _RENAMED.items():
        if "OMS_AUTH_" + old.upper() in environ:
            merged[new] = environ["OMS_AUTH_" + old.upper()]
    for name in _FIELDS:
        value = environ.get("OMS_AUTH_" + name.upper())
        if value is not None and name != "secret_key":
            merged[name] = [v for v in value.split(",") if v.strip()] if name in _LISTS else value
    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = value
    try:
        # strict=False lets "8765" from the environment become an int.
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
