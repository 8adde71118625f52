# Built concurrently on PostgreSQL: calls are written all the time, and must not wait for the build.
from django.db import migrations, models

from ctihub.lib.db_operations import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('telephony', '0005_pbxaccount_kind_from_registry'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='call',
            index=models.Index(fields=['created_at'], name='call_created'),
        ),
    ]
