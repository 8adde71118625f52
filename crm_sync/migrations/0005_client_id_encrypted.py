"""clientId encrypted at rest, step 3 of 3: the field decrypts, and the digest is required and unique."""

import crm_sync.models
import ctihub.lib.secrets
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_sync', '0004_client_id_encrypt_rows'),
    ]

    operations = [
        migrations.AlterField(
            model_name='retailcrmintegration',
            name='client_id',
            field=ctihub.lib.secrets.EncryptedTextField(
                blank=True, default=crm_sync.models.new_client_id,
                help_text="retailCRM's credential on ctihub's endpoints, sent to it on registration.",
                verbose_name='client id'),
        ),
        migrations.AlterField(
            model_name='retailcrmintegration',
            name='client_id_digest',
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
    ]
