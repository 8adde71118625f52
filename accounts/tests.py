"""Pages: logging in and out, and what each kind of user is shown."""

import pytest
from django.contrib.auth import get_user_model

from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def test_it_sends_an_anonymous_visitor_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_it_logs_an_agent_in_to_the_console_and_out_again(client):
    agent = make_agent("carol")
    response = client.post("/login/", {"username": "carol", "password": "agent-pass-123"}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-page="console"' in html and 'id="cards"' in html and 'aria-live="polite"' in html
    assert 'value="free" selected' in html
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302
    assert agent.user.username == "carol"


def test_it_rejects_a_wrong_password_with_a_clear_message(client):
    make_agent("dave")
    response = client.post("/login/", {"username": "dave", "password": "nope"})
    assert "did not match" in response.content.decode()


def test_it_tells_a_user_without_an_agent_profile_what_to_ask_their_admin(client):
    user = get_user_model().objects.create_user("erin", password="erin-pass-123")
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 403
    assert "Ask your ctihub admin" in response.content.decode()


def test_it_shows_the_wallboard_to_supervisors_only(client):
    client.force_login(make_agent("frank").user)
    assert client.get("/wallboard/").status_code == 403
    client.force_login(make_agent("grace", is_supervisor=True).user)
    response = client.get("/wallboard/")
    assert response.status_code == 200 and 'id="fig-missed"' in response.content.decode()


def test_it_announces_a_status_change_once_it_is_committed(django_capture_on_commit_callbacks):
    from django.db import transaction

    from accounts.domain import set_agent_status
    from accounts.models import Agent
    from accounts.signals import agent_status_changed

    agent = make_agent("frank")
    heard = []

    def receiver(sender, agent, status, source, **kwargs):
        heard.append((sender, agent.pk, status, source, Agent.objects.get(pk=agent.pk).status))

    agent_status_changed.connect(receiver, weak=False, dispatch_uid="test-status")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            with transaction.atomic():
                set_agent_status(agent, "dinner", source="retailcrm")
            assert heard == []  # not committed yet
    finally:
        agent_status_changed.disconnect(dispatch_uid="test-status")
    assert heard == [(Agent, agent.pk, "dinner", "retailcrm", "dinner")]
