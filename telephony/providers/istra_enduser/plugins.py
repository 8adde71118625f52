"""What the End User API adds to the core's plug-in points (``telephony.plugins``), from its ``apps.py``.

Voicemail audio (``recordings.py``) is an audio source: the recording retailCRM plays for a missed
call. Its caller-ID setting (``callerid.py``) is a caller-ID presenter: a click-to-call shows the
shop's number. A socket's late drop of a call the call history's backfill stored
already is that call (``backfill.backfilled_call_for``, a record finder). The modules are imported only when
first used.
"""

from __future__ import annotations

NAME = "istra_enduser"


def register() -> None:
    from telephony import plugins
    from telephony.providers.istra_enduser.recordings import VoicemailAudioSource

    plugins.register_audio_source(VoicemailAudioSource())
    plugins.register_caller_id_presenter(NAME, present_external_phone)
    plugins.register_record_finder(NAME, backfilled_call_for)


def backfilled_call_for(update):
    from telephony.providers.istra_enduser import backfill

    return backfill.backfilled_call_for(update)


def present_external_phone(terminal, external_phone: str) -> bool:
    from telephony.providers.istra_enduser import callerid

    return callerid.present_external_phone(terminal, external_phone)
