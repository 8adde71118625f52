"""The console, the wallboard and the call history pages (the live side is ``telephony.consumers``)."""

import json

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from accounts.domain import set_console_alerts
from accounts.models import Agent
from ctihub.lib.ws_db import on_web_pool
from telephony import console as console_domain
from telephony import history
from telephony.console import viewer_for
from telephony.providers.base import ProviderError
from telephony.wallboard import chart, figures

ALERT_SWITCHES = {"desktop": "desktop_notifications", "sound": "ring_sound"}


def _role_or_explain(request, template: str, supervisor_only: bool = False, context=None):
    """``context``: a function of no argument giving the page's own context, asked only once the viewer may see it."""
    viewer = viewer_for(request.user)
    return _no_role(request, viewer, supervisor_only) or render(
        # statuses: (value, label), the value what the console sends, the label in the page's language.
        request, template, {"viewer": viewer, "statuses": Agent.Status.choices,
                            **(context() if context else {})})


def _no_role(request, viewer, supervisor_only: bool = False):
    """The page that explains why, when the viewer is no agent (or no supervisor, for a supervisor's page)."""
    if not viewer.has_role or (supervisor_only and not viewer.is_supervisor):
        return render(request, "accounts/no_role.html", {"supervisor_only": supervisor_only}, status=403)
    return None


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


class HistoryFilters(forms.Form):
    """The history's filters, from the query string: any field may be blank, a wrong one is left out."""

    date_from = forms.DateField(label=gettext_lazy("From"), required=False,
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=gettext_lazy("To"), required=False,
                              widget=forms.DateInput(attrs={"type": "date"}))
    agent = forms.TypedChoiceField(label=gettext_lazy("Agent"), required=False, coerce=int, empty_value=None)
    direction = forms.ChoiceField(label=gettext_lazy("Direction"), required=False)
    result = forms.ChoiceField(label=gettext_lazy("Result"), required=False)
    number = forms.CharField(label=gettext_lazy("Number"), required=False, max_length=40,
                             widget=forms.TextInput(attrs={"inputmode": "tel", "type": "search"}))

    def __init__(self, data, agents=(), **kwargs):
        super().__init__(data, **kwargs)
        anyone = [("", _("Any"))]
        self.fields["agent"].choices = [("", _("Everyone"))] + [(a.pk, _agent_name(a)) for a in agents]
        self.fields["direction"].choices = anyone + list(history.DIRECTIONS.items())
        self.fields["result"].choices = anyone + list(history.RESULTS.items())

    def clean_number(self):
        number = self.cleaned_data["number"].strip()
        if number and history.number_filter(number) is None:
            raise forms.ValidationError(_("Enter a number, or some of its digits."))
        return number

    def filters(self) -> history.Filters:
        self.is_valid()  # what is valid is used; a field in error is left out (and shown)
        data = self.cleaned_data
        return history.Filters(date_from=data.get("date_from"), date_to=data.get("date_to"),
                               agent_id=data.get("agent"), direction=data.get("direction") or "",
                               result=data.get("result") or "", number=data.get("number") or "")


def _agent_name(agent) -> str:
    return agent.user.get_full_name() or agent.user.username


def _history_filters(request, viewer) -> tuple[HistoryFilters, history.Filters]:
    agents = list(Agent.objects.select_related("user")) if viewer.is_supervisor else []
    form = HistoryFilters(request.GET, agents=agents)
    if not viewer.is_supervisor:
        del form.fields["agent"]  # an agent sees their own calls
    return form, form.filters()


@login_required
@require_GET
def call_history(request):
    """The calls an agent took or made (a supervisor: everyone's), filtered, 50 a page, newest first."""
    viewer = viewer_for(request.user)
    refused = _no_role(request, viewer)
    if refused:
        return refused
    form, filters = _history_filters(request, viewer)
    page = Paginator(history.calls_for(viewer, filters), history.PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "history.html", {
        "viewer": viewer, "form": form, "page": page, "rows": history.rows_of(list(page.object_list)),
        "query": query.urlencode(), "can_dial": viewer.agent is not None,
    })


@login_required
@require_GET
def call_history_csv(request):
    """The history's filtered calls as CSV (every page), newest first."""
    viewer = viewer_for(request.user)
    refused = _no_role(request, viewer)
    if refused:
        return refused
    _form, filters = _history_filters(request, viewer)
    calls = history.calls_for(viewer, filters)
    if isinstance(request, ASGIRequest):
        lines = _pooled_csv_lines(calls, translation.get_language(), timezone.get_current_timezone())
    else:
        lines = history.csv_lines(calls)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="calls-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


async def _pooled_csv_lines(calls, language: str, tz):
    """The export under daphne: each chunk read on the web pool, sent as it comes. Django reads a plain
    iterator whole, on asgiref's one thread-sensitive thread (which every websocket login waits on too),
    before sending a byte of it. The chunks run after the view has returned: in the request's language
    and time zone, passed in."""
    def in_request_locale(*args):
        with translation.override(language), timezone.override(tz):
            return history.csv_chunk(*args)

    chunk = on_web_pool(in_request_locale)
    with translation.override(language):
        yield history.csv_header()
    sent, last = 0, None
    while True:
        text, last, count = await chunk(calls, last, history.EXPORT_MAX_ROWS - sent)
        if last is None:
            return
        sent += count
        yield text


@login_required
@require_POST
def console_dial(request):
    """Click-to-call from a page without the console's websocket (the history's call-back buttons): what the
    console's "dial" request does (``telephony.console.dial``), over a POST with the session and CSRF token.
    ``{"number": "..."}``."""
    viewer = viewer_for(request.user)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = None
    number = body.get("number") if isinstance(body, dict) else None
    if not isinstance(number, str):
        return JsonResponse({"ok": False, "error": _('Expected {"number": "..."}.')}, status=400)
    try:
        console_domain.dial(viewer, number)
    except console_domain.Refused as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=403 if viewer.agent is None else 400)
    except ProviderError as exc:
        return JsonResponse({"ok": False, "error": _("PBX: %(error)s") % {"error": exc}}, status=502)
    return JsonResponse({"ok": True, "number": number.strip()})
