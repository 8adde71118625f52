"""An open console lives no longer than the login it was opened with.

A websocket is authenticated once, at its handshake; left alone, a console kept
its rights after its user logged out, was deactivated or had their password
changed. So:

- every console of a user joins ``user_group(user.pk)``; logging out, a
  deactivation, a password change or a deletion of the user sends that group a
  ``console.session_check``, and each console closes (4401, "your session has
  ended") unless its own session is still valid: at once, not at the next click;
- every request a console sends is checked the same way first (``session_user_id``),
  so a message lost on its way (Redis restarting) leaves no gap either.

"Valid" is what Django requires of an HTTP request: the session still exists and
has not expired, its user is active, and the password hash it was made with is
still the user's (``django.contrib.auth.get_user``).
"""

from __future__ import annotations

import logging
from importlib import import_module

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.http import HttpRequest

logger = logging.getLogger(__name__)

SESSION_CHECK = "console.session_check"
_REVOKING_FIELDS = frozenset({"password", "is_active"})


def user_group(user_id: int) -> str:
    return f"user-{user_id}"


def session_user_id(session_key: str | None) -> int | None:
    """The id of the user whose valid session this is, or None (gone, expired, user inactive, password changed)."""
    if not session_key:
        return None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(request)
    return user.pk if user.is_authenticated else None


def check_consoles_of(user_id: int, ended_session: str | None = None) -> None:
    """Make every console of the user check its session now; ``ended_session`` is closed whatever its state."""
    from telephony.publish import publish_to_groups

    message = {"type": SESSION_CHECK, "ended_session": ended_session}
    try:
        publish_to_groups([user_group(user_id)], message)
    except Exception:  # never fail a logout or an admin's save: each request on a console checks again anyway
        logger.warning("could not tell the consoles of user %s to check their session", user_id, exc_info=True)


def _logged_out(sender, request, user, **kwargs):
    if user is None:
        return
    # Sent before the session is flushed: name it, so its consoles close without looking it up.
    session = getattr(request, "session", None)
    check_consoles_of(user.pk, ended_session=getattr(session, "session_key", None))


def _note_revoking_change(sender, instance, raw=False, update_fields=None, **kwargs):
    instance._ctihub_revokes_sessions = False
    if raw or instance.pk is None or (update_fields is not None and not _REVOKING_FIELDS & set(update_fields)):
        return  # a new user, a fixture, or a save of other fields (last_login at every login)
    before = sender._default_manager.filter(pk=instance.pk).values("password", "is_active").first()
    if before is not None:
        instance._ctihub_revokes_sessions = (before["password"] != instance.password
                                             or (before["is_active"] and not instance.is_active))


def _saved(sender, instance, created=False, raw=False, **kwargs):
    if getattr(instance, "_ctihub_revokes_sessions", False):
        instance._ctihub_revokes_sessions = False
        user_id = instance.pk
        transaction.on_commit(lambda: check_consoles_of(user_id))


def _deleted(sender, instance, **kwargs):
    user_id = instance.pk
    transaction.on_commit(lambda: check_consoles_of(user_id))


def connect_signals() -> None:
    user_model = get_user_model()
    user_logged_out.connect(_logged_out, dispatch_uid="ctihub-console-logged-out")
    pre_save.connect(_note_revoking_change, sender=user_model, dispatch_uid="ctihub-console-user-changing")
    post_save.connect(_saved, sender=user_model, dispatch_uid="ctihub-console-user-saved")
    post_delete.connect(_deleted, sender=user_model, dispatch_uid="ctihub-console-user-deleted")
