"""SPEC section 5: a person opens the emailed link in a real browser (headless Chromium)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from oms_auth.app import App
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, parse_mail, wait_for_mail

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Closed network: keep Chromium from reaching out (see the machine notes in README).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def emailed_link(app: App, username: str, maildir: Path) -> str:
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        assert (await c.call("ResetPassword", {"UserName": username})).o["result"] is True
    (path,) = await wait_for_mail(maildir, 1)
    return str(parse_mail(path)["link"])


async def test_a_person_resets_a_password_through_the_emailed_link(
    app: App, browser: Any, tmp_path: Path
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "alice")
    link = await emailed_link(app, "alice", tmp_path / "mail")
    page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    response = await page.goto(link)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    await page.wait_for_selector("#form:not([hidden])")
    assert await page.get_attribute("#password", "autocomplete") == "new-password"
    assert await page.get_attribute("#confirm", "autocomplete") == "new-password"
    assert await page.is_hidden("#question-field") and await page.is_hidden("#totp-field")

    # A password that breaks rules: the page shows which, as the user types.
    await page.fill("#password", "short")
    await page.fill("#confirm", "shor")
    await page.screenshot(path=str(tmp_path / "reset-typing.png"), full_page=True)
    over_eight = page.locator("#rules li", has_text="be over eight characters long")
    assert await over_eight.get_attribute("data-state") == "bad"
    assert await page.locator("#rules li", has_text="lowercase").get_attribute("data-state") == "ok"
    # One the page cannot judge (the common-password list) is refused by the server, in words.
    await page.fill("#password", "Password123!")
    await page.fill("#confirm", "Password123!")
    assert await over_eight.get_attribute("data-state") == "ok"
    await page.click("#submit")
    outcome = page.locator("#outcome[data-outcome=error]")
    await outcome.wait_for()
    assert "commonly used password" in await outcome.inner_text()

    await page.fill("#password", "Fresh-Start42")
    await page.fill("#confirm", "Fresh-Start42")
    await page.click("#submit")
    done = page.locator("#outcome[data-outcome=success]")
    await done.wait_for()
    assert "password has been changed" in await done.inner_text()
    await page.screenshot(path=str(tmp_path / "reset-done.png"), full_page=True)
    assert errors == []

    async with await Client.connect(app.url) as c:
        reply = await c.call("AuthenticateUser", {"UserName": "alice", "Password": "Fresh-Start42"})
        assert reply.o["Authenticated"] is True

    # The link is used up: opening it again says so in plain words.
    again = await browser.new_page()
    await again.goto(link)
    expired = again.locator("#outcome[data-outcome=error]")
    await expired.wait_for()
    assert "expired or has already been used" in await expired.inner_text()


async def test_the_page_asks_for_the_question_and_the_totp_code_where_needed(
    app: App, browser: Any, tmp_path: Path, clock: Clock
) -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DP"
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(
        app.deps, "bob", totp_secret=secret, question="Name of your first pet?", answer="Rex"
    )
    link = await emailed_link(app, "bob", tmp_path / "mail")
    page = await browser.new_page()
    await page.goto(link)
    await page.wait_for_selector("#form:not([hidden])")
    assert await page.inner_text("#question-label") == "Name of your first pet?"
    assert await page.is_visible("#totp-field")
    await page.fill("#password", "Fresh-Start42")
    await page.fill("#confirm", "Fresh-Start42")
    await page.fill("#answer", "Cat")
    await page.fill("#totp", pyotp.TOTP(secret).at(int(clock())))
    await page.click("#submit")
    wrong = page.locator("#outcome[data-outcome=error]")
    await wrong.wait_for()
    assert "security question is not right" in await wrong.inner_text()
    await page.fill("#answer", "rex")
    await page.click("#submit")
    await page.locator("#outcome[data-outcome=success]").wait_for()


async def test_an_incomplete_link_says_what_to_do(app: App, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(app.public_url + "/reset")
    box = page.locator("#outcome[data-outcome=error]")
    await box.wait_for()
    assert "incomplete" in await box.inner_text()
