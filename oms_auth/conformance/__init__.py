"""A conformance kit: points at any OMS-frame server and reports where it departs from the
contract (SPEC sections 1 to 4), with the frames as evidence."""

from .kit import Options, Result, run_suite

__all__ = ["Options", "Result", "run_suite"]
