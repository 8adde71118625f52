"""Over HTTP: admin-only configuration, supervisor-only pages, and an agent kept to their own data.

The websocket side (an agent's cards, forged subscriptions, actions on another
agent's call) is proven in telephony/tests/test_console_consumer.py; the
retailCRM endpoints' clientId checks in crm_sync/tests/test_views.py.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from crm_sync import recordings
from crm_sync.models import RetailCrmIntegration
from telephony.models import PbxAccount
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(db):
    account = make_account(password="pbx-password-xyz")
    alice, bob = make_agent("alice"), make_agent("bob")
    terminal = make_terminal(account, agent=bob)
    bobs_call = make_call(account, agent=bob, terminal=terminal, remote_number_e164="+33412345670")
    integration = RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.ru",
                                                      api_key="crm-api-key-xyz")
    return {"account": account, "alice": alice, "bob": bob, "call": bobs_call, "integration": integration}


def admin_urls(world) -> list[str]:
    urls = []
    for model in admin.site._registry:
        info = model._meta.app_label, model._meta.model_name
        urls.append(reverse("admin:%s_%s_changelist" % info))
        urls.append(reverse("admin:%s_%s_add" % info))
    for obj in (world["account"], world["integration"], world["call"]):
        urls.append(reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk]))
    return urls


def test_it_keeps_every_admin_page_from_an_agent(client, world):
    client.force_login(world["alice"].user)
    for url in admin_urls(world):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    response = client.post(reverse("admin:telephony_pbxaccount_change", args=[world["account"].pk]),
                           {"name": "taken over"})
    assert response.status_code == 302
    assert PbxAccount.objects.get(pk=world["account"].pk).name == world["account"].name


def test_it_keeps_the_wallboard_for_supervisors(client, world):
    client.force_login(world["alice"].user)
    assert client.get("/wallboard/").status_code == 403
    world["alice"].is_supervisor = True
    world["alice"].save()
    assert client.get("/wallboard/").status_code == 200


def test_it_shows_an_agent_no_other_agents_call_on_any_page(client, world):
    client.force_login(world["alice"].user)
    for url in ("/", "/wallboard/", "/enduser/voicemails/", "/history/", "/history/?agent=%d" % world["bob"].pk):
        response = client.get(url)
        assert response.status_code < 500, url
        assert b"+33412345670" not in response.content, url


def test_it_refuses_an_agent_the_voicemail_box_of_another_agent(client, world):
    box = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER)
    make_terminal(box, agent=world["bob"])
    client.force_login(world["alice"].user)
    for url in (f"/enduser/voicemails/{box.pk}/123/read", f"/enduser/voicemails/{box.pk}/123/delete",
                f"/enduser/voicemails/{box.pk}/123/call-me"):
        assert client.post(url, content_type="application/json").status_code == 404, url
    assert client.get(f"/enduser/voicemails/{box.pk}/123.ogg").status_code == 404


def test_it_asks_anonymous_visitors_to_log_in_everywhere_but_the_public_endpoints(client, world):
    for url in ("/", "/wallboard/", "/enduser/voicemails/", "/admin/", "/history/", "/history/calls.csv"):
        response = client.get(url)
        assert response.status_code == 302 and "login" in response["Location"], url


def test_it_plays_a_recording_only_for_a_genuine_link(client, world):
    call = world["call"]
    token = recordings.sign_call(call.pk)
    other = recordings.sign_call(call.pk + 1)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get(f"/api/retailcrm/records/{forged}").status_code == 404
    swapped = f"{call.pk + 1}:{token.split(':', 1)[1]}"  # another call's id under this call's signature
    assert client.get(f"/api/retailcrm/records/{swapped}").status_code == 404
    assert client.get(f"/api/retailcrm/records/{other}").status_code == 404  # genuine, but no such call
