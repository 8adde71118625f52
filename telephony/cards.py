"""What a browser is told about a call: the card, as plain JSON."""

from __future__ import annotations

from ctihub.lib.phones import for_people
from telephony.models import Call
from telephony.plugins import card_extras

SUPERVISORS_GROUP = "supervisors"


def agent_group(agent_id: int) -> str:
    return f"agent-{agent_id}"


def call_card(call: Call, extras: dict | None = None) -> dict:
    """``extras``: the card enrichers' fields (``telephony.plugins``) when the caller asked them already
    (for many cards at once)."""
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
        # What the apps plugged in add (the CRM side: retailCRM's customer, manager and links).
        **(extras if extras is not None else card_extras([call])[call.pk]),
    }


def cards_of(calls: list[Call]) -> list[dict]:
    """The cards of many calls, the enrichers asked once for all of them."""
    extras = card_extras(calls)
    return [call_card(call, extras[call.pk]) for call in calls]
