"""The README's screenshots, taken from the demo so they stay true: ``.venv/bin/python scripts/screenshots.py``.

Starts ``manage.py runall`` on embedded defaults with demo traffic and the simulated retailCRM (a fresh
var dir, free ports), waits for calls, then drives Debian's chromium: alice's console with her cards,
the supervisor's wallboard and the call history. Writes ``docs/screenshots/{console,wallboard,history}.png``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test suite's helpers: one way to find a port, wait and start chromium

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.processes import free_port, wait_for  # noqa: E402

OUT = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}


def login(page, web: str, user: str, password: str) -> None:
    page.goto(f"{web}/login/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def main() -> None:
    from playwright.sync_api import sync_playwright

    var = Path(tempfile.mkdtemp(prefix="ctihub-screenshots-"))
    web_port, sim_port = free_port(), free_port()
    web = f"http://127.0.0.1:{web_port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CTIHUB_VAR_DIR=str(var), PYTHONUNBUFFERED="1", PUBLIC_BASE_URL=web)
    log = open(var / "runall.log", "wb")
    hub = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(web_port), "--simulator-port", str(sim_port),
         "--demo-traffic", "--demo-calls-per-minute", "90", "--demo-crm"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"ctihub is up" in (var / "runall.log").read_bytes(), 120, what="the demo to start")
        passwords = json.loads((var / "demo-agents.json").read_text())
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            agent = browser.new_page(viewport=VIEWPORT)
            login(agent, web, "alice", passwords["alice"])
            # A few demo calls in: recent calls and a live card on the console at the same time.
            wait_for(lambda: agent.locator("#recent li").count() > 0, 120, what="a recent call on alice's console")
            wait_for(lambda: agent.locator("#cards .card").count() > 0, 120, what="a card on alice's console")
            time.sleep(1)
            agent.screenshot(path=str(OUT / "console.png"))
            supervisor = browser.new_page(viewport=VIEWPORT)
            login(supervisor, web, "supervisor", passwords["supervisor"])
            supervisor.goto(f"{web}/wallboard/")
            time.sleep(20)  # the figures and the chart with some calls in them
            supervisor.screenshot(path=str(OUT / "wallboard.png"), full_page=True)
            supervisor.goto(f"{web}/history/")
            supervisor.wait_for_load_state("networkidle")
            supervisor.screenshot(path=str(OUT / "history.png"))
            browser.close()
        print(f"wrote {', '.join(str(p.relative_to(REPO)) for p in sorted(OUT.glob('*.png')))}")
    finally:
        os.killpg(hub.pid, signal.SIGINT)
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(hub.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
