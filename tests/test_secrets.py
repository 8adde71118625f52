import pytest
from django.db import connection

from crm_sync.models import RetailCrmIntegration
from ctihub.lib import secrets
from tests.factories import make_account

pytestmark = pytest.mark.django_db


def raw_column(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_it_stores_pbx_credentials_unreadable_in_the_database():
    account = make_account(password="hunter2-pbx", api_token="tok-telepo-123", webhook_secret="hook-abc")
    for column, plaintext in [("password", "hunter2-pbx"), ("api_token", "tok-telepo-123"), ("webhook_secret", "hook-abc")]:
        stored = raw_column("telephony_pbxaccount", column, account.pk)
        assert plaintext not in stored
        assert stored.startswith(secrets.TOKEN_PREFIX)
    account.refresh_from_db()
    assert account.password == "hunter2-pbx"
    assert account.api_token == "tok-telepo-123"


def test_it_stores_the_retailcrm_api_key_unreadable():
    integration = RetailCrmIntegration.objects.create(name="crm", crm_url="https://x.retailcrm.ru", api_key="rk-secret-999")
    assert "rk-secret-999" not in raw_column("crm_sync_retailcrmintegration", "api_key", integration.pk)
    integration.refresh_from_db()
    assert integration.api_key == "rk-secret-999"


def test_it_decrypts_with_an_older_key_after_rotation(settings):
    from cryptography.fernet import Fernet

    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    account = make_account(password="before-rotation")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]
    account.refresh_from_db()
    assert account.password == "before-rotation"


def test_it_refuses_clearly_when_the_key_is_wrong(settings):
    from cryptography.fernet import Fernet
    from django.core.exceptions import ImproperlyConfigured

    account = make_account(password="lost")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEY"):
        account.refresh_from_db()
