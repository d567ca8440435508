"""The registry of cases: case modules add to it, the runner reads it.

Imports point one way: a case module imports this one and registers its cases as it is
imported; this module never imports a case module. Whoever runs the kit imports the case
modules it wants (:mod:`.suite` imports :mod:`.cases`) and hands the registry to the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .kit import Case, CaseFunction

__all__ = ["Registry", "CASES", "case"]


class Registry:
    """Cases in the order they were registered; a name is registered once."""

    def __init__(self) -> None:
        self._cases: dict[str, Case] = {}

    def add(self, name: str, title: str, run: CaseFunction) -> None:
        if name in self._cases:
            raise ValueError(f"a case named {name!r} is registered already")
        self._cases[name] = Case(name, title, run)

    def case(self, name: str, title: str) -> Callable[[CaseFunction], CaseFunction]:
        """Register the decorated function: async, of (options, evidence), raising Failure or
        Skip."""

        def register(run: CaseFunction) -> CaseFunction:
            self.add(name, title, run)
            return run

        return register

    def __iter__(self) -> Iterator[Case]:
        return iter(self._cases.values())

    def __len__(self) -> int:
        return len(self._cases)


CASES = Registry()
case = CASES.case
