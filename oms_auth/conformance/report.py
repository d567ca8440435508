"""Reports: a table for people, JSON for scripts, JUnit XML for CI systems."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

from .kit import Result

__all__ = ["table", "as_json", "junit"]


def table(results: list[Result], *, evidence: bool = True) -> str:
    width = max((len(r.case) for r in results), default=4)
    lines = [f"{'case':<{width}}  verdict  detail", f"{'-' * width}  -------  ------"]
    for r in results:
        lines.append(f"{r.case:<{width}}  {r.verdict.upper():<7}  {r.reason or r.title}")
        if evidence and r.verdict == "fail":
            lines += [f"{'':<{width}}           {line}" for line in r.evidence]
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def as_json(results: list[Result]) -> str:
    return json.dumps(
        [
            {
                "case": r.case,
                "title": r.title,
                "verdict": r.verdict,
                "reason": r.reason,
                "evidence": r.evidence,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
        indent=2,
    )


def junit(results: list[Result], url: str) -> bytes:
    suite = ET.Element(
        "testsuite",
        name=f"oms-auth conformance {url}",
        tests=str(len(results)),
        failures=str(sum(r.verdict == "fail" for r in results)),
        skipped=str(sum(r.verdict == "skip" for r in results)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        tc = ET.SubElement(
            suite, "testcase", classname="conformance", name=r.case, time=f"{r.seconds:.3f}"
        )
        if r.verdict == "fail":
            ET.SubElement(tc, "failure", message=r.reason).text = "\n".join(r.evidence)
        elif r.verdict == "skip":
            ET.SubElement(tc, "skipped", message=r.reason)
        ET.SubElement(tc, "system-out").text = "\n".join(r.evidence)
    return bytes(ET.tostring(suite, encoding="utf-8", xml_declaration=True))
