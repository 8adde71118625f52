"""clientId encrypted at rest, step 1 of 3: a text column wide enough for its token, and the digest column."""

import crm_sync.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_sync', '0002_call_sync_outbox_routing'),
    ]

    operations = [
        migrations.AlterField(
            model_name='retailcrmintegration',
            name='client_id',
            field=models.TextField(default=crm_sync.models.new_client_id),
        ),
        migrations.AddField(
            model_name='retailcrmintegration',
            name='client_id_digest',
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
    ]
