"""The console and the wallboard pages (their live side is ``telephony.consumers``)."""

import json

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.domain import set_console_alerts
from telephony.console import viewer_for
from telephony.wallboard import chart, figures

ALERT_SWITCHES = {"desktop": "desktop_notifications", "sound": "ring_sound"}


def _role_or_explain(request, template: str, supervisor_only: bool = False, context=None):
    """``context``: a function of no argument giving the page's own context, asked only once the viewer may see it."""
    viewer = viewer_for(request.user)
    if not viewer.has_role or (supervisor_only and not viewer.is_supervisor):
        return render(request, "accounts/no_role.html", {"supervisor_only": supervisor_only}, status=403)
    return render(request, template, {"viewer": viewer, "statuses": ["free", "busy", "dinner", "break"],
                                      **(context() if context else {})})


@login_required
def console(request):
    return _role_or_explain(request, "console.html")


@login_required
def wallboard(request):
    return _role_or_explain(request, "wallboard.html", supervisor_only=True, context=_wallboard_context)


def _wallboard_context() -> dict:
    """Today's figures and the calls-per-hour chart drawn on the server: the page reads right before its
    websocket is live (wallboard.js then draws them again from each snapshot and card)."""
    today = figures()
    return {"today": today, "chart": chart(today["hours"]),
            "average_answer": _minutes_seconds(today["average_answer_ms"])}


def _minutes_seconds(ms: int | None) -> str:
    """As wallboard.js writes a duration: m:ss."""
    if ms is None:
        return "—"
    seconds = ms // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


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
