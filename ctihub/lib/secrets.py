"""Secrets at rest: an encrypted model field and a write-only admin form helper.

Credentials (PBX passwords, API tokens, retailCRM keys) are stored as Fernet
tokens under FIELD_ENCRYPTION_KEY, so a database dump or a backup does not leak
them. They never come back out through the admin: the form shows whether a
value is set, and a blank input keeps the stored one.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django import forms
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

TOKEN_PREFIX = "fernet:"


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be one or more comma-separated Fernet keys "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        ) from exc


def encrypt(plaintext: str) -> str:
    token = _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS)).encrypt(plaintext.encode())
    return TOKEN_PREFIX + token.decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(TOKEN_PREFIX):
        raise ValueError("stored secret is not an encrypted token")
    try:
        return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS)).decrypt(stored[len(TOKEN_PREFIX):].encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY: was the key changed "
            "without keeping the old one after it?"
        ) from None


class EncryptedTextField(models.TextField):
    """A text column whose value is encrypted before it reaches the database."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)

    def formfield(self, **kwargs):
        return SecretFormField(required=not self.blank, label=self.verbose_name.capitalize())


class SecretFormField(forms.CharField):
    widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})

    def __init__(self, **kwargs):
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)


class WriteOnlySecretsForm(forms.ModelForm):
    """Keeps the stored secret when the input is left blank on a change form."""

    secret_fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.secret_fields:
            field = self.fields.get(name)
            if field is None:
                continue
            if self.instance.pk and getattr(self.instance, name):
                field.required = False
                field.help_text = "A value is stored (encrypted). Leave blank to keep it, or type a new one."
            else:
                field.help_text = "Stored encrypted; never shown again."

    def clean(self):
        cleaned = super().clean()
        for name in self.secret_fields:
            if name in cleaned and not cleaned[name] and self.instance.pk:
                cleaned[name] = getattr(type(self.instance).objects.get(pk=self.instance.pk), name)
        return cleaned


def secret_form_for(model, fields: tuple[str, ...]):
    """A ModelForm class for ``model`` whose ``fields`` are write-only secrets."""
    meta = type("Meta", (), {"model": model, "fields": "__all__"})
    return type(f"{model.__name__}SecretsForm", (WriteOnlySecretsForm,), {"Meta": meta, "secret_fields": fields})
