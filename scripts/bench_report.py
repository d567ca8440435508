"""The benchmark's results: a row per case and connection count, rendered as one Markdown table
(ready for the README), and the line that names the machine.

A row holds every run's raw figures (``runs``: oms-auth, or the loaded side; ``refs``: the
ceiling, or the idle side); the table quotes their medians and each ratio to the ceiling.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEADER", "Row", "is_nan", "ratio", "render", "machine"]

HEADER = (
    "| loop | case | conns | req/s | p50 ms | p99 ms | p99.9 ms | n | server CPU us/req "
    "| db CPU us/req | ceiling req/s | ceiling p99 ms | ceiling CPU us/req | x ceiling req/s "
    "| x ceiling p99 | target |"
)


@dataclass
class Row:
    loop: str
    case: str
    conns: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # oms-auth (or the loaded side)
    refs: list[dict[str, Any]] = field(default_factory=list)  # ceiling (or the idle side)
    target: str = ""
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)  # preformatted cells
    foreign: list[tuple[float, float]] = field(default_factory=list)  # (cores, steal) per run

    def med(self, key: str, ref: bool = False) -> float:
        values = [r[key] for r in (self.refs if ref else self.runs) if not is_nan(r.get(key))]
        return statistics.median(values) if values else float("nan")

    def cpu_us(self, ref: bool = False, key: str = "server_cpu_s") -> float:
        """Median CPU per request, in us: oms-auth's (every node's), or with
        ``key="db_cpu_s"`` the PostgreSQL server processes'."""
        runs = self.refs if ref else self.runs
        per = [r[key] / r["count"] * 1e6 for r in runs if r.get("count") and not is_nan(r.get(key))]
        return statistics.median(per) if per else float("nan")


def is_nan(value: Any) -> bool:
    """No figure: missing, or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: float, digits: int = 2) -> str:
    if is_nan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either has no figure or b is zero."""
    return a / b if b and not is_nan(a) and not is_nan(b) else float("nan")


def _times(value: float) -> str:
    return f"{value:.3g}x" if not is_nan(value) else "-"


def render(rows: list[Row]) -> str:
    """The Markdown table: one line per row, medians and ratios to the ceiling."""
    lines = [HEADER, "| --- | --- | ---: " + "| ---: " * 12 + "| --- |"]
    for r in rows:
        if r.fixed:
            cells = [r.loop, r.case, r.conns] + ["-"] * 12 + [r.target]
        else:
            rps, p99 = r.med("rps"), r.med("p99_ms")
            ref_rps, ref_p99 = r.med("rps", True), r.med("p99_ms", True)
            cells = [
                r.loop,
                r.case,
                r.conns,
                _num(rps, 1),
                _num(r.med("p50_ms")),
                _num(p99),
                _num(r.med("p999_ms")),
                str(int(r.med("count"))) if not is_nan(r.med("count")) else "-",
                _num(r.cpu_us(), 0),
                _num(r.cpu_us(key="db_cpu_s"), 0),
                _num(ref_rps, 1),
                _num(ref_p99),
                _num(r.cpu_us(True), 0),
                _times(ratio(rps, ref_rps)),
                _times(ratio(p99, ref_p99)),
                r.target,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(loops: list[str], gen_loop: str) -> str:
    """The line naming the machine, the Python and library versions, and the loops."""
    model = "unknown CPU"
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import msgspec
    from websockets.version import version as websockets_version

    usable = len(os.sched_getaffinity(0))
    return (
        f"Machine: {usable} CPUs usable (nproc), {model}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; websockets {websockets_version}, "
        f"msgspec {msgspec.__version__}; server loop(s): {', '.join(loops)}; "
        f"load generator loop: {gen_loop}, its own process"
    )
