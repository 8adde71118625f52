"""The exact payloads ctihub sends to retailCRM: module registration, call events, call uploads.

Pure functions of the models: no I/O, so tests can check them field by field.
Field names and values follow retailCRM's telephony documentation (see
/work/shared/specs/004_*.txt) and, where that document is silent, retailCRM's
official API clients:

* events: ``phone``, ``type`` (in, out, hangup), ``codes``, ``userIds``,
  ``site``, ``externalPhone``, ``callExternalId``, ``hangupStatus`` (answered,
  busy, cancel, failed, no answered);
* uploads: ``date`` (``Y-m-d H:i:s`` in the CRM's time zone), ``type``,
  ``phone``, ``code``, ``userId``, ``result`` (answered, busy, failed, no
  answer, not allowed, unknown), ``duration`` and ``durationWaiting`` (seconds),
  ``externalId``, ``recordUrl``, ``externalPhone``, ``site``.

Fields ctihub does not know are left out rather than sent empty.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django.conf import settings
from django.urls import reverse

from telephony import updates as u
from telephony.models import Call

IN, OUT, HANGUP = "in", "out", "hangup"

# Normalised end causes (telephony.updates) into retailCRM's hangupStatus. Which
# ones mean "answered" is decided by answered_at, not by the cause: an answered
# call that was later transferred was still answered.
HANGUP_STATUS_UNANSWERED = {
    u.END_BUSY: "busy",
    u.END_REJECTED: "busy",  # declined by the called party: retailCRM has no "rejected"
    u.END_NO_ANSWER: "no answered",
    u.END_CANCELLED: "cancel",  # the caller gave up before anyone answered
    u.END_HANGUP: "cancel",  # an unanswered call ended by a plain hangup: same thing
    u.END_ANSWERED_ELSEWHERE: "cancel",  # this phone stopped ringing because another answered
    u.END_TRANSFERRED: "cancel",  # redirected while ringing
    u.END_UNAVAILABLE: "failed",
    u.END_FAILED: "failed",
    # The hub ended it after the PBX went silent: how it ended is unknown, and of retailCRM's
    # statuses only "failed" claims nothing about the customer ("no answered" would ask for a call-back
    # on a call that may have been answered while the socket was down; "cancel" says the caller gave up).
    u.END_SWEPT: "failed",
}

# The same causes into the upload's ``result``.
UPLOAD_RESULT_UNANSWERED = {
    u.END_BUSY: "busy",
    u.END_REJECTED: "busy",
    u.END_NO_ANSWER: "no answer",
    u.END_CANCELLED: "no answer",
    u.END_HANGUP: "no answer",
    u.END_ANSWERED_ELSEWHERE: "no answer",
    u.END_TRANSFERRED: "no answer",
    u.END_UNAVAILABLE: "failed",
    u.END_FAILED: "failed",
    u.END_SWEPT: "unknown",  # what the upload's result has for exactly this: the outcome was never heard
}


def absolute(path: str) -> str:
    """retailCRM calls us from outside: every URL we give it starts with PUBLIC_BASE_URL."""
    return f"{settings.PUBLIC_BASE_URL}{path}"


def external_id(call: Call) -> str:
    """The id retailCRM knows a call by (``callExternalId``, ``externalId``): stable across retries."""
    return f"ctihub-{call.pk}"


def user_id_value(raw: str):
    """retailCRM user ids are integers in events and uploads; keep anything else as given."""
    return int(raw) if raw and raw.isdigit() else raw


# --- registration --------------------------------------------------------------------


def registration_payload(integration, agents, external_phones) -> dict:
    """``integrationModule`` for ``POST /integration-modules/{code}/edit``.

    ``agents`` are those with both a retailCRM user id and a code; ``external_phones``
    the integration's shop numbers. The document puts ``clientId`` inside
    ``integrations.telephony``; API v5 also wants it (with ``integrationCode``
    and ``baseUrl``) at the top level, which the document predates, so both are sent.
    """
    telephony = {
        "clientId": integration.client_id,
        "makeCallUrl": absolute(reverse("retailcrm-make-call")),
        "changeUserStatusUrl": absolute(reverse("retailcrm-user-status")),
        # Codes and numbers come from ctihub's admin; edits in retailCRM would be overwritten.
        "allowEdit": False,
        "inputEventSupported": True,
        "outputEventSupported": True,
        "hangupEventSupported": True,
        "additionalCodes": [
            {"userId": agent.retailcrm_user_id, "code": agent.extension_code} for agent in agents
        ],
        "externalPhones": [
            {"siteCode": phone.site_code, "externalPhone": phone.phone} for phone in external_phones
        ],
    }
    return {
        "code": integration.module_code,
        "integrationCode": integration.module_code,
        "active": bool(integration.enabled),
        "name": f"ctihub ({integration.name})",
        "logo": absolute(reverse("retailcrm-logo")),
        "clientId": integration.client_id,
        "baseUrl": settings.PUBLIC_BASE_URL,
        "accountUrl": absolute(reverse("admin:crm_sync_retailcrmintegration_change", args=[integration.pk])),
        "integrations": {"telephony": telephony},
    }


# --- call events --------------------------------------------------------------------------


def recipients(call: Call) -> tuple[list[str], list]:
    """Who should see the pop-up: the call's agent, by code and by retailCRM user id."""
    agent = call.agent
    if agent is None:
        return [], []
    codes = [agent.extension_code] if agent.extension_code else []
    user_ids = [user_id_value(agent.retailcrm_user_id)] if agent.retailcrm_user_id else []
    return codes, user_ids


