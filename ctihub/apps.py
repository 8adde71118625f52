from django.apps import AppConfig


class CtihubConfig(AppConfig):
    name = "ctihub"
    verbose_name = "ctihub core"
