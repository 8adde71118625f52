"""retailCRM's clientId is a credential: encrypted at rest, found by a keyed digest, write-only in the admin."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from crm_sync import domain as crm_domain
from crm_sync.models import RetailCrmIntegration, client_id_digests
from crm_sync.retailcrm import payloads

pytestmark = pytest.mark.django_db

CLIENT_ID = "client-id-5e0c9b2a71f4"


def stored_row(pk: int) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT client_id, client_id_digest FROM crm_sync_retailcrmintegration WHERE id = %s", [pk])
        return cursor.fetchone()


def make(name: str = "shop", **fields) -> RetailCrmIntegration:
    return RetailCrmIntegration.objects.create(name=name, crm_url=f"https://{name}.retailcrm.ru", api_key="k", **fields)


def test_it_stores_the_client_id_encrypted_with_a_keyed_digest_beside_it():
    integration = make(client_id=CLIENT_ID)
    column, digest = stored_row(integration.pk)
    assert column.startswith("fernet:") and CLIENT_ID not in column
    assert digest == client_id_digests(CLIENT_ID)[0]
    assert digest != hashlib.sha256(CLIENT_ID.encode()).hexdigest()  # keyed: not computable from a guess
    assert RetailCrmIntegration.objects.get(pk=integration.pk).client_id == CLIENT_ID


def test_it_finds_only_an_enabled_integration_with_exactly_this_client_id():
    integration = make(client_id=CLIENT_ID)
    make("other")
    assert crm_domain.integration_for_client_id(CLIENT_ID) == integration
    for wrong in ("", CLIENT_ID[:-1], CLIENT_ID + "x", CLIENT_ID.upper()):
        assert crm_domain.integration_for_client_id(wrong) is None, wrong
    RetailCrmIntegration.objects.filter(pk=integration.pk).update(enabled=False)
    assert crm_domain.integration_for_client_id(CLIENT_ID) is None


def test_it_generates_a_client_id_when_none_is_given_and_keeps_the_digest_in_step():
    integration = make()
    assert len(integration.client_id) >= 32
    assert crm_domain.integration_for_client_id(integration.client_id) == integration
    integration.client_id = "client-id-rotated-by-hand"
    integration.save(update_fields=["client_id"])
    assert crm_domain.integration_for_client_id("client-id-rotated-by-hand") == integration
    assert crm_domain.integration_for_client_id(CLIENT_ID) is None


def test_it_still_finds_the_integration_after_the_field_key_rotates_and_moves_it_to_the_new_key(settings):
    integration = make(client_id=CLIENT_ID)
    old_digest = stored_row(integration.pk)[1]
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.FIELD_ENCRYPTION_KEYS]
    assert crm_domain.integration_for_client_id(CLIENT_ID) == integration
    new_digest = stored_row(integration.pk)[1]
    assert new_digest != old_digest and new_digest == client_id_digests(CLIENT_ID)[0]
    assert crm_domain.integration_for_client_id(CLIENT_ID + "x") is None


def test_it_sends_retailcrm_the_client_id_itself_on_registration():
    integration = make(client_id=CLIENT_ID)
    payload = payloads.registration_payload(RetailCrmIntegration.objects.get(pk=integration.pk), [], [])
    assert payload["clientId"] == CLIENT_ID


def integration_form(integration: RetailCrmIntegration, **changes) -> dict:
    return {
        "name": integration.name, "crm_url": integration.crm_url, "api_key": "", "client_id": "",
        "module_code": "ctihub", "enabled": "", "time_zone": "",
        "external_phones-TOTAL_FORMS": "0", "external_phones-INITIAL_FORMS": "0", **changes,
    }


def test_it_keeps_the_client_id_write_only_in_the_admin(admin_client):
    added = admin_client.post(reverse("admin:crm_sync_retailcrmintegration_add"), {
        **integration_form(RetailCrmIntegration(name="shop", crm_url="https://shop.retailcrm.ru")), "api_key": "k",
    })
    assert added.status_code == 302, added.content.decode()[:2000]
    integration = RetailCrmIntegration.objects.get(name="shop")
    generated = integration.client_id
    assert len(generated) >= 32  # left blank: generated
    url = reverse("admin:crm_sync_retailcrmintegration_change", args=[integration.pk])
    page = admin_client.get(url).content.decode()
    assert generated not in page and generated[-4:] not in page
    assert integration.client_id_fingerprint in page

    assert admin_client.post(url, integration_form(integration, name="renamed")).status_code == 302
    integration.refresh_from_db()
    assert (integration.name, integration.client_id) == ("renamed", generated)  # blank keeps it

    assert admin_client.post(url, integration_form(integration, client_id=CLIENT_ID)).status_code == 302
    assert crm_domain.integration_for_client_id(CLIENT_ID) is None  # disabled by the form above
    RetailCrmIntegration.objects.filter(pk=integration.pk).update(enabled=True)
    assert crm_domain.integration_for_client_id(CLIENT_ID) == integration
    assert crm_domain.integration_for_client_id(generated) is None


@pytest.mark.django_db(transaction=True)
def test_it_encrypts_client_ids_stored_before_the_migration_and_decrypts_them_going_back():
    current = make(client_id=CLIENT_ID)
    executor = MigrationExecutor(connection)
    before = [("crm_sync", "0002_call_sync_outbox_routing")]
    executor.migrate(before)
    with connection.cursor() as cursor:
        cursor.execute("SELECT client_id FROM crm_sync_retailcrmintegration WHERE id = %s", [current.pk])
        assert cursor.fetchone() == (CLIENT_ID,)  # the way back decrypts
    Legacy = executor.loader.project_state(before).apps.get_model("crm_sync", "RetailCrmIntegration")
    legacy = Legacy.objects.create(name="legacy", crm_url="https://legacy.retailcrm.ru", api_key="k",
                                   client_id="legacy-client-id-0042")

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    for pk, client_id in ((current.pk, CLIENT_ID), (legacy.pk, "legacy-client-id-0042")):
        column, digest = stored_row(pk)
        assert column.startswith("fernet:") and client_id not in column
        assert crm_domain.integration_for_client_id(client_id).pk == pk
