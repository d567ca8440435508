"""docs/protocol.md, "The page behind the link": a person opens the emailed link in a real browser
(headless Chromium).

Every state the page can be in is checked on a phone (light and dark), on a desktop window and
at 200% zoom: axe-core finds nothing, the outcome is in view and has the focus, and a
screenshot of it is kept (see browser_states.py).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import pytest_asyncio

from oms_auth.app import App
from oms_auth.engine.passwords import not_common, not_username
from protocol.client import Client

from .browser_states import SETUPS, States, assert_contrast, axe_source, axe_violations, placement
from .helpers import PASSWORD, Clock, make_user, parse_mail, settings_for, wait_for_mail

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
LOGIN_URL = "https://exchange.example/login"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed: apt-get install -y chromium", allow_module_level=True)

# One Chromium for the module (each test has contexts of its own): starting one per test was a
# sixth of the module's time. Playwright is bound to its event loop, so the tests and the app
# share the module's loop too.
pytestmark = pytest.mark.asyncio(loop_scope="module")

# What the page must say, in each language it speaks (parts of its sentences).
WORDS = {
    "en": {
        "title": "Choose a new password",
        "length": "9 to 19 characters",
        "why": "so we also ask for the answer to your security question and a code",
        "too short": "Use 9 to 19 characters.",
        "mismatch": "The two passwords are not the same.",
        "not yet": "not the same yet",
        "match": "The passwords match.",
        "wrong answer": "That answer is not right.",
        "wrong code": "That code was not accepted.",
        "common": "This password is too common: choose one that is harder to guess.",
        "changed": "Your password has been changed",
        "login": "Go to login",
        "dead": "This link no longer works",
        "sent": "If there is an account with that username, we have sent a new link",
        "lost": "No connection to the server. Your password has not been changed.",
        "not sent": "Your password has not been changed: the server cannot be reached.",
    },
    "de": {
        "title": "Neues Passwort wählen",
        "length": "9 bis 19 Zeichen",
        "why": "fragen wir zusätzlich nach der Antwort auf Ihre Sicherheitsfrage und einem Code",
        "too short": "Verwenden Sie 9 bis 19 Zeichen.",
        "mismatch": "Die beiden Passwörter sind nicht gleich.",
        "not yet": "stimmen noch nicht überein",
        "match": "Die Passwörter stimmen überein.",
        "wrong answer": "Diese Antwort ist nicht richtig.",
        "wrong code": "Dieser Code wurde nicht angenommen.",
        "common": "Dieses Passwort ist zu verbreitet",
        "changed": "Ihr Passwort wurde geändert",
        "login": "Zur Anmeldung",
        "dead": "Dieser Link gilt nicht mehr",
        "sent": "Wenn es ein Konto mit diesem Benutzernamen gibt, haben wir einen neuen Link",
        "lost": "Keine Verbindung zum Server. Ihr Passwort wurde nicht geändert.",
        "not sent": "Ihr Passwort wurde nicht geändert: Der Server ist nicht erreichbar.",
    },
}


@pytest_asyncio.fixture(loop_scope="module")
async def app(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    """conftest's app, with a login page to send people to once their password is set."""
    service = App(settings_for(tmp_path, db=db, login_url=LOGIN_URL), clock=clock, login_delay=0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Any) -> AsyncIterator[Any]:
    """The module's Chromium; what a test opens with ``new_page`` is closed after it."""
    yield chromium
    for context in chromium.contexts:
        await context.close()


@pytest.fixture(scope="module")
def axe() -> str:
    return axe_source()


