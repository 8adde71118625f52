from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.utils.translation import gettext_lazy as _


class CtihubConfig(AppConfig):
    default = True  # "ctihub" in INSTALLED_APPS; the admin's config below is named in full
    name = "ctihub"
    verbose_name = _("ctihub core")


class CtihubAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the hub's site (titled ctihub, health on its index): ``admin.site`` is it."""

    default = False
    default_site = "ctihub.admin_site.CtihubAdminSite"
