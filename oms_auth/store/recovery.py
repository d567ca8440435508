"""The statements of recovery codes (docs/rules.md, "Recovery codes"), written once in SQLite's
``?`` form; each store puts them in its dialect with ``Statements.placeholders``. A user's
codes are rows of keyed digests: made as a set (voiding the earlier set), each deleted by the
transaction that uses it, all deleted with the user's TOTP. Pure: no I/O, no driver import."""

from __future__ import annotations

from typing import Final

__all__ = ["INSERT", "USE", "DELETE_ALL", "HELD", "LEFT", "LEFT_COLUMN"]

INSERT: Final = "INSERT INTO recovery_codes (user_id, digest) VALUES (?, ?)"
# The use's compare-and-set: of uses racing with one code, on any node, one deletes it.
USE: Final = "DELETE FROM recovery_codes WHERE user_id = ? AND digest = ?"
DELETE_ALL: Final = "DELETE FROM recovery_codes WHERE user_id = ?"
HELD: Final = "SELECT 1 FROM recovery_codes WHERE user_id = ? AND digest = ?"
LEFT: Final = "SELECT count(*) FROM recovery_codes WHERE user_id = ?"
# The count as a column of a select from ``users`` (a login's or a reset's state).
LEFT_COLUMN: Final = "(SELECT count(*) FROM recovery_codes r WHERE r.user_id = users.id)"
