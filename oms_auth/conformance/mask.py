"""What the evidence may show: frames with their passwords, codes and tokens masked.

The kit writes every frame it sends and receives into its report, and reports travel (CI logs,
tickets). Masking is the kit's own job, done here on text in three steps:

1. the secrets the run was given (the passwords of ``--operator`` and ``--trader``), wherever
   they appear, longest first;
2. the value of every secret-named key: in a frame (``"Password":"..."``, also inside ``o``
   where the quotes are escaped) and in a link's query (``PendingCode=...``);
3. the shapes of secrets from anywhere else: GUIDs (reset codes), recovery codes and long
   tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["mask"]

_SECRET_KEYS = (
    "Password",
    "PendingCode",
    "SecurityQuestionAnswer",
    "Code",
    "SessionToken",
    "TwoFAToken",
    "Pending2FaToken",
    "ManualCode",
    "GoogleQRCode",
    "Answer",
    "APISecret",
)
_KEYS = "|".join(_SECRET_KEYS)

# "Key": value in a frame, and \"Key\": value inside the string o, where every quote and
# backslash of the inner document is escaped once more. A string value ends at its closing quote
# (escaped quotes inside it are read as such); any other value but null at a comma, brace or
# blank.
_STRING = r'"(?:[^"\\]|\\.)*"'
_INNER_STRING = r'\\"(?:\\\\(?:\\.|[^"\\])|\\[^"\\]|[^"\\])*\\"'
_IN_FRAME = re.compile(rf'(?i)("(?:{_KEYS})"\s*:\s*)(?:{_STRING}|(?!null\b)[^,}}\s]+)')
_IN_O = re.compile(rf'(?i)(\\"(?:{_KEYS})\\"\s*:\s*)(?:{_INNER_STRING}|(?!null\b)[^,}}\s\\]+)')
_IN_QUERY = re.compile(rf"(?i)([?&](?:{_KEYS})=)[^&\s]+")
_SHAPES = (
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "[code]"),
    # recovery codes (RecoveryCodes holds a list of them)
    (re.compile(r"(?i)\b[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}\b"), "[recovery code]"),
    (re.compile(r"(?<![\w-])[\w-]{40,}(?![\w-])"), "[token]"),
)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets, secret-named values and secret shapes masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    text = _IN_O.sub(r"\1[masked]", text)
    text = _IN_FRAME.sub(r"\1[masked]", text)
    text = _IN_QUERY.sub(r"\1[masked]", text)
    for pattern, placeholder in _SHAPES:
        text = pattern.sub(placeholder, text)
    return text