def console_errors(page: Any, expected: tuple[str, ...] = ()) -> list[str]:
    """The page's console errors and uncaught exceptions (a CSP refusal is one), as they come,
    less those starting with one of ``expected``."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith(expected):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


async def emailed_link(app: App, username: str, maildir: Path) -> str:
    async with await Client.connect(app.url) as c:
        await c.call("AuthenticateUser", {"UserName": "op", "Password": PASSWORD})
        assert (await c.call("ResetPassword", {"UserName": username})).o["result"] is True
    (path,) = await wait_for_mail(maildir, 1)
    return str(parse_mail(path)["link"])


async def newest_link(maildir: Path, count: int) -> str:
    """The link of the newest message holding one, once there are ``count`` messages."""
    for path in reversed(await wait_for_mail(maildir, count)):
        mail = parse_mail(path)
        if "link" in mail:
            return str(mail["link"])
    raise AssertionError("no message with a link")


async def opened(context: Any, link: str) -> Any:
    page = await context.new_page()
    await page.goto(link)
    await page.wait_for_selector("#form:not([hidden])")
    return page


async def fill(page: Any, fields: dict[str, str]) -> None:
    for name, value in fields.items():
        await page.fill(f"#{name}", value)


def rule(page: Any, kind: str) -> Any:
    return page.locator(f"#rules li[data-kind={kind}]")


async def test_a_person_resets_a_password_through_the_emailed_link(
    app: App, browser: Any, tmp_path: Path
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "alice")
    link = await emailed_link(app, "alice", tmp_path / "mail")
    page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    errors = console_errors(page)
    response = await page.goto(link)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    await page.wait_for_selector("#form:not([hidden])")
    # The blocklist the page loads is held to the page's own rules.
    blocklist = await page.request.get(app.public_url + "/reset-common.js")
    for header in ("cache-control", "referrer-policy", "content-security-policy"):
        assert blocklist.headers[header] == response.headers[header]
    assert blocklist.headers["content-encoding"] == "gzip"
    assert "\npassword\n" in (await blocklist.text()).replace("\\n", "\n")
    assert await page.get_attribute("#password", "autocomplete") == "new-password"
    assert await page.get_attribute("#confirm", "autocomplete") == "new-password"
    assert await page.is_hidden("#answer-field") and await page.is_hidden("#totp-field")
    assert await page.is_hidden("#identity")

    # A password that breaks rules: the page shows which, as the user types.
    await page.fill("#password", "short")
    await page.fill("#confirm", "shor")
    await page.screenshot(path=str(tmp_path / "reset-typing.png"), full_page=True)
    length = rule(page, "length")
    assert "9 to 19 characters" in await length.inner_text()
    assert await length.get_attribute("data-state") == "bad"
    assert await rule(page, "lower").get_attribute("data-state") == "ok"
    # The page knows the blocklist too: it says so before anything is sent.
    await page.fill("#password", "Password123!")
    await page.fill("#confirm", "Password123!")
    assert await length.get_attribute("data-state") == "ok"
    await page.wait_for_selector("#rules li[data-kind=common][data-state=bad]")
    await page.click("#submit")
    refusal = page.locator("#password-error[data-outcome=error]")
    await refusal.wait_for()
    assert "too common" in await refusal.inner_text()

    await page.fill("#password", "Fresh-Start42")
    await page.fill("#confirm", "Fresh-Start42")
    assert await refusal.count() == 0  # a fixed problem's message goes at once
    await page.click("#submit")
    done = page.locator("#outcome[data-outcome=success]")
    await done.wait_for()
    assert "password has been changed" in await page.inner_text("h1")
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
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(
        app.deps, "bob", totp_secret=SECRET, question="Name of your first pet?", answer="Rex"
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
    await page.fill("#totp", pyotp.TOTP(SECRET).at(int(clock())))
    await page.click("#submit")
    wrong = page.locator("#answer-error[data-outcome=error]")
    await wrong.wait_for()
    assert "answer is not right" in await wrong.inner_text()
    await page.fill("#answer", "rex")
    await page.click("#submit")
    await page.locator("#outcome[data-outcome=success]").wait_for()


async def test_on_a_phone_a_lost_phone_resets_with_a_recovery_code_instead(
    app: App, browser: Any, tmp_path: Path, clock: Clock
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "carol", totp_secret=SECRET, locale="de")
    async with await Client.connect(app.url) as c:
        step = await c.call("AuthenticateUser", {"UserName": "carol", "Password": PASSWORD})
        assert step.o["Requires2FA"] is True
        code = pyotp.TOTP(SECRET).at(int(clock()))
        assert (await c.call("Authenticate2FA", {"Code": code})).o["Authenticated"] is True
        codes = (await c.call("CreateRecoveryCodes", {})).o["RecoveryCodes"]
        assert (await c.call("ResetPassword", {"UserName": "carol"})).o["result"] is True
    link = await newest_link(tmp_path / "mail", 2)  # after the notice of the new codes
    page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    errors = console_errors(page)
    await page.goto(link)
    await page.wait_for_selector("#form:not([hidden])")
    switch = page.locator("#use-recovery")
    assert await switch.inner_text() == (
        "Telefon verloren? Stattdessen einen Wiederherstellungscode verwenden"
    )
    box = await switch.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    await switch.click()
    assert "Wiederherstellungscode" in await page.inner_text("#totp-label")
    assert await page.evaluate("document.activeElement.id") == "totp"
    assert await page.get_attribute("#totp", "inputmode") == "text"
    await page.fill("#password", "Fresh-Start42")
    await page.fill("#confirm", "Fresh-Start42")
    await page.fill("#totp", "123456")  # a TOTP code where a recovery code is asked
    await page.click("#submit")
    shaped = page.locator("#totp-error[data-outcome=error]")
    await shaped.wait_for()
    assert "12 Buchstaben und Ziffern" in await shaped.inner_text()
    await page.fill("#totp", "zzzz-zzzz-zzzz")  # shaped right, not one of hers
    await page.click("#submit")
    await page.locator("#totp-error[data-outcome=error]").wait_for()
    assert "Wiederherstellungscode wurde nicht angenommen" in await page.inner_text("#totp-error")
    await page.fill("#totp", codes[0].upper())
    await page.click("#submit")
    await page.locator("#outcome[data-outcome=success]").wait_for()
    await page.screenshot(path=str(tmp_path / "reset-recovery.png"), full_page=True)
    assert errors == []
    # Back to the app's code: the switch goes both ways.
    async with await Client.connect(app.url) as c:
        step = await c.call("AuthenticateUser", {"UserName": "carol", "Password": "Fresh-Start42"})
        assert step.o["Requires2FA"] is True
        assert (await c.call("Authenticate2FA", {"Code": codes[0]})).o["Authenticated"] is False


async def test_an_incomplete_link_says_what_to_do(app: App, browser: Any, axe: str) -> None:
    page = await browser.new_page()
    await page.goto(app.public_url + "/reset")
    box = page.locator("#outcome[data-outcome=error]")
    await box.wait_for()
    assert "incomplete" in await page.inner_text("h1")
    assert await page.is_visible("#resend")
    assert await axe_violations(page, axe) == []
    # ... and the check would have seen a problem (light grey text on white):
    await page.evaluate("document.querySelector('#outcome p').style.color = '#999'")
    assert any(v.startswith("color-contrast") for v in await axe_violations(page, axe))


@pytest.mark.parametrize("setup", list(SETUPS))
async def test_every_state_is_in_view_focused_and_accessible(
    app: App,
    browser: Any,
    axe: str,
    tmp_path: Path,
    clock: Clock,
    db: str,
    setup: str,
    request: pytest.FixtureRequest,
) -> None:
    s, w = SETUPS[setup], WORDS[SETUPS[setup].page_language]
    states = States(request.node.name, axe)
    maildir = tmp_path / "mail"
    await make_user(app.deps, "op", permissions=["Operator"])
    question = "Name of your first pet?"
    await make_user(
        app.deps, "carol", totp_secret=SECRET, question=question, answer="Rex", locale=s.user_locale
    )
    link = await emailed_link(app, "carol", maildir)

    def code() -> str:
        return str(pyotp.TOTP(SECRET).at(int(clock())))

    context = await browser.new_context(**s.context_options())
    # The blocklist never arrives here, so the server refuses a common password and the page
    # must turn that refusal into the rule it concerns.
    await context.route(
        "**/reset-common.js", lambda route: route.fulfill(body="", content_type="text/javascript")
    )
    page = await opened(context, link)
    errors = console_errors(page)

    # Initial: the heading, whose link it is and until when (in the user's time zone), the
    # rules, why the question and the code are asked; the focus in the first field.
    assert await page.evaluate("document.documentElement.lang") == s.page_language
    assert await page.inner_text("h1") == w["title"]
    status = await page.inner_text("#status")
    assert "carol" in status and w["title"] not in status
    assert re.search(s.zone, status), status
    assert w["why"] in await page.inner_text("#identity-why")
    assert await page.evaluate("document.activeElement.id") == "password"
    await states.check(page, "initial")

    # Typing: rules turn met or unmet as the user types, the username among them.
    await page.fill("#password", "carol")
    assert await rule(page, "username").get_attribute("data-state") == "bad"
    await page.fill("#password", "short")
    assert w["length"] in await rule(page, "length").inner_text()
    assert await rule(page, "length").get_attribute("data-state") == "bad"
    assert await rule(page, "lower").get_attribute("data-state") == "ok"
    assert await rule(page, "username").get_attribute("data-state") == "ok"
    assert await rule(page, "common").get_attribute("data-state") == "server"
    await states.check(page, "typing")
    await assert_contrast(page)

    # Enter with a weak password and nothing else filled: the broken rules come first.
    await page.press("#password", "Enter")
    place = await states.check(page, "weak-password", "#password-error[data-outcome=error]")
    assert w["too short"] in place["text"]
    assert await page.is_hidden("#confirm-error[data-outcome=error]")

    # Mismatch: said above the second field; fixing it leaves no stale message behind.
    await fill(page, {"password": "Fresh-Start42", "confirm": "Fresh-Start43"})
    await fill(page, {"answer": "Cat", "totp": code()})
    await page.click("#submit")
    place = await states.check(page, "mismatch", "#confirm-error[data-outcome=error]")
    assert w["mismatch"] in place["text"]
    await page.fill("#confirm", "Fresh-Start42")
    assert await page.inner_text("#match") == "\u2713 " + w["match"]
    assert w["not yet"] not in await page.inner_text("#form")
    assert await page.locator("[data-outcome]").count() == 0

    # A wrong answer, then a wrong code: each said at its field, which takes the focus.
    await page.click("#submit")
    place = await states.check(page, "wrong-answer", "#answer-error[data-outcome=error]")
    assert w["wrong answer"] in place["text"]
    await fill(page, {"answer": "rex", "totp": str(int(code()) ^ 1).zfill(6)})
    await page.press("#totp", "Enter")
    place = await states.check(page, "wrong-code", "#totp-error[data-outcome=error]")
    assert w["wrong code"] in place["text"]

    # The server refuses a common password: in a sentence, on the rule it concerns.
    await fill(page, {"password": "Password123!", "confirm": "Password123!", "totp": code()})
    await page.click("#submit")
    place = await states.check(page, "server-refusal", "#password-error[data-outcome=error]")
    assert w["common"] in place["text"] and place["text"].endswith(".")
    assert "portal" not in place["text"]
    assert await rule(page, "common").get_attribute("data-state") == "bad"

    # Success: the heading says so and the next step is offered.
    await fill(page, {"password": "Fresh-Start42", "confirm": "Fresh-Start42"})
    await page.click("#submit")
    place = await states.check(page, "success", "#outcome[data-outcome=success]")
    assert await page.inner_text("h1") == w["changed"]
    login = page.locator("#outcome a")
    assert (await login.inner_text(), await login.get_attribute("href")) == (w["login"], LOGIN_URL)

    # The used link: a dead end no more, it offers a new email.
    used = await context.new_page()
    errors += console_errors(used)
    await used.goto(link)
    await used.locator("#outcome[data-outcome=error]").wait_for()
    await states.check(used, "used-link", "#outcome[data-outcome=error]")
    # A dead link does not say whose it is, so the page speaks the browser's language.
    browser_words = WORDS[s.browser_locale.split("-")[0]]
    assert await used.inner_text("h1") == browser_words["dead"]
    await used.fill("#username", "carol")
    await used.click("#resend-submit")
    await used.locator("#resend-done:not([hidden])").wait_for()
    place = await states.check(used, "new-email-sent", "#resend-done")
    assert place["text"].startswith(browser_words["sent"])
    fresh = await newest_link(maildir, 3)  # the reset, the "changed" notice, the new link
    assert fresh != link

    # The server goes away while the page is open: a banner says so (without taking the focus
    # from the field being typed in); a send then fails, saying the password is unchanged.
    clock.advance(30)  # the first code was used up; the app takes the next one
    lost = await opened(context, fresh)
    errors += console_errors(lost, expected=("WebSocket connection to",))
    await lost.fill("#password", "Second-Start7")
    port = app.port
    await app.stop()
    banner = lost.locator("#connection")
    await banner.wait_for()
    assert w["lost"] in await banner.inner_text()
    assert await banner.get_attribute("role") == "alert"  # announced, without the focus
    place = await placement(lost, "#connection")
    assert place["visible"] and place["uncovered"] and place["active"] == "password"
    await states.check(lost, "connection-lost")
    await fill(lost, {"confirm": "Second-Start7", "answer": "Rex", "totp": code()})
    await lost.click("#submit")
    place = await states.check(lost, "send-failed", "#submit-error[data-outcome=error]")
    assert w["not sent"] in place["text"]

    # The server is back: the retry reconnects and the same form goes through.
    back = App(settings_for(tmp_path, db=db, port=port, login_url=LOGIN_URL), clock=clock)
    await back.start()
    try:
        await lost.click("#reconnect")
        await banner.wait_for(state="hidden")
        await lost.click("#submit")
        await lost.locator("#outcome[data-outcome=success]").wait_for()
    finally:
        await back.stop()
    await context.close()
    assert errors == []


async def test_the_page_checks_the_username_and_the_blocklist_as_the_server_does(
    app: App, browser: Any, tmp_path: Path
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    await make_user(app.deps, "Dora")
    page = await browser.new_page()
    await page.goto(await emailed_link(app, "Dora", tmp_path / "mail"))
    await page.wait_for_selector("#form:not([hidden])")
    await page.fill("#password", "x")
    await page.wait_for_selector("#rules li[data-kind=common]:not([data-state=server])")
    for password in [
        "dora",
        "DORA",
        "Dora1",
        "Password123!",
        "Summer2024!",
        "p@ssw0rd",
        "PAẞWORD1!",
        "Paßword1!",
        "Tr0ub4dor&3",
        "Fresh-Start42",
        "qwerty",
        "abc",
    ]:
        await page.fill("#password", password)
        states = {
            "username": not_username(password, "Dora"),
            "common": not_common(password, "Dora"),
        }
        for kind, ok in states.items():
            got = await rule(page, kind).get_attribute("data-state")
            assert got == ("ok" if ok else "bad"), (password, kind, got)


async def test_a_dead_link_gives_one_answer_whatever_the_username(
    app: App, browser: Any, tmp_path: Path
) -> None:
    await make_user(app.deps, "erin")
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    answers = []
    for name in ("nobody-by-this-name", "erin"):
        await page.goto(app.public_url + "/reset?UserId=2&PendingCode=not-a-code")
        await page.locator("#outcome[data-outcome=error]").wait_for()
        await page.fill("#username", name)
        await page.press("#username", "Enter")
        await page.locator("#resend-done:not([hidden])").wait_for()
        answers.append(await page.inner_text("#resend-done"))
    assert answers[0] == answers[1]
    (path,) = await wait_for_mail(tmp_path / "mail", 1)
    assert parse_mail(path)["to"] == "erin@example.test"


async def test_a_locked_account_is_said_at_the_top_with_the_focus(
    app: App, browser: Any, axe: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    await make_user(app.deps, "op", permissions=["Operator"])
    uid = await make_user(app.deps, "finn", question="Name of your first pet?", answer="Rex")
    link = await emailed_link(app, "finn", tmp_path / "mail")
    page = await opened(await browser.new_context(**SETUPS["phone-dark"].context_options()), link)
    code = link.rsplit("PendingCode=", 1)[1]
    async with await Client.connect(app.url) as c:
        for _ in range(app.settings.lockout_failures):
            wrong = {"UserId": uid, "Password": "Fresh-Start42", "PendingCode": code}
            await c.call("ResetPassword2", {**wrong, "SecurityQuestionAnswer": "Cat"})
    await fill(page, {"password": "Fresh-Start42", "confirm": "Fresh-Start42", "answer": "Rex"})
    await page.click("#submit")
    place = await States(request.node.name, axe).check(page, "locked", "#outcome[data-outcome]")
    assert await page.get_attribute("#outcome", "data-outcome") == "error"
    assert await page.inner_text("h1") == "Please try again later"
    assert "locked for 30 minutes" in place["text"] and await page.is_hidden("#form")
