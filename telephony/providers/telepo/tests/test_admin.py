"""The admin tells whoever sets Telepo up where the PBX must post and how users are entered."""

import pytest

from telephony.models import PbxAccount
from tests.factories import make_account

pytestmark = pytest.mark.django_db


def test_it_shows_the_crm_connector_url_without_the_secret(admin_client, account, settings):
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    page = admin_client.get(f"/admin/telephony/pbxaccount/{account.pk}/change/").content.decode()
    assert "https://hub.example.com/api/telepo/webhook/&lt;webhook secret&gt;" in page
    assert "PBX id = userId" in page
    assert account.webhook_secret not in page


def test_it_warns_that_telepo_will_not_post_to_a_plain_http_url(admin_client, account, settings):
    # The spec: the CRM connector webhook URL must use HTTPS.
    settings.PUBLIC_BASE_URL = "http://hub.example.com"
    page = admin_client.get(f"/admin/telephony/pbxaccount/{account.pk}/change/").content.decode()
    assert "Telepo will not post to this URL" in page and "PUBLIC_BASE_URL" in page
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    page = admin_client.get(f"/admin/telephony/pbxaccount/{account.pk}/change/").content.decode()
    assert "Telepo will not post to this URL" not in page


def test_it_shows_no_telepo_hint_for_another_pbx(admin_client):
    other = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC)
    page = admin_client.get(f"/admin/telephony/pbxaccount/{other.pk}/change/").content.decode()
    assert "CRM connector webhook URL" not in page
