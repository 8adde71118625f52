"""The console's alert switches (desktop notifications, ring sound): shown as the agent saved them, saved
through ``console/alerts/`` with the session and the CSRF token. The browser side: tests/e2e/test_console_alerts.py."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Agent
from tests.factories import make_agent

pytestmark = pytest.mark.django_db
URL = "/console/alerts/"


def post(client, body, **extra):
    return client.post(URL, data=json.dumps(body), content_type="application/json", **extra)


def switch(html: str, name: str) -> str:
    [tag] = re.findall(rf'<input[^>]*id="alerts-{name}"[^>]*>', html)
    return tag


def test_it_starts_with_notifications_on_and_the_ring_off():
    agent = make_agent()
    assert (agent.desktop_notifications, agent.ring_sound) == (True, False)


def test_it_shows_the_switches_as_the_agent_saved_them(client):
    agent = make_agent(desktop_notifications=False, ring_sound=True)
    client.force_login(agent.user)
    html = client.get("/").content.decode()
    assert "checked" not in switch(html, "desktop")
    assert "checked" in switch(html, "sound")
    assert 'data-save-url="/console/alerts/"' in html
    assert 'id="alerts-enable"' in html and "Enable desktop notifications" in html


def test_it_saves_both_switches_for_the_agent(client):
    agent = make_agent()
    client.force_login(agent.user)
    response = post(client, {"desktop": False, "sound": True})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "desktop": False, "sound": True}
    agent.refresh_from_db()
    assert (agent.desktop_notifications, agent.ring_sound) == (False, True)
    assert "checked" in switch(client.get("/").content.decode(), "sound")


def test_it_saves_one_switch_and_leaves_the_other_as_it_is(client):
    agent = make_agent(desktop_notifications=False)
    client.force_login(agent.user)
    assert post(client, {"sound": True}).json() == {"ok": True, "desktop": False, "sound": True}
    agent.refresh_from_db()
    assert (agent.desktop_notifications, agent.ring_sound) == (False, True)


def test_it_saves_only_the_agents_own_switches(client):
    agent, other = make_agent(), make_agent()
    client.force_login(agent.user)
    post(client, {"desktop": False})
    other.refresh_from_db()
    assert other.desktop_notifications is True


@pytest.mark.parametrize("body", [{"desktop": "false"}, {"desktop": 0}, {"volume": True}, ["desktop"], "x"])
def test_it_rejects_a_body_that_is_not_the_two_switches_and_changes_nothing(client, body):
    agent = make_agent()
    client.force_login(agent.user)
    response = post(client, body)
    assert response.status_code == 400 and response.json()["ok"] is False
    agent.refresh_from_db()
    assert (agent.desktop_notifications, agent.ring_sound) == (True, False)


def test_it_rejects_a_body_that_is_not_json(client):
    client.force_login(make_agent().user)
    response = client.post(URL, data="{not json", content_type="application/json")
    assert response.status_code == 400


def test_it_refuses_a_post_without_the_csrf_token():
    agent = make_agent()
    client = Client(enforce_csrf_checks=True)
    client.force_login(agent.user)
    assert post(client, {"desktop": False}).status_code == 403
    # With the page's token, as alerts.js sends it, the same request passes.
    html = client.get("/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    assert post(client, {"desktop": False}, HTTP_X_CSRFTOKEN=token).status_code == 200
    assert Agent.objects.get(pk=agent.pk).desktop_notifications is False


def test_it_sends_an_anonymous_visitor_to_the_login_page(client):
    response = post(client, {"desktop": False})
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_it_refuses_a_user_without_an_agent_profile(client):
    admin = get_user_model().objects.create_superuser("boss", password="x-123-456-789")
    client.force_login(admin)
    response = post(client, {"desktop": False})
    assert response.status_code == 403 and "not set up as an agent" in response.json()["error"]
    assert 'id="alerts"' not in client.get("/").content.decode()  # a supervisor with no calls of their own


def test_it_takes_only_a_post(client):
    client.force_login(make_agent().user)
    assert client.get(URL).status_code == 405
