"""The ``oms-auth`` command: serve, user add|list|unlock, audit, demo, key, backup, restore."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..app import App, build_deps
from ..config import ConfigError, Settings, load_settings
from ..engine import texts, users
from ..engine.deps import Deps
from ..errors import InvalidValue, Refusal
from ..logs import setup_logging
from ..store import StoreError
from . import transfer
from .audit import audit
from .backup import backup_args, backup_command
from .demo import DEMO_USERS, demo
from .keys import key_args, key_command
from .missing import check_missing, say_created

__all__ = ["main", "DEMO_USERS"]


class CliError(Exception):
    """A usage problem, reported as one line on stderr with exit status 2."""


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before the command or after it, neither place overwrites the other.
    p.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="store: a SQLite path (default ./oms-auth.sqlite3) or postgresql://URL",
    )
    p.add_argument("--config", default=argparse.SUPPRESS, help="TOML file with settings")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms-auth", description=__doc__)
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="run the service"))
    _user_commands(sub.add_parser("user", help="manage users"))
    _audit_args(
        sub.add_parser(
            "audit",
            help="print the audit trail, newest first",
            description="Print the audit trail; 'verify' walks its hash chain, 'export' writes "
            "it as JSON lines (oldest first) for record keeping.",
        )
    )
    _conformance_args(
        sub.add_parser(
            "conformance",
            help="check any OMS-frame server against the contract",
            description="Run the conformance cases against a running server; exit 0 when none "
            "fail.",
        )
    )
    _demo_args(sub.add_parser("demo", help="create a demo OMS and print its credentials"))
    key_args(sub.add_parser("key", help="the service key ring: list, rotate, retire"), _common)
    backup_args(sub, _common)
    return parser


def _serve_args(serve: argparse.ArgumentParser) -> None:
    _common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--public-url", dest="public_url")
    serve.add_argument("--mail", help="maildir:PATH (default maildir:./mail) or smtp://host:port")
    serve.add_argument("--secret-key-file", dest="secret_key_file")
    serve.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        metavar="ADDR|CIDR",
        help="a proxy whose --proxy-header names the client (repeatable)",
    )
    serve.add_argument(
        "--proxy-header",
        dest="proxy_header",
        metavar="x-forwarded-for|forwarded",
        help="the one header the trusted proxies write (default x-forwarded-for)",
    )
    serve.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate chain: serve TLS")
    serve.add_argument("--tls-key", dest="tls_key", help="PEM private key of --tls-cert")
    serve.add_argument(
        "--login-wait-seconds",
        dest="login_wait_seconds",
        type=float,
        help="how long a login waits for a slot held by attempts in flight (default 10)",
    )
    serve.add_argument(
        "--drain-seconds",
        dest="drain_seconds",
        type=float,
        help="on SIGTERM, how long requests in flight may take before 1012 (default 10)",
    )


def _user_commands(parser: argparse.ArgumentParser) -> None:
    user = parser.add_subparsers(dest="user_command", required=True)
    _user_add_args(user.add_parser("add", help="create a user; prints its UserId on the last line"))
    lst = user.add_parser("list", help="list users")
    _common(lst)
    unlock = user.add_parser("unlock", help="end a user's lockout")
    _common(unlock)
    unlock.add_argument("username")
    invite = user.add_parser(
        "invite", help="mail an invited user a new link to set its password (voids the older)"
    )
    _common(invite)
    invite.add_argument("username")
    transfer.add_commands(user.add_parser, _common)


def _user_add_args(add: argparse.ArgumentParser) -> None:
    _common(add)
    add.add_argument("--username", required=True)
    add.add_argument("--email", required=True)
    secret = add.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password")
    secret.add_argument(
        "--invite",
        action="store_true",
        help="no password: mail the user a link to set one (valid invite_valid_seconds)",
    )
    add.add_argument("--oms", type=int, default=1)
    add.add_argument("--permission", action="append", default=[])
    add.add_argument("--account", type=int, action="append", default=[])
    add.add_argument("--master", action="store_true")
    add.add_argument("--totp-secret", dest="totp_secret")
    add.add_argument("--security-question", dest="security_question")
    add.add_argument("--security-answer", dest="security_answer")
    add.add_argument(
        "--auth-source",
        dest="auth_source",
        default="native",
        choices=["native", "openidconnect", "saml"],
    )
    add.add_argument("--inactive", action="store_true")
    add.add_argument("--locale", help="the language of the user's mail (en, de; default_locale)")
    add.add_argument("--secret-key-file", dest="secret_key_file")


def _audit_args(audit: argparse.ArgumentParser) -> None:
    _common(audit)
    audit.add_argument("action", nargs="?", choices=["show", "verify", "export"], default="show")
    audit.add_argument("--user", help="rows whose actor or target is this user (or name)")
    audit.add_argument("--since", type=_timestamp, help="ISO time, e.g. 2026-11-23T00:00:00Z")
    audit.add_argument("--until", type=_timestamp, help="ISO time (exclusive)")
    audit.add_argument("--limit", type=int, default=50, help="rows to show (show only)")


def _conformance_args(conf: argparse.ArgumentParser) -> None:
    conf.add_argument("url", help="ws://HOST:PORT/WSGateway/")
    conf.add_argument("--operator", type=_credentials, help="USER:PASS of an Operator")
    conf.add_argument("--trader", type=_credentials, help="USER:PASS of a Trading user")
    conf.add_argument(
        "--target",
        help="a user the kit may send reset emails to (and lock, "
        "then unlock, when it has a security question)",
    )
    conf.add_argument("--mail", help="maildir:PATH where the server delivers mail")
    conf.add_argument("--junit", help="also write JUnit XML to this file")
    conf.add_argument("--json", action="store_true", help="print JSON instead of a table")
    conf.add_argument("--case", action="append", help="run only this case (repeatable)")
    conf.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")


def _demo_args(demo: argparse.ArgumentParser) -> None:
    _common(demo)
    demo.add_argument(
        "--reset",
        action="store_true",
        help="put the demo users back as printed (passwords, locks, TOTP, questions; "
        "sessions and API keys ended) and clear the store's request and attempt counters",
    )
    demo.add_argument("--secret-key-file", dest="secret_key_file")


_SETTING_FLAGS = (
    "db",
    "host",
    "port",
    "public_url",
    "mail",
    "secret_key_file",
    "trusted_proxies",
    "proxy_header",
    "tls_cert",
    "tls_key",
    "login_wait_seconds",
    "drain_seconds",
)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in _SETTING_FLAGS}
    return load_settings(flags, config_file=getattr(args, "config", None))


def _credentials(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("credentials must be USER:PASS")
    return user, password


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`oms-auth user list | head`): as Unix tools do, stop quietly.
        # stdout is pointed at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "conformance":
        return _run(_conformance(args))
    try:
        settings = _settings(args)
        setup_logging(settings.log_level, settings.log_format)
        creating = check_missing(args, settings)
        if args.command == "serve":
            return _run(_serve(settings, creating))
        if args.command == "key":
            return _run(key_command(args, settings))
        if args.command in ("backup", "restore"):
            return _run(backup_command(args, settings))
        return _run(_offline(args, settings, creating))
    except Refusal as refusal:
        print(f"oms-auth: {refusal.detail}", file=sys.stderr)
        return 2
    except (ConfigError, CliError, StoreError, ValueError, transfer.TransferError) as exc:
        print(f"oms-auth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was committed stays (an import resumes)
        print("oms-auth: interrupted", file=sys.stderr)
        return 130


def _run(coro: Any) -> int:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


async def _conformance(args: argparse.Namespace) -> int:
    from ..conformance import Options, run_suite
    from ..conformance.report import as_json, junit, table

    maildir = None
    if args.mail:
        if not args.mail.startswith("maildir:"):
            print("oms-auth: --mail must be maildir:PATH", file=sys.stderr)
            return 2
        maildir = Path(args.mail.removeprefix("maildir:"))
    options = Options(
        url=args.url,
        operator=args.operator,
        trader=args.trader,
        target=args.target,
        maildir=maildir,
        timeout=args.timeout,
    )
    results = await run_suite(options, args.case)
    print(as_json(results) if args.json else table(results))
    if args.junit:
        Path(args.junit).write_bytes(junit(results, args.url))
    return 1 if any(r.verdict == "fail" for r in results) else 0


async def _serve(settings: Settings, creating: str | None = None) -> int:
    app = App(settings)
    try:
        await app.start()
    except OSError as exc:  # the port taken, the address not this machine's
        reason = exc.strerror or str(exc)
        raise CliError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    say_created(creating)
    # What start-up made lives as long as the process: frozen, the cycle collector's full
    # collections no longer walk it (docs/performance.md, "SQLite's reset with its mail"). Its
    # threshold stays Python's: a higher one let a TLS ping flood's closed connections, which
    # are garbage cycles holding their buffers, wait for a collection (53 MB against 10 MB).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"oms-auth listening on {app.url} (reset page {app.public_url}/reset)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await app.stop()
    print("oms-auth stopped", flush=True)
    return 0


async def _offline(
    args: argparse.Namespace, settings: Settings, creating: str | None = None
) -> int:
    missing = Path(creating) if creating is not None else None
    if args.command == "user" and args.user_command in ("import", "export"):
        settings = transfer.check_before_opening(args, settings, missing)
    deps = await build_deps(settings)
    say_created(creating)
    try:
        if args.command == "user" and args.user_command in ("import", "export"):
            return await transfer.run(deps, args)
        if args.command == "user":
            return await {
                "add": _user_add,
                "list": _user_list,
                "unlock": _user_unlock,
                "invite": _user_invite,
            }[args.user_command](deps, args)
        if args.command == "audit":
            return await audit(deps, args)
        return await demo(deps, reset=args.reset)
    finally:
        await deps.store.close()
        deps.hasher.close()


# The engine names the values; here they come from flags, so the refusal names the flags.
_FLAG_REFUSALS = {
    texts.QUESTION_WITHOUT_ANSWER: "--security-question and --security-answer go together",
    texts.INVALID_TOTP_SECRET: "--totp-secret must be base32 of at least 80 bits",
}


async def _user_add(deps: Deps, args: argparse.Namespace) -> int:
    try:
        user_id = await _create(deps, args)
    except InvalidValue as refusal:
        if refusal.detail in _FLAG_REFUSALS:
            raise CliError(_FLAG_REFUSALS[refusal.detail]) from None
        raise
    created = await deps.store.user_by_id(user_id)
    assert created is not None
    if args.invite:
        await users.invite(deps, created, actor_id=None, source="cli")
        print(f"created user {created.username}; invitation queued for {created.email}")
    else:
        print(f"created user {created.username}")
    print(user_id)
    return 0


async def _create(deps: Deps, args: argparse.Namespace) -> int:
    return await users.create_user(
        deps,
        username=args.username,
        email=args.email,
        password=args.password,
        oms=args.oms,
        permissions=args.permission,
        accounts=args.account,
        master=args.master,
        totp_secret=args.totp_secret,
        question=args.security_question,
        answer=args.security_answer,
        auth_source=args.auth_source,
        active=not args.inactive,
        locale=args.locale,
    )


async def _user_invite(deps: Deps, args: argparse.Namespace) -> int:
    target = await deps.store.user_by_name(args.username)
    if target is None:
        raise CliError(f"no user named {args.username!r}")
    if not target.invited:
        raise CliError(
            f"user {target.username} has set a password; a reset (ResetPassword) is the way now"
        )
    await users.invite(deps, target, actor_id=None, source="cli")
    print(f"invitation queued for {target.email}; older links of {target.username} are void")
    return 0


async def _user_list(deps: Deps, args: argparse.Namespace) -> int:
    now = deps.clock()
    print(f"{'UserId':>6}  {'UserName':<20} {'OMS':>3}  {'Accounts':<12} {'Permissions':<20} flags")
    for u in await deps.store.list_users():
        flags = [
            f
            for f, on in (
                ("master", u.master),
                ("totp", u.uses_totp),
                ("inactive", not u.active),
                (u.auth_source, u.auth_source != "native"),
                ("locked", bool(u.locked_until and u.locked_until > now)),
            )
            if on
        ]
        accounts = ",".join(str(a) for a in sorted(u.accounts)) or "-"
        perms = ",".join(sorted(u.permissions)) or "-"
        print(
            f"{u.id:>6}  {u.username:<20} {u.oms_id:>3}  {accounts:<12} {perms:<20} "
            f"{' '.join(flags)}".rstrip()
        )
    return 0


async def _user_unlock(deps: Deps, args: argparse.Namespace) -> int:
    user = await deps.store.user_by_name(args.username)
    if user is None:
        raise CliError(f"no user named {args.username!r}")
    await users.unlock(deps, user, actor_id=None, source="cli")
    print(f"unlocked {user.username}")
    return 0


def _timestamp(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
