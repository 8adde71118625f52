"""The admin index's health table (templates/admin/ctihub_index.html): times as people read them."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def ago(when: datetime | None, now: datetime | None = None) -> str:
    """"12 s ago", "5 min ago", "3 h ago", "4 d ago": how stale a thing is, at a glance (the exact time is the
    element's title). A time ahead of this clock (another server's) reads "just now"."""
    if when is None:
        return "never"
    seconds = int(((now or timezone.now()) - when).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"
