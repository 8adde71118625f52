"""The endpoints retailCRM calls on ctihub (DRF), and what it fetches (logo, recordings).

retailCRM authenticates itself with nothing but the ``clientId`` we gave it at
registration, in the query string. So: unknown ``clientId`` 403, unknown
``code`` 404, bad input 400, each with ``{"success": false, "reason": ...}``.
An ``externalPhone`` that is no phone number is not bad enough to refuse the
call: makeCallUrl places it without the caller-ID change and its answer has a
``warning``. The views validate and delegate to ``crm_sync.domain``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Agent
from crm_sync import domain as crm_domain
from crm_sync import recordings
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.inbound_limit import rate_limited
from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.phones import UnusablePhoneNumber
from ctihub.lib.ratelimit import early_result
from telephony.models import Call
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)
LOGO = Path(__file__).with_name("logo.svg")

Reason = inline_serializer("RetailCrmReason", {"success": serializers.BooleanField(), "reason": serializers.CharField()})
MakeCallAnswer = inline_serializer("RetailCrmMakeCallAnswer", {
    "success": serializers.BooleanField(),
    "callerIdPresented": serializers.BooleanField(help_text="The shop's number was set as caller-ID."),
    "warning": serializers.CharField(
        required=False, help_text="What was wrong with the request although the call was placed: an externalPhone "
        "that is no phone number (the call goes with the PBX's usual caller-ID)."),
})
Success = inline_serializer("RetailCrmSuccess", {"success": serializers.BooleanField()})


# retailCRM calls these endpoints for every click; the rows they need change when an admin edits them.
INTEGRATIONS = BriefCache("retailcrm-integration-by-client-id", watch=(RetailCrmIntegration,))
AGENTS = BriefCache("retailcrm-agent-by-code", watch=(Agent,))


def integration_for_client_id(client_id: str) -> RetailCrmIntegration | None:
    key = hashlib.sha256(client_id.encode()).digest()  # look-ups compare digests, never the secret byte by byte
    return INTEGRATIONS.get(key, lambda: crm_domain.integration_for_client_id(client_id))


def integration_for_request(request, client_id: str) -> RetailCrmIntegration | None:
    """``integration_for_client_id``, looked up once per request (the rate limit looks first, the view then)."""
    remembered = getattr(request, "_ctihub_integration", None)
    if remembered is not None and remembered[0] == client_id:
        return remembered[1]
    integration = integration_for_client_id(client_id)
    request._ctihub_integration = (client_id, integration)
    return integration


def agent_for_code(code: str) -> Agent | None:
    return AGENTS.get(code, lambda: crm_domain.agent_for_code(code))


def refuse(http_status: int, reason: str) -> Response:
    return Response({"success": False, "reason": reason}, status=http_status)


def first_error(errors: dict) -> str:
    field, messages = next(iter(errors.items()))
    return f"{field}: {messages[0]}"


class PlusPreservingCharField(serializers.CharField):
    """retailCRM sends ``phone=+79121234567`` without encoding the plus (see the spec's example),
    and a form decoder reads a bare ``+`` as a space. A leading space is that plus."""

    def to_internal_value(self, data):
        if isinstance(data, str) and data.startswith(" ") and data.strip()[:1].isdigit():
            data = "+" + data.lstrip()
        return super().to_internal_value(data)


class RetailCrmQuery(serializers.Serializer):
    clientId = serializers.CharField(help_text="The clientId ctihub registered with.")
    code = serializers.CharField(help_text="The manager's additional code (extension code in ctihub).")
    userId = serializers.CharField(help_text="The manager's retailCRM user id.")


class MakeCallQuery(RetailCrmQuery):
    phone = PlusPreservingCharField(help_text="The number to dial, e.g. +79121234567.")
    externalPhone = PlusPreservingCharField(
        required=False, allow_blank=True, help_text="The shop's number the call is made for, if any."
    )


class UserStatusQuery(RetailCrmQuery):
    status = serializers.ChoiceField(choices=Agent.Status.values, help_text="free, busy, dinner or break.")


class _RetailCrmEndpoint(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []  # retailCRM sends no session or token: clientId is the credential
    query_class: type[serializers.Serializer] = RetailCrmQuery

    def identify(self, request):
        """(query, integration, agent) or a refusal Response."""
        query = self.query_class(data=request.query_params)
        client_id_given = bool(request.query_params.get("clientId"))
        valid = query.is_valid()
        # clientId first: nobody learns what else is wrong without the secret.
        integration = integration_for_request(request, request.query_params.get("clientId", ""))
        if integration is None:
            return refuse(status.HTTP_403_FORBIDDEN, "unknown clientId" if client_id_given else "clientId is required")
        if not valid:
            return refuse(status.HTTP_400_BAD_REQUEST, first_error(query.errors))
        data = query.validated_data
        agent = agent_for_code(data["code"])
        if agent is None:
            return refuse(status.HTTP_404_NOT_FOUND, f"no agent has the code {data['code']!r}")
        if agent.retailcrm_user_id and agent.retailcrm_user_id != data["userId"]:
            return refuse(
                status.HTTP_404_NOT_FOUND,
                f"the code {data['code']!r} belongs to another retailCRM user than {data['userId']!r}",
            )
        return data, integration, agent

    def identified(self, request):
        """``identify``'s answer: the one found while Redis answered the rate limit, else found now."""
        return early_result(request, "identify", lambda: self.identify(request))


class MakeCallView(_RetailCrmEndpoint):
    """makeCallUrl: retailCRM asks us to dial a number from a manager's phone."""

    query_class = MakeCallQuery

    @extend_schema(
        operation_id="retailcrm_make_call",
        summary="retailCRM makeCallUrl: place a call from the manager's phone",
        parameters=[MakeCallQuery],
        responses={
            200: OpenApiResponse(MakeCallAnswer, description="The PBX accepted the call."),
            400: OpenApiResponse(Reason, description="A missing parameter or an unusable phone number."),
            403: OpenApiResponse(Reason, description="Unknown clientId."),
            404: OpenApiResponse(Reason, description="No agent has this code."),
            429: OpenApiResponse(Reason, description="Too many requests from this clientId (see Retry-After)."),
            502: OpenApiResponse(Reason, description="The PBX refused or could not be reached."),
        },
        tags=["retailCRM"],
    )
    @rate_limited("retailcrm-make-call", meanwhile="identify")
    def get(self, request):
        identified = self.identified(request)
        if isinstance(identified, Response):
            return identified
        data, integration, agent = identified
        try:
            numbers = crm_domain.make_call_numbers(integration, data["phone"], data.get("externalPhone") or "")
        except UnusablePhoneNumber as exc:
            return refuse(status.HTTP_400_BAD_REQUEST, f"phone: {exc}")
        if numbers.warning:
            # The shop's number only changes the caller-ID: a bad one must not cost the manager the call.
            logger.warning("makeCallUrl of %s: %s", integration, numbers.warning)
        try:
            answer = crm_domain.make_call(integration, agent, numbers.phone, numbers.external_phone)
        except ProviderError as exc:
            return refuse(status.HTTP_502_BAD_GATEWAY, f"the PBX did not place the call: {exc}")
        body = {"success": True, "callerIdPresented": answer["callerIdPresented"]}
        if numbers.warning:
            body["warning"] = numbers.warning
        return Response(body)


class UserStatusView(_RetailCrmEndpoint):
    """changeUserStatusUrl: a manager changed their status in retailCRM."""

    query_class = UserStatusQuery

    @extend_schema(
        operation_id="retailcrm_user_status",
        summary="retailCRM changeUserStatusUrl: a manager's status changed",
        parameters=[UserStatusQuery],
        responses={
            200: OpenApiResponse(Success, description="Stored and pushed to the consoles."),
            400: OpenApiResponse(Reason, description="A missing parameter or a status other than free, busy, dinner, break."),
            403: OpenApiResponse(Reason, description="Unknown clientId."),
            404: OpenApiResponse(Reason, description="No agent has this code."),
            429: OpenApiResponse(Reason, description="Too many requests from this clientId (see Retry-After)."),
        },
        tags=["retailCRM"],
    )
    @rate_limited("retailcrm-user-status", meanwhile="identify")
    def get(self, request):
        identified = self.identified(request)
        if isinstance(identified, Response):
            return identified
        data, _integration, agent = identified
        crm_domain.change_user_status(agent, data["status"])
        return Response({"success": True})


@require_GET
@cache_control(public=True, max_age=86400)
def logo(request):
    """The module's logo in retailCRM's marketplace (it wants an SVG at an absolute URL)."""
    return HttpResponse(LOGO.read_bytes(), content_type="image/svg+xml")


@rate_limited("retailcrm-record")
@require_GET
def record(request, token: str):
    """``recordUrl``: the call's audio, if the link is genuine and not expired (404 otherwise)."""
    call_id = recordings.call_id_from_token(token)
    call = Call.objects.filter(pk=call_id).first() if call_id is not None else None
    if call is None:
        raise Http404("no such recording")
    audio = recordings.open_audio(call)
    if audio is None:
        raise Http404("no audio for this call")
    if hasattr(audio.chunks, "read"):
        response = FileResponse(audio.chunks, content_type=audio.content_type)
    else:
        response = StreamingHttpResponse(recordings.iter_chunks(audio), content_type=audio.content_type)
    if audio.length is not None:
        response["Content-Length"] = str(audio.length)
    response["Cache-Control"] = "private, no-store"
    return response
