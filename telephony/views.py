"""The console and the wallboard pages (their live side is ``telephony.consumers``)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from telephony.console import viewer_for


def _role_or_explain(request, template: str, supervisor_only: bool = False):
    viewer = viewer_for(request.user)
    if not viewer.has_role or (supervisor_only and not viewer.is_supervisor):
        return render(request, "accounts/no_role.html", {"supervisor_only": supervisor_only}, status=403)
    return render(request, template, {"viewer": viewer, "statuses": ["free", "busy", "dinner", "break"]})


@login_required
def console(request):
    return _role_or_explain(request, "console.html")


@login_required
def wallboard(request):
    return _role_or_explain(request, "wallboard.html", supervisor_only=True)
