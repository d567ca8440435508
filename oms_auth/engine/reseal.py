"""The re-seal pass: after a rotation, every sealed value is sealed again under the ring's
current key (docs/operations.md, "Rotating the service key"), so the older key can be retired.

Rules:

- Each sealed column of the store (``store.sealed.SEALED``) has its context here, in
  :data:`CONTEXTS` (a new sealed column adds a row in both).
- A value is replaced only if its row still holds it (compare-and-set): a value changed
  meanwhile (a new TOTP secret, a message delivered and erased) is left as it now is.
- A value that does not open with the ring is counted as failed and left: it is never erased.
- Progress is counted (``done``, ``failed``, ``left``) for ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..crypto import Sealer, mail_context
from ..store import Store
from ..store.sealed import SEALED, SealedColumn
from . import apikeys, totp

__all__ = ["CONTEXTS", "Resealer", "BATCH"]

log = logging.getLogger("oms_auth")

BATCH: Final = 200

# What each sealed column's values are bound to, from its ``fields`` (store.sealed).
CONTEXTS: Final[dict[str, Callable[[Sequence[Any]], bytes]]] = {
    "totp_secrets": lambda f: totp.seal_context(int(f[0])),
    "api_secrets": lambda f: apikeys.seal_context(int(f[0]), str(f[1])),
    "queued_mail": lambda f: mail_context(None if f[0] is None else int(f[0]), str(f[1])),
}


class Resealer:
    """One pass over every sealed column (:meth:`run`); the counts stay for ``/metrics``."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self.done = 0
        self.failed = 0
        self.left = 0

    def metrics(self) -> dict[str, int]:
        return {
            "key_resealed": self.done,
            "key_reseal_failed": self.failed,
            "key_reseal_left": self.left,
        }

    async def count_left(self) -> int:
        """Values not sealed under the current key (for the progress gauge)."""
        prefix = self.sealer.current_prefix
        total = 0
        for column in SEALED:
            after: object = column.first
            while rows := await self.store.sealed_batch(column, prefix, after, BATCH):
                total += len(rows)
                after = rows[-1][0]
        return total

    async def run(self) -> None:
        """Re-seal every value not under the current key; returns when none is left (but those
        that fail to open)."""
        self.left = await self.count_left()
        for column in SEALED:
            await self._column(column)
        self.left = 0

    async def _column(self, column: SealedColumn) -> None:
        context = CONTEXTS[column.name]
        width = len(column.fields.split(","))
        after: object = column.first
        while True:
            prefix = self.sealer.current_prefix
            rows = await self.store.sealed_batch(column, prefix, after, BATCH)
            if not rows:
                return
            for row in rows:
                fields = [row[1 + i] for i in range(width)]
                pk, old = row[0], bytes(row[1 + width])
                await self._one(column, pk, context(fields), old)
            after = rows[-1][0]

    async def _one(self, column: SealedColumn, pk: object, context: bytes, old: bytes) -> None:
        try:
            plain = self.sealer.open(old, context)
        except ValueError:
            self.failed += 1
            log.error("a value in %s (row %s) does not open with the key ring", column.name, pk)
            return
        if await self.store.reseal(column, pk, old, self.sealer.seal(plain, context)):
            self.done += 1
        self.left = max(0, self.left - 1)
