"""Performance benchmark: oms-auth against a bare ``websockets`` ceiling, on one machine.

    python -m scripts.bench [--loop asyncio|uvloop|both] [--connections 1,8,64]
                            [--duration 3] [--slow-duration 8] [--rounds 2] [--idle 5000]
                            [--only ping,auth,...] [--server-env NAME=VALUE] [--quick]
                            [--db postgresql://USER@HOST:PORT/DBNAME[?pool_max=N]]

Prints the machine, then one Markdown table (ready for the README), then notes; progress goes
to stderr. ``--quick`` is a smoke run with tiny numbers (its figures mean nothing).

What runs, each in its own process, all on 127.0.0.1:

- the ceiling (``scripts.bench_echo``): a bare websockets server answering every frame with a
  fixed standard response after decoding only ``i`` and ``n``: what this stack can do at best;
- oms-auth (``scripts.bench_serve``, the real ``oms-auth serve``) on a fresh store with generated
  users (``scripts.bench_seed``), request limits raised so the bench is never refused;
- the load generator (``scripts.bench_load``): closed loop, one request in flight per
  connection, latency from ``time.perf_counter_ns``; it runs on uvloop when installed, whichever
  loop the servers use, so the instrument stays the same.

Request cases are run A B A B (ceiling, oms-auth, ceiling, oms-auth ...; ``--rounds``) and
medians quoted, because the machine drifts between batches; each oms-auth figure is divided by
the ceiling's from the same run. Argon2id runs at the default cost (the realistic figure).

Cases: Ping; AuthenticateUser; ResetPassword by an Operator (durable: the code and its mail
are committed before the answer); ResetPassword2 (Argon2id hash of the new password, codes read
from the Maildir); paced Ping while ResetPassword2 saturates the hash pool (against the same
paced Ping on an idle server); RSS with ``--idle`` idle authenticated connections (sessions
resumed with WebAuthenticateUser); time from spawn to the "listening" line on a fresh store;
reconnect: 500 connections resuming at once and 64 logging in at once (one user, the default
login limits), time to all authenticated against the ceiling's figure from the same run.

With ``--db`` the request cases (but ResetPassword2, which spends codes read from the SQLite
store's mail) run on PostgreSQL too, in the same rounds: ceiling, SQLite, PostgreSQL on one node,
PostgreSQL on two ``serve`` nodes with the connections split between them. The bench creates a
database of its own on that server (``oms_bench_<random>``) and drops it at the end; the
PostgreSQL server processes' CPU per request (``db CPU``) is the CPU of the processes
``pg_stat_activity`` lists for that database, read from ``/proc/PID/stat``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._bench_util import have_uvloop
from .bench_cases import ALL_CASES, Options, run_loop
from .bench_procs import log, stop_everything
from .bench_report import Row, machine, render

__all__ = ["main"]

# The layout: this module reads the options and prints the results; bench_cases runs the cases
# (bench_setup prepares them), bench_procs starts and stops every process, bench_report renders.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "both"],
        help="server event loop (default: both when uvloop is installed; --quick: uvloop if "
        "installed, else asyncio)",
    )
    parser.add_argument("--connections", help="comma-separated (default 1,8,64; --quick 2)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 3)")
    parser.add_argument(
        "--slow-duration",
        type=float,
        help="seconds measured per oms-auth run of the Argon2id cases (default 8; --quick: "
        "--duration)",
    )
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 1)")
    parser.add_argument("--rounds", type=int, help="A B rounds per case (default 2)")
    parser.add_argument("--idle", type=int, help="idle authenticated connections (default 5000)")
    parser.add_argument("--startups", type=int, help="start-up runs (default 5)")
    parser.add_argument(
        "--sat-conns",
        type=int,
        default=8,
        help="Ping and ResetPassword2 connections in the saturation case (default 8 each)",
    )
    parser.add_argument(
        "--sat-rate",
        type=float,
        default=400.0,
        help="paced Ping requests/s in the saturation case (default 400)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated cases to run, of {','.join(ALL_CASES)} (default: all)",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also run the peer (FastAPI + fastapi-users forgot-password, scripts.bench_peer; "
        "sets up its own venv in .bench-peer/ on first use) and compare",
    )
    parser.add_argument(
        "--db",
        help="also run the request cases on PostgreSQL (one and two nodes), in a database the "
        "bench creates on this server and drops afterwards",
    )
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    parser.add_argument("--json", help="also write every run's raw figures to this file")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for oms-auth, e.g. OMS_AUTH_HASH_WORKERS=1 (experiments)",
    )
    return parser


def _options(argv: list[str] | None) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes a postgresql:// URL (SQLite always runs)")
    if args.only and not set(args.only.split(",")) <= set(ALL_CASES):
        parser.error(f"--only takes some of {','.join(ALL_CASES)}")
    quick = args.quick
    uv = have_uvloop()
    loop = (
        args.loop or ("uvloop" if uv else "asyncio")
        if quick
        else args.loop or ("both" if uv else "asyncio")
    )
    loops = ["asyncio", "uvloop"] if loop == "both" else [loop]
    if "uvloop" in loops and not uv:
        parser.error("uvloop is not installed (pip install uvloop, or the 'uvloop' extra)")
    conns = [int(c) for c in (args.connections or ("2" if quick else "1,8,64")).split(",")]

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    peer = args.peer
    opts = Options(
        loops=loops,
        conns=conns,
        duration=pick(args.duration, 3.0, 0.3),
        slow_duration=pick(args.slow_duration, max(8.0, args.duration or 0), args.duration or 0.3),
        warmup=pick(args.warmup, 1.0, 0.1),
        rounds=pick(args.rounds, 2, 1),
        idle=pick(args.idle, 5000, 20),
        startups=pick(args.startups, 5, 1),
        sat_conns=2 if quick and args.sat_conns == 8 else args.sat_conns,
        sat_rate=args.sat_rate,
        quick=quick,
        keep=args.keep,
        json=args.json,
        only=set(args.only.split(",")) if args.only else set(ALL_CASES),
        server_env=dict(kv.split("=", 1) for kv in args.server_env),
        quiesce_s=0.1 if quick else 0.5,
    )
    opts.peer = peer
    opts.db = args.db
    return opts


def _peer(opts: Options, rows: list[Row]) -> list[str]:
    """The peer on the Operator case's largest connection count, and how oms-auth compares."""
    conns = max(opts.conns)
    log(f"peer: FastAPI + fastapi-users forgot-password x{conns}")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench_peer",
            "--conns",
            str(conns),
            "--duration",
            str(max(opts.duration, 10.0)),
            "--warmup",
            str(opts.warmup),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        return [f"peer: did not run ({out.stderr.strip().splitlines()[-1:]})"]
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    v = peer["versions"]
    line = (
        f"peer (FastAPI {v.get('fastapi')} + fastapi-users {v.get('fastapi-users')} on uvicorn "
        f"{v.get('uvicorn')}, SQLite; its forgot-password route writing the mail to an outbox "
        f"table before its 202) x{conns}: {peer['rps']:,.1f} req/s, p99 {peer['p99_ms']:,.0f} ms, "
        f"{peer['errors']} errors, {peer['server_cpu_us_per_req'] or 0:,} us server CPU per request"
    )
    ours = [r for r in rows if r.case == "ResetPassword (Operator)" and r.conns == str(conns)]
    notes = [line]
    for row in ours:
        notes.append(
            f"{row.loop}: oms-auth's Operator ResetPassword x{conns} (mail delivered) does "
            f"{row.med('rps') / peer['rps']:,.0f}x the peer's answers/s at "
            f"{peer['p99_ms'] / row.med('p99_ms'):,.0f}x lower p99 and "
            f"{(peer['server_cpu_us_per_req'] or 0) / row.cpu_us():,.0f}x less CPU per request"
            if peer["rps"]
            else f"{row.loop}: the peer answered nothing in its window"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    opts = _options(argv)
    rows: list[Row] = []
    notes: list[str] = []
    gen_loop = "uvloop" if have_uvloop() else "asyncio"
    started = time.perf_counter()
    with stop_everything():
        for loop in opts.loops:
            run_loop(opts, loop, rows, notes)
    if opts.peer:
        notes.extend(_peer(opts, rows))
    print(machine(opts.loops, gen_loop))
    print(
        f"Per run: {opts.warmup:g} s warm-up, {opts.duration:g} s measured; {opts.rounds} "
        "rounds A B (ceiling, oms-auth), medians; closed loop, one request in flight per "
        "connection; Argon2id at the default cost; saturation case: Ping paced at "
        f"{opts.sat_rate:g}/s over {opts.sat_conns} connections beside {opts.sat_conns} "
        "ResetPassword2 connections."
        + "".join(f" Server environment: {k}={v}." for k, v in opts.server_env.items())
    )
    print()
    print(render(rows))
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    if opts.json:
        Path(opts.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
