# The admin's health reads each integration's last upload (crm_sync.health): one step down this index.
# Built concurrently: the call syncs' table is the hub's biggest, and its writes must not wait for the build.

from django.db import migrations, models

from ctihub.lib.db_operations import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('crm_sync', '0006_crmcallsync_record_wait_until'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='crmcallsync',
            index=models.Index(fields=['integration', 'uploaded_at'], name='crm_call_sync_uploaded'),
        ),
    ]
