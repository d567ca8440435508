"""The standard suite: the cases of :mod:`.cases`, run by the runner.

This is the one module that imports the case modules (each registers its cases into
:data:`.registry.CASES` as it is imported); the command line runs the kit through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import cases  # noqa: F401  (imported for its registrations)
from .kit import Options, Result
from .registry import CASES
from .runner import run_cases

__all__ = ["CASES", "run_suite"]


async def run_suite(options: Options, only: Sequence[str] | None = None) -> list[Result]:
    """Run every standard case (or those named), one after another."""
    return await run_cases(CASES, options, only)
