"""The console's voicemail endpoints (``/enduser/...``): list, read flag, delete, play, call back.

Every endpoint needs a logged-in ctihub user and acts on one End User account
that user may use: an agent uses the accounts whose terminals are assigned to
them, a supervisor any. What an account holds is the PBX's (the user's own
session only sees its own voicemail), so ids come from the PBX and are passed
back as they are.

Audio is streamed from the PBX as it arrives, with the PBX's Content-Type
(``application/ogg``, ``application/mp4``, ``application/au``) and
``Cache-Control: private, no-store``: a voicemail must not be kept by a proxy.
Deleting is irreversible at the PBX, so the request must say ``confirm: true``
(the console asks the agent first).
"""

from __future__ import annotations

import json
import logging

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_POST

from telephony.console import viewer_for
from telephony.models import PbxAccount, Terminal
from telephony.providers.base import ProviderError
from telephony.providers.istra_enduser import frames
from telephony.providers.registry import cached_provider

logger = logging.getLogger(__name__)


def _accounts_of(viewer):
    accounts = PbxAccount.objects.filter(kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True)
    if viewer.agent is None:
        return accounts.none()
    return accounts.filter(terminals__agent=viewer.agent, terminals__active=True).distinct().order_by("pk")


def _account(request, account_id: int) -> PbxAccount:
    viewer = viewer_for(request.user)
    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True).first()
    if account is None or not (viewer.is_supervisor or _accounts_of(viewer).filter(pk=account.pk).exists()):
        raise Http404("no such voicemail box")  # the same answer for "not yours" and "does not exist"
    return account


def _pbx_error(exc: ProviderError) -> JsonResponse:
    status = 404 if exc.status == 404 else 502
    return JsonResponse({"ok": False, "error": gettext("PBX: %(error)s") % {"error": exc}}, status=status)


def _body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def voicemail_json(account: PbxAccount, voicemail: frames.Voicemail) -> dict:
    audio = {fmt: reverse("enduser-voicemail-audio", args=[account.pk, voicemail.id, fmt])
             for fmt in ("ogg", "mp4", "au")}
    return {**voicemail.as_json(), "account": account.pk, "audio": audio}


@login_required
@require_GET
def voicemail_list(request):
    """The viewer's voicemail boxes: messages (newest first) and the current counters of each."""
    viewer = viewer_for(request.user)
    boxes = []
    for account in _accounts_of(viewer):
        provider, lock = cached_provider(account)
        box = {"account": account.pk, "name": account.name, "voicemails": [], "counters": None, "error": ""}
        try:
            with lock:
                voicemails = provider.voicemails()
                counters = provider.counters()
            box["voicemails"] = [voicemail_json(account, v) for v in voicemails]
            box["counters"] = counters.as_message()
        except ProviderError as exc:
            box["error"] = gettext("PBX: %(error)s") % {"error": exc}
        boxes.append(box)
    return JsonResponse({"boxes": boxes})


@login_required
@require_POST
def voicemail_read(request, account_id: int, voicemail_id: str):
    account = _account(request, account_id)
    read = _body(request).get("read")
    if not isinstance(read, bool):
        return JsonResponse({"ok": False, "error": gettext('Expected {"read": true} or {"read": false}.')}, status=400)
    provider, lock = cached_provider(account)
    try:
        with lock:
            voicemail = provider.mark_voicemail(voicemail_id, read)
    except ProviderError as exc:
        return _pbx_error(exc)
    return JsonResponse({"ok": True, "voicemail": voicemail_json(account, voicemail)})


@login_required
@require_POST
def voicemail_delete(request, account_id: int, voicemail_id: str):
    account = _account(request, account_id)
    if _body(request).get("confirm") is not True:
        return JsonResponse({"ok": False, "error": gettext("deleting a voicemail cannot be undone: confirm it")},
                            status=400)
    provider, lock = cached_provider(account)
    try:
        with lock:
            provider.delete_voicemail(voicemail_id)
    except ProviderError as exc:
        return _pbx_error(exc)
    logger.info("voicemail deleted", extra={"account_id": account.pk, "user_id": request.user.pk})
    return JsonResponse({"ok": True})


@login_required
@require_POST
def voicemail_call_me(request, account_id: int, voicemail_id: str):
    """"Call me back to hear it": the PBX rings the agent's terminal and plays this message."""
    account = _account(request, account_id)
    terminal = Terminal.objects.filter(account=account, active=True).order_by("id").first()
    if terminal is None:
        return JsonResponse({"ok": False, "error": gettext("this voicemail box has no terminal to ring")}, status=409)
    provider, lock = cached_provider(account)
    try:
        with lock:
            voicemail = provider.voicemail(voicemail_id)
            if not voicemail.play_number:
                return JsonResponse({"ok": False, "error": gettext("the PBX gave no number to play this message")},
                                    status=409)
            provider.place_call(terminal.pbx_id, voicemail.play_number)
    except ProviderError as exc:
        return _pbx_error(exc)
    return JsonResponse({"ok": True, "terminal": terminal.label or terminal.pbx_id})


@login_required
@require_GET
def voicemail_audio(request, account_id: int, voicemail_id: str, audio_format: str):
    account = _account(request, account_id)
    if audio_format not in frames.AUDIO_FORMATS:
        raise Http404("no such audio format")
    provider, lock = cached_provider(account)
    try:
        with lock:
            audio = provider.voicemail_audio(voicemail_id, audio_format)
    except ProviderError as exc:
        if exc.status == 404:
            raise Http404("no such voicemail") from None
        return _pbx_error(exc)
    response = StreamingHttpResponse(audio.chunks(), content_type=audio.content_type)
    if audio.length is not None:
        response["Content-Length"] = str(audio.length)
    response["Cache-Control"] = "private, no-store"
    if request.GET.get("dl") == "true":
        response["Content-Disposition"] = f'attachment; filename="voicemail-{voicemail_id}.{audio_format}"'
    return response
