from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('telephony', '0005_pbxaccount_kind_from_registry'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='call',
            index=models.Index(fields=['created_at'], name='call_created'),
        ),
    ]
