"""The console and the wallboard pages (their live side is ``telephony.consumers``)."""

import json

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.domain import set_console_alerts
from accounts.models import Agent
from telephony.console import viewer_for

ALERT_SWITCHES = {"desktop": "desktop_notifications", "sound": "ring_sound"}


def _role_or_explain(request, template: str, supervisor_only: bool = False):
    viewer = viewer_for(request.user)
    if not viewer.has_role or (supervisor_only and not viewer.is_supervisor):
        return render(request, "accounts/no_role.html", {"supervisor_only": supervisor_only}, status=403)
    # (value, label): the value is what the console sends, the label in the page's language.
    return render(request, template, {"viewer": viewer, "statuses": Agent.Status.choices})


@login_required
def console(request):
    return _role_or_explain(request, "console.html")


@login_required
def wallboard(request):
    return _role_or_explain(request, "wallboard.html", supervisor_only=True)


@login_required
@require_POST
def console_alerts(request):
    """The console's alert switches for a ringing call, kept on the agent: ``{"desktop": bool, "sound": bool}``,
    either or both. A session and the CSRF token, as every POST of the console's page."""
    agent = viewer_for(request.user).agent
    if agent is None:
        return JsonResponse({"ok": False, "error": _("Your account is not set up as an agent. Ask your admin.")},
                            status=403)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict) or not set(body) <= set(ALERT_SWITCHES) or \
            not all(isinstance(value, bool) for value in body.values()):
        return JsonResponse({"ok": False, "error": _('Expected {"desktop": true|false, "sound": true|false}.')},
                            status=400)
    set_console_alerts(agent, desktop=body.get("desktop"), sound=body.get("sound"))
    return JsonResponse({"ok": True, **{key: getattr(agent, field) for key, field in ALERT_SWITCHES.items()}})
