"""The code cites the contract where the repository keeps it: every ``docs/PAGE.md`` a comment,
docstring or test names exists, and every heading quoted beside it is one of that page's (a
quoted heading may be cut short with ``...``, or broken across comment lines)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCES = ("oms_auth", "protocol", "tests", "scripts")
# A citation: the page, then what follows it up to a closing parenthesis, a semicolon, the
# next page or the end of a docstring (its headings in double quotes, possibly broken across
# comment lines).
_CITATION = re.compile(r"docs/([\w-]+\.md)")
_END = re.compile(r'[);]|"""|\n\s*\n|docs/')
_QUOTED = re.compile(r'"([^"]+)"')


def _headings(page: Path) -> set[str]:
    return {
        line.lstrip("#").strip()
        for line in page.read_text().splitlines()
        if line.startswith("#") and not line.startswith("#!")
    }


def _citations() -> list[tuple[str, str, list[str]]]:
    found = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text()
            for m in _CITATION.finditer(text):
                tail = text[m.end() : m.end() + 200]
                end = _END.search(tail)
                tail = re.sub(r"\s*\n\s*#?\s*", " ", tail[: end.start() if end else None])
                quoted = [q for q in _QUOTED.findall(tail) if not q.startswith(("{", ","))]
                found.append((str(path.relative_to(ROOT)), m[1], quoted))
    return found


def test_every_docs_citation_names_a_page_and_headings_it_has() -> None:
    citations = _citations()
    assert len(citations) > 50  # the code does cite the docs
    wrong = []
    for where, page, quoted in citations:
        if not (DOCS / page).is_file():
            wrong.append((where, page, "no such page"))
            continue
        headings = _headings(DOCS / page)
        for text in quoted:
            cut = text.removesuffix("...").strip()
            if not any(h == cut or (text.endswith("...") and h.startswith(cut)) for h in headings):
                wrong.append((where, page, text))
    assert wrong == []