def remote_phone(call: Call) -> str:
    return call.remote_number_e164 or call.remote_number_raw


def _common_event_fields(call: Call, site: str, external_phone: str) -> dict:
    codes, user_ids = recipients(call)
    event = {"phone": remote_phone(call)}
    if codes:
        event["codes"] = codes
    if user_ids:
        event["userIds"] = user_ids
    if site:
        event["site"] = site
    if external_phone:
        event["externalPhone"] = external_phone
    event["callExternalId"] = external_id(call)
    return event


def start_event(call: Call, site: str = "", external_phone: str = "") -> dict:
    """The ``in`` or ``out`` event sent when the call starts ringing or dialling."""
    event = _common_event_fields(call, site, external_phone)
    return {"type": IN if call.direction == Call.Direction.INBOUND else OUT, **event}


def hangup_status(call: Call) -> str:
    if call.answered_at is not None:
        return "answered"
    return HANGUP_STATUS_UNANSWERED.get(call.end_cause, "failed")


def hangup_event(call: Call, site: str = "", external_phone: str = "") -> dict:
    event = _common_event_fields(call, site, external_phone)
    return {"type": HANGUP, **event, "hangupStatus": hangup_status(call)}


# --- calls upload ---------------------------------------------------------------------------


def upload_result(call: Call) -> str:
    if call.answered_at is not None:
        return "answered"
    return UPLOAD_RESULT_UNANSWERED.get(call.end_cause, "unknown")


def crm_date(moment, time_zone: str) -> str:
    """retailCRM reads upload dates as wall-clock time in the CRM account's time zone."""
    return moment.astimezone(ZoneInfo(time_zone or settings.TIME_ZONE)).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(millis: int | None) -> int:
    return int(round((millis or 0) / 1000))


def upload_record(call: Call, *, time_zone: str = "", site: str = "", external_phone: str = "",
                  record_url: str | None = None) -> dict:
    """One call of ``POST /telephony/calls/upload``."""
    codes, user_ids = recipients(call)
    record = {
        "date": crm_date(call.created_at, time_zone),
        "type": IN if call.direction == Call.Direction.INBOUND else OUT,
        "phone": remote_phone(call),
    }
    if codes:
        record["code"] = codes[0]
    if user_ids:
        record["userId"] = user_ids[0]
    record.update(
        result=upload_result(call),
        duration=_seconds(call.talking_ms),
        durationWaiting=_seconds(call.ringing_ms),
        externalId=external_id(call),
    )
    if record_url:
        record["recordUrl"] = record_url
    if external_phone:
        record["externalPhone"] = external_phone
    if site:
        record["site"] = site
    return record
