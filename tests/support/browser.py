"""A real browser for end-to-end tests: Debian's chromium driven by Playwright.

Playwright cannot download its own browsers here, so we point it at
/usr/bin/chromium (scripts/test installs it). The flags keep chromium off the
network: with background networking on, it tries to reach Google at start.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@pytest.fixture
def browser(monkeypatch):
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API parks an event loop on this thread; the test's own ORM calls
    # are still plain synchronous calls, so Django's async-safety alarm is a false one here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()
            _close_database_connections()


def _close_database_connections() -> None:
    """The database connection the test opened while Playwright ran (its own, not the test's usual one): left
    open, every hub's teardown waited its full 10 s for the test database's sessions to go."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # a non-transactional test's own: rolled back by pytest-django
            connection.close()


def wait_for_js(page, expression: str, timeout: float = 10000) -> None:
    """``page.wait_for_function`` for the hub's pages: Playwright's polls its expression with ``eval()``,
    which the hub's Content-Security-Policy (script-src 'self') forbids; ``page.evaluate`` goes through
    the DevTools protocol, which may evaluate it."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout / 1000:.0f}s")
        page.wait_for_timeout(100)


def csp_violations(page) -> list[str]:
    """What the browser refused on ``page`` under the Content-Security-Policy (watched from ``log_in`` on)."""
    return list(getattr(page, "ctihub_csp_violations", []))


def _watch_csp(page) -> None:
    if hasattr(page, "ctihub_csp_violations"):
        return
    page.ctihub_csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text
            and page.ctihub_csp_violations.append(message.text))


def log_in(page, base_url: str, username: str, password: str) -> None:
    _watch_csp(page)
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#connection[data-state=live]", timeout=15000)
