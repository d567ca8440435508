"""Security answers: how they compare (docs/rules.md, "Account security changes": Argon2id of the
trimmed, case-folded answer, since answers are low-entropy)."""

from __future__ import annotations

__all__ = ["normalize_answer"]


def normalize_answer(answer: str) -> str:
    """Security answers compare trimmed (inner runs of space folded) and case-folded."""
    return " ".join(answer.split()).casefold()
