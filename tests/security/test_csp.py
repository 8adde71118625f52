"""A Content-Security-Policy on every page, and pages that need no exception to it.

With ``script-src 'self'`` and ``style-src 'self'`` (no 'unsafe-inline'), markup slipped into a page
(a caller name, a CRM field) can run no script and load nothing from elsewhere. That holds only if
the pages themselves have no inline script, no event-handler attribute and no inline style:
console_voicemail.html had a <style> block. Both are checked here, on the header and on the pages.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.factories import make_agent

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def policy(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy")
    assert header, f"no Content-Security-Policy on {response.request['PATH_INFO']}"
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


class InlineFinder(HTMLParser):
    """Every inline script, inline style, style attribute, event handler and javascript: URL in a page."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._in_script_without_src = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and "src" not in attributes:
            self._in_script_without_src = True
        if tag == "style":
            self.found.append("<style>")
        for name, value in attrs:
            if name == "style":
                self.found.append(f"<{tag} style=...>")
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script_without_src = False

    def handle_data(self, data):
        if self._in_script_without_src and data.strip():
            self.found.append(f"<script>{data.strip()[:40]}")


def inline_content(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    return finder.found


def test_it_sends_a_policy_that_allows_scripts_and_styles_only_from_the_hub(client):
    directives = policy(client.get("/login/"))
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'self'"] and directives["form-action"] == ["'self'"]
    assert not any("unsafe" in value or value == "*" for values in directives.values() for value in values)


def test_it_sends_the_policy_on_every_kind_of_page(client):
    boss = make_agent("boss", is_supervisor=True)
    boss.user.is_staff = boss.user.is_superuser = True
    boss.user.save()
    assert policy(client.get("/api/schema/"))["script-src"] == ["'self'"]
    assert policy(client.post("/api/retailcrm/make-call"))["script-src"] == ["'self'"]
    client.force_login(boss.user)
    for url in ("/", "/wallboard/", "/admin/", "/admin/telephony/pbxaccount/", "/enduser/voicemails/", "/history/"):
        assert policy(client.get(url))["script-src"] == ["'self'"], url


def test_it_serves_pages_with_nothing_inline_for_the_policy_to_block(client):
    pages = {"/login/": client.get("/login/")}
    agent = make_agent("carol")
    client.force_login(agent.user)
    pages["/ (agent)"] = client.get("/")
    pages["/history/ (agent)"] = client.get("/history/")
    boss = make_agent("boss", is_supervisor=True)
    client.force_login(boss.user)
    pages["/wallboard/"] = client.get("/wallboard/")
    pages["/ (supervisor)"] = client.get("/")
    pages["/history/ (supervisor)"] = client.get("/history/")
    for label, response in pages.items():
        assert response.status_code == 200, label
        assert inline_content(response.content.decode()) == [], label


@pytest.mark.parametrize("template", sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.html")))
def test_it_keeps_every_template_free_of_inline_script_and_style(template):
    source = (TEMPLATES / template).read_text()
    without_template_tags = re.sub(r"{%.*?%}|{#.*?#}|{{.*?}}", "", source, flags=re.S)
    assert inline_content(without_template_tags) == [], template
