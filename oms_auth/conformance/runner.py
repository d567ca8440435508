"""The runner: each case on its own, one after another, its verdict and its evidence kept."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from websockets.exceptions import ConnectionClosed

from .kit import Case, Failure, Options, Result, Skip

__all__ = ["run_cases"]


async def run_cases(
    cases: Iterable[Case], options: Options, only: Sequence[str] | None = None
) -> list[Result]:
    """Run the given cases (or those of them named in ``only``), each independent of the others."""
    results = []
    for case in cases:
        if only and case.name not in only:
            continue
        evidence: list[str] = []
        started = time.monotonic()
        try:
            await case.run(options, evidence)
        except Skip as skip:
            result = Result(case.name, case.title, "skip", str(skip), evidence)
        except (Failure, AssertionError) as failure:
            result = Result(case.name, case.title, "fail", str(failure), evidence)
        except (OSError, ConnectionClosed) as exc:
            result = Result(case.name, case.title, "fail", f"connection problem: {exc}", evidence)
        except Exception as exc:  # a server this odd fails the case; it never stops the run
            detail = f"unexpected answer ({type(exc).__name__}: {exc})"
            result = Result(case.name, case.title, "fail", detail, evidence)
        else:
            result = Result(case.name, case.title, "pass", "", evidence)
        result.seconds = time.monotonic() - started
        results.append(result)
    return results
