"""Vendor payloads recorded in the providers' own fixture folders (``telephony/providers/<kind>/tests/fixtures``)."""

from __future__ import annotations

import json
from pathlib import Path

PROVIDERS_DIR = Path(__file__).resolve().parents[2] / "telephony" / "providers"


def fixtures_dir(kind: str) -> Path:
    return PROVIDERS_DIR / kind / "tests" / "fixtures"


def recorded(kind: str, name: str):
    """The recorded payload ``name`` (a file name, ``.json`` included) of provider ``kind``, parsed."""
    return json.loads((fixtures_dir(kind) / name).read_text())


def late_mycrm_drop(call_id: str, number: str, talking_ms: int, incoming: bool = True, listener: str = "") -> dict:
    """The myCrm drop a socket got after a reconnect (recorded), made the drop of another call."""
    frame = recorded("istra_mycrm", "event_call_dropped_after_outage.json")
    if listener:
        frame["listenerName"] = listener
    frame["item"][0].update(callId=call_id, displayNumber=number, displayNumberE164=number, incoming=incoming,
                            talkingTime=str(talking_ms))
    return frame
