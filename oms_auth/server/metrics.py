"""In-process counters, rendered as Prometheus text at ``GET /metrics``."""

from __future__ import annotations

import bisect
import re
from collections import Counter

__all__ = ["Metrics"]

_LABELLED = re.compile(r"(\w+)\{(\w+)=(\w+)\}")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters the server and engine bump; cheap enough for the hot path."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: Counter[tuple[str, int]] = Counter()
        self.events: Counter[str] = Counter()
        self._latency = [0] * (len(_BUCKETS) + 1)
        self._latency_sum = 0.0

    def count(self, function: str, code: int, seconds: float | None = None) -> None:
        self.requests[(function, code)] += 1
        if seconds is not None:
            self._latency[bisect.bisect_left(_BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def event(self, name: str) -> None:
        """Bump a named counter, e.g. ``resets_requested``, ``mail_sent``; ``login:failed`` is
        the ``failed`` outcome of ``oms_auth_logins_total``."""
        self.events[name] += 1

    def render(self, extra: dict[str, int] | None = None) -> str:
        lines = [
            "# HELP oms_auth_connections Open WebSocket connections.",
            "# TYPE oms_auth_connections gauge",
            f"oms_auth_connections {self.connections}",
            "# HELP oms_auth_requests_total Answered frames by function and errorcode.",
            "# TYPE oms_auth_requests_total counter",
        ]
        for (function, code), n in sorted(self.requests.items()):
            name = function.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'oms_auth_requests_total{{function="{name}",errorcode="{code}"}} {n}')
        lines += [
            "# HELP oms_auth_request_seconds Time from routing to answer.",
            "# TYPE oms_auth_request_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip((*_BUCKETS, float("inf")), self._latency, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'oms_auth_request_seconds_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"oms_auth_request_seconds_sum {self._latency_sum:.6f}")
        lines.append(f"oms_auth_request_seconds_count {cumulative}")
        families: dict[str, list[tuple[str, int]]] = {}
        gauges: dict[str, list[str]] = {}
        for name, n in sorted({**self.events, **(extra or {})}.items()):
            labelled = _LABELLED.fullmatch(name)
            if labelled:  # "family{label=value}": a gauge by label
                family, label, value = labelled.groups()
                gauges.setdefault(family, []).append(f'oms_auth_{family}{{{label}="{value}"}} {n}')
                continue
            family, _, outcome = name.partition(":")
            if outcome:
                families.setdefault(family, []).append((outcome, n))
                continue
            lines.append(f"# TYPE oms_auth_{name} counter")
            lines.append(f"oms_auth_{name} {n}")
        for family, outcomes in families.items():
            lines.append(f"# TYPE oms_auth_{family}s_total counter")
            for outcome, n in outcomes:
                lines.append(f'oms_auth_{family}s_total{{outcome="{outcome}"}} {n}')
        for family, samples in gauges.items():
            lines += [f"# TYPE oms_auth_{family} gauge", *samples]
        return "\n".join(lines) + "\n"
