"""Login throttling: django-axes, on every login form (ours at /login/ and the admin's).

axes' backend refuses a locked-out user name or address before any password is
checked, and its middleware turns that refusal into ``registration/locked_out.html``
(HTTP 429). Limits: ``LOGIN_FAILURE_LIMIT`` and ``LOGIN_LOCKOUT_MINUTES`` (settings).
"""

from __future__ import annotations

import math

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.shortcuts import render


class LoginThrottleBackend(AxesStandaloneBackend):
    """axes' backend, except that an ``authenticate()`` without a request is left to the next backend.

    Every login form passes its request. Without one (the test client's ``login()``, a shell) there is
    no address to count and no page to answer on; axes would raise instead of refusing, failing the caller.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_response(request, original_response=None, credentials=None):
    """The page a locked-out login gets instead of the form: what happened and how long it lasts."""
    login_url = "/admin/login/" if request.path.startswith("/admin/") else "/login/"
    cool_off = get_cool_off(request)
    context = {"minutes": max(1, math.ceil(cool_off.total_seconds() / 60)) if cool_off else None,
               "login_url": login_url}
    return render(request, "registration/locked_out.html", context, status=429)
