"""Logging policy: what may reach a log line.

websockets logs every frame at DEBUG and aiosqlite every statement with its parameters; frames
carry passwords and codes, parameters carry hashes and sealed values. Their loggers are pinned
above DEBUG whatever level the service runs at, so turning on debug logging for oms-auth never
turns on theirs.
"""

from __future__ import annotations

import logging

__all__ = ["pin_library_loggers"]

_PINNED = {"websockets": logging.INFO, "aiosqlite": logging.WARNING}


def pin_library_loggers() -> None:
    for name, level in _PINNED.items():
        logging.getLogger(name).setLevel(level)
