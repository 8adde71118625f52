"""Creates the demo superuser a newcomer logs in with, and prints its login.

Development only: the password is random per checkout and kept in var/ so that
every run prints the same one.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "admin"


class Command(BaseCommand):
    help = "Create (or reset) the demo admin and print its credentials. Refused when DEBUG is false."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("refusing to create a demo admin with DEBUG=false; use createsuperuser")
        password_file = settings.VAR_DIR / "demo-admin-password"
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            password_file.write_text(password)
            password_file.chmod(0o600)
        user, _ = get_user_model().objects.get_or_create(
            username=USERNAME, defaults={"is_staff": True, "is_superuser": True}
        )
        if not user.check_password(password) or not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        self.stdout.write(f"Demo admin: {settings.PUBLIC_BASE_URL}/admin/  user {USERNAME}  password {password}")
