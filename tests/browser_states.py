"""What the browser tests check in every state of the reset page: axe-core finds nothing, the
outcome is in view, not covered and focused (or described by the focused control), contrast
holds in the scheme the page is shown in; and a screenshot of what the user sees is kept.

axe-core is installed from the npm registry into ``tests/.npm-clients/axe`` on first use (as
test_clients_js.py installs its client). Screenshots go to ``$OMS_AUTH_ARTIFACTS``, by default
``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AXE_PACKAGE = "axe-core@4.14.1"
AXE_DIR = Path(__file__).parent / ".npm-clients" / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("OMS_AUTH_ARTIFACTS") or Path(__file__).parent / "artifacts")


@dataclass(frozen=True)
class Setup:
    """One way a person sees the page: screen, scheme, language, time zone."""

    width: int
    height: int
    scheme: str
    browser_locale: str
    timezone: str
    user_locale: str | None  # the user record's; the page prefers it to the browser's
    page_language: str  # what the page must then speak
    zone: str  # how the expiry's time zone must read
    scale: float = 1
    mobile: bool = False

    def context_options(self) -> dict[str, Any]:
        return {
            "viewport": {"width": self.width, "height": self.height},
            "device_scale_factor": self.scale,
            "is_mobile": self.mobile,
            "has_touch": self.mobile,
            "color_scheme": self.scheme,
            "locale": self.browser_locale,
            "timezone_id": self.timezone,
        }


SETUPS = {
    # A phone, light: English from the browser (the user has no locale).
    "phone": Setup(390, 844, "light", "en-US", "America/New_York", None, "en", r"E[SD]T", 3, True),
    # A phone, dark: the user's German wins over the browser's English.
    "phone-dark": Setup(390, 844, "dark", "en-GB", "Europe/Berlin", "de", "de", r"MES?Z", 3, True),
    # A desktop window: the user's English wins over the browser's German.
    "desktop": Setup(1280, 800, "light", "de-DE", "UTC", "en", "en", r"UTC"),
    # The same window at 200% zoom (half the CSS pixels each way), dark, German from the browser.
    "zoom-200": Setup(640, 400, "dark", "de-AT", "Asia/Tokyo", None, "de", r"GMT\+9", 2),
}


def axe_source() -> str:
    """axe-core's script, installed on first use."""
    installed = AXE_DIR / "node_modules" / "axe-core" / "package.json"
    wanted = AXE_PACKAGE.rsplit("@", 1)[1]
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        if shutil.which("npm") is None:
            pytest.skip("axe-core is installed with npm, and there is no npm")
        AXE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", AXE_PACKAGE],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return AXE_JS.read_text()


async def axe_violations(page: Any, source: str) -> list[str]:
    """Every axe-core violation on the page as it is now, one line per rule and element.
    Injected with evaluate, not a script tag: the page's own CSP refuses inline scripts."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(source)
    found = await page.evaluate(
        """async () => {
            const r = await axe.run(document, { resultTypes: ["violations"] });
            return r.violations.flatMap((v) => v.nodes.map(
                (n) => `${v.id}: ${n.target.join(" ")}: ${n.failureSummary}`));
        }"""
    )
    return list(found)


_PLACE = """(selector) => {
    const el = document.querySelector(selector);
    if (!el) return null;
    const seen = (r) => r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0
        && r.bottom <= innerHeight + 0.5 && r.right <= innerWidth + 0.5;
    const box = el.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    const active = document.activeElement;
    const described = (active.getAttribute("aria-describedby") || "").split(/\\s+/);
    return {
        visible: seen(box),
        uncovered: hit !== null && el.contains(hit),
        focused: active === el || described.includes(el.id),
        activeVisible: seen(active.getBoundingClientRect()),
        active: active.id || active.tagName,
        text: el.innerText,
    };
}"""


async def placement(page: Any, selector: str) -> dict[str, Any]:
    place = await page.evaluate(_PLACE, selector)
    assert place is not None, f"{selector} is not on the page"
    return dict(place)


class States:
    """Checks one page state after another and keeps a screenshot of each."""

    def __init__(self, name: str, axe: str) -> None:
        self.folder = ARTIFACTS / re.sub(r"[^\w.-]+", "-", name).strip("-")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.axe = axe
        self.count = 0

    async def check(self, page: Any, state: str, outcome: str | None = None) -> dict[str, Any]:
        """No axe violation; with ``outcome`` (a selector), that element is fully in view, not
        covered, and focused or the description of the focused control, which is in view too.
        Returns where the outcome is (and its text)."""
        self.count += 1
        if outcome is not None:
            await page.locator(outcome).wait_for()  # an answer from the server, maybe
        # In CSS pixels: what the layout is, at a quarter of the bytes a phone screen takes.
        shot = self.folder / f"{self.count:02d}-{state}.png"
        await page.screenshot(path=str(shot), scale="css")
        violations = await axe_violations(page, self.axe)
        assert violations == [], f"{state}: " + "\n".join(violations)
        if outcome is None:
            return {}
        place = await placement(page, outcome)
        assert place["visible"], f"{state}: {outcome} is not in view"
        assert place["uncovered"], f"{state}: {outcome} is covered"
        assert place["focused"], f"{state}: {outcome} has no focus ({place['active']} has)"
        assert place["activeVisible"], f"{state}: the focused {place['active']} is not in view"
        return place


# -- contrast, for what axe does not judge: icons, focus rings, input borders -------------------


def _rgb(css: str) -> tuple[float, float, float]:
    match = re.match(r"rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)", css)
    assert match, css
    assert match[4] is None or float(match[4]) == 1, f"translucent colour {css}"
    return float(match[1]), float(match[2]), float(match[3])


def _luminance(css: str) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2.2 contrast ratio of two CSS colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


_COLOURS = """() => {
    const style = (el, pseudo) => getComputedStyle(el, pseudo);
    const active = document.activeElement;
    return {
        background: style(document.body).backgroundColor,
        marks: [...document.querySelectorAll("#rules li")].map(
            (li) => [li.dataset.state, style(li.querySelector(".mark")).color, style(li).color]),
        ring: [style(active).outlineStyle, style(active).outlineWidth, style(active).outlineColor],
        border: style(document.querySelector("#confirm")).borderTopColor,
        field: style(document.querySelector("#confirm")).backgroundColor,
    };
}"""


async def assert_contrast(page: Any) -> None:
    """Rule marks and texts 4.5:1 (they are characters), the focus ring of the focused field
    and the input borders 3:1 (WCAG 1.4.11), all against the page's background."""
    c = await page.evaluate(_COLOURS)
    bg = c["background"]
    states = {state for state, _, _ in c["marks"]}
    assert {"ok", "bad"} <= states, f"check contrast with met and unmet rules, not {states}"
    for state, mark, text in c["marks"]:
        assert contrast(mark, bg) >= 4.5, f"{state} mark {mark} on {bg}"
        assert contrast(text, bg) >= 4.5, f"{state} rule {text} on {bg}"
    style, width, colour = c["ring"]
    assert style != "none" and float(width.removesuffix("px")) >= 2, c["ring"]
    assert contrast(colour, bg) >= 3, f"focus ring {colour} on {bg}"
    assert contrast(c["border"], bg) >= 3 and contrast(c["border"], c["field"]) >= 3, c
