"""The dashboard in a real browser: Playwright driving Debian's chromium against the console
of a paper bot trading on the simulator. Log in, see the equity chart and positions, kill at
level ``cancel`` with a reason (HALTED on the page within 2 s, audited as channel ``http``),
resume, a POST without its CSRF token refused, a wrong password refused and rate-limited, and
the overview at phone width. Screenshots go to ``tests/artifacts/console/``."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.console_helpers import PASSWORD, Stack, paper_stack, query

CHROMIUM = os.environ.get("STACKBOT_CHROMIUM") or shutil.which("chromium") \
    or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

NO_BROWSER = "no chromium on PATH (.ci/system-packages installs Debian's)"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)


@pytest.fixture(scope="module")
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with paper_stack(pg_url, tmp_path_factory.mktemp("console-ui"), "cui") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _log_in(page: object, url: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/")  # type: ignore[attr-defined]
    page.fill("input[name=username]", "operator")  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]


def _http_kills(db: str, account: str) -> list[dict[str, object]]:
    rows = query(db, "SELECT payload FROM audit_events WHERE account=$1 AND "
                 "kind='risk.state_changed' ORDER BY seq", account)
    return [p for p in (json.loads(r["payload"]) for r in rows) if p.get("channel") == "http"]


def _showing_a_position(page: object, within: float = 60.0) -> None:
    """The bot goes on trading while the page is read, so between two candles it can be flat:
    reload until the page shows a position with its working stop (the bot re-enters within a
    few simulated candles). A page that never lists one fails here."""
    deadline = time.monotonic() + within
    while True:
        held = page.inner_text("#positions")  # type: ignore[attr-defined]
        order = page.locator("#orders tbody tr td").first.inner_text()  # type: ignore[attr-defined]
        if "USDT" in held and order != "none":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no position with a working order shown in {within:.0f} s: "
                                 f"positions {held!r}, first order cell {order!r}")
        time.sleep(0.5)
        page.reload()  # type: ignore[attr-defined]
        page.wait_for_selector("#state-banner")  # type: ignore[attr-defined]


def test_operator_logs_in_kills_and_resumes(stack: Stack, browser: object) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(f"{stack.url}/")
    assert page.url.endswith("/login")  # not logged in: sent to the login page
    _log_in(page, stack.url)
    page.wait_for_selector("#state-banner")
    assert page.inner_text("#state") == "ACTIVE"
    # the equity chart is drawn, and the position is listed
    assert page.locator("svg.chart path.equity").count() == 1
    assert page.locator("svg.chart path.drawdown").count() == 1
    _showing_a_position(page)
    assert page.locator("#positions tbody tr").count() >= 1
    assert "USDT" in page.inner_text("#positions")
    assert page.locator("#orders tbody tr td").first.inner_text() != "none"
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    # kill at level cancel, with a reason, through the confirmation step
    page.check("input[name=level][value=cancel]")
    page.fill("#kill-reason", "browser kill test")
    page.click("#kill")
    page.wait_for_selector("#confirm-kill")
    assert page.inner_text("#confirm-level") == "cancel"
    page.screenshot(path=str(ARTIFACTS / "confirm.png"))
    pressed = time.monotonic()
    page.click("#confirm-kill")
    # (locators, not wait_for_function: the page's CSP forbids the eval that would need)
    expect(page.locator("#state")).to_have_text("HALTED", timeout=2000)
    assert time.monotonic() - pressed < 2.0
    assert "browser kill test" in page.inner_text("#state-reason")
    page.screenshot(path=str(ARTIFACTS / "halted.png"), full_page=True)
    kills = [p for p in _http_kills(stack.db, stack.account) if p["to"] == "HALTED"]
    # the request (latched at once) and, from the running bot, its carrying out: both http
    assert kills and kills[0]["level"] == "cancel" and kills[0]["request_id"]
    assert all(k["operator"] == "operator" and "browser kill test" in str(k["reason"])
               for k in kills)

    # a POST without the CSRF token is refused, and changes nothing
    refused = page.request.post(f"{stack.url}/resume", form={"reason": "forged"})
    assert refused.status == 403
    refused_api = page.request.post(f"{stack.url}/api/v1/resume", data={"reason": "forged"})
    assert refused_api.status == 403
    page.reload()
    assert page.inner_text("#state") == "HALTED"

    # resume
    page.fill("#resume-reason", "browser resume test")
    page.click("#resume")
    expect(page.locator("#state")).to_have_text("ACTIVE", timeout=2000)
    resumed = [p for p in _http_kills(stack.db, stack.account) if p["to"] == "ACTIVE"]
    assert resumed and all("browser resume test" in str(p["reason"]) for p in resumed)

    # the other pages render
    for path, marker in (("/audit", "Audit trail"), ("/runs", "Runs"),
                         ("/models", "Model versions"), ("/reports", "Evaluate reports")):
        page.goto(f"{stack.url}{path}")
        assert marker in page.inner_text("h1")
    page.goto(f"{stack.url}/audit")
    page.click("#verify")
    # the whole chain, of every test's rows in this session's ledger
    expect(page.locator("#chain")).to_contain_text("intact", timeout=180_000)
    page.close()


def test_phone_width_has_no_sideways_scroll(stack: Stack, browser: object) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    _log_in(page, stack.url)
    page.wait_for_selector("#state-banner")
    page.wait_for_load_state("load")  # the stylesheet applied: measure the laid-out page
    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > 391)
        .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)""")
    assert width <= 390, f"the page is {width}px wide at phone width: {wide}"
    assert page.locator("#kill").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    page.close()


def test_wrong_password_is_refused_then_rate_limited(stack: Stack, browser: object) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    statuses = []
    for _ in range(4):  # the stack allows 3 failed logins a minute
        page.goto(f"{stack.url}/login")
        page.fill("input[name=username]", "operator")
        page.fill("input[name=password]", "not the password")
        with page.expect_response(lambda r: r.url.endswith("/login")
                                  and r.request.method == "POST") as answer:
            page.click("button[type=submit]")
        statuses.append(answer.value.status)
    assert statuses == [401, 401, 401, 429]
    assert "Too many failed logins" in page.inner_text("[role=alert]")
    page.screenshot(path=str(ARTIFACTS / "rate-limited.png"))
    context.close()
