"""What a browser is told about a call: the card, as plain JSON."""

from __future__ import annotations

from ctihub.lib.phones import for_people
from telephony.models import Call

SUPERVISORS_GROUP = "supervisors"


def agent_group(agent_id: int) -> str:
    return f"agent-{agent_id}"


def call_card(call: Call, crm: dict | None = None) -> dict:
    """``crm``: retailCRM's fields when the caller looked them up already (for many cards at once)."""
    number = call.remote_number_e164 or call.remote_number_raw
    return {
        "id": call.pk,
        "version": call.version,
        "account": call.account_id,
        "agent": call.agent_id,
        "direction": call.direction,
        "internal": call.is_internal,
        "state": call.state,
        # A state the PBX named that we do not know (the call stays in ``state``, its last known one).
        "pbx_state": call.pbx_state,
        "remote_number": number,
        "remote_number_display": for_people(call.remote_number_e164) if call.remote_number_e164 else number,
        "remote_label": call.remote_label,
        "external_phone": call.external_phone,
        "site_code": call.site_code,
        "created_at": call.created_at.isoformat(),
        "answered_at": call.answered_at.isoformat() if call.answered_at else None,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "talking_ms": call.talking_ms,
        "end_cause": call.end_cause,
        "answered": call.answered_at is not None,
        "actions": list(call.allowed_actions or []),
        # retailCRM's customer, manager and links for this call, when the CRM side looked them up.
        **(crm if crm is not None else crm_card_fields(call)),
    }


def cards_of(calls: list[Call]) -> list[dict]:
    """The cards of many calls, retailCRM's fields for all of them looked up together."""
    from crm_sync.services import card_fields_many

    crm = card_fields_many(calls)
    return [call_card(call, crm[call.pk]) for call in calls]


def crm_card_fields(call: Call) -> dict:
    from crm_sync.services import card_fields

    return card_fields(call)
