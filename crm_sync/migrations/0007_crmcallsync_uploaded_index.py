# The admin's health reads each integration's last upload (crm_sync.health): one step down this index.
# Built concurrently: the call syncs' table is the hub's biggest, and its writes must not wait for the build.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """CONCURRENTLY on PostgreSQL (production); a plain index elsewhere (the embedded default's SQLite,
    where ``./scripts/run`` migrates), which has no such build."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return migrations.AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return migrations.AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


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
