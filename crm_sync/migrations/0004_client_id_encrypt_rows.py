"""clientId encrypted at rest, step 2 of 3: every stored clientId encrypted, and its lookup digest.

A migration of its own: on PostgreSQL, rows updated and the table altered in one
transaction can fail on pending trigger events. Already encrypted rows (a rerun)
are only given their digest.
"""

from django.db import migrations

from ctihub.lib.secrets import TOKEN_PREFIX, decrypt, encrypt


def encrypt_client_ids(apps, schema_editor):
    from crm_sync.models import client_id_digests

    Integration = apps.get_model('crm_sync', 'RetailCrmIntegration')
    for pk, stored in Integration.objects.values_list('pk', 'client_id'):
        plain = decrypt(stored) if stored.startswith(TOKEN_PREFIX) else stored
        Integration.objects.filter(pk=pk).update(client_id=encrypt(plain), client_id_digest=client_id_digests(plain)[0])


def decrypt_client_ids(apps, schema_editor):
    Integration = apps.get_model('crm_sync', 'RetailCrmIntegration')
    for pk, stored in Integration.objects.values_list('pk', 'client_id'):
        if stored.startswith(TOKEN_PREFIX):
            Integration.objects.filter(pk=pk).update(client_id=decrypt(stored))


class Migration(migrations.Migration):

    dependencies = [
        ('crm_sync', '0003_client_id_encrypted_prepare'),
    ]

    operations = [
        migrations.RunPython(encrypt_client_ids, decrypt_client_ids),
    ]
