"""The admin index's health table (templates/admin/ctihub_index.html): times as people read them."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

register = template.Library()

# Marked for the catalogs here, translated when shown (the language is the request's).
AGO_UNITS = ((gettext_noop("%(n)s d ago"), 86400), (gettext_noop("%(n)s h ago"), 3600),
             (gettext_noop("%(n)s min ago"), 60))


@register.filter
def ago(when: datetime | None, now: datetime | None = None) -> str:
    """"12 s ago", "5 min ago", "3 h ago", "4 d ago": how stale a thing is, at a glance (the exact time is the
    element's title). A time ahead of this clock (another server's) reads "just now"."""
    if when is None:
        return gettext("never")
    seconds = int(((now or timezone.now()) - when).total_seconds())
    if seconds < 1:
        return gettext("just now")
    for text, size in AGO_UNITS:
        if seconds >= size:
            return gettext(text) % {"n": seconds // size}
    return gettext("%(n)s s ago") % {"n": seconds}
