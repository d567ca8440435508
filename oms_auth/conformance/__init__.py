"""A conformance kit: points at any OMS-frame server and reports where it departs from the
contract (docs/protocol.md and docs/rules.md), with the frames as evidence.

It speaks to the server through :mod:`protocol` alone and nothing else of oms-auth. Imports
point one way, from the top::

    suite  ->  cases  ->  registry, probe  ->  kit
    suite  ->  runner ->  kit                 report -> kit
               probe  ->  mask, protocol.client
"""

from .kit import Options, Result
from .suite import CASES, run_suite

__all__ = ["CASES", "Options", "Result", "run_suite"]
