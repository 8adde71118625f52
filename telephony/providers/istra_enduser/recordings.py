"""Voicemail audio as the recording of a missed call, for retailCRM's ``recordUrl``.

A missed incoming call of an agent who also has an End User account gets the
voicemail that caller left: same caller number, received between the call's
start and ``LEFT_WITHIN`` after it ended. The audio is streamed from the PBX in
``.ogg`` with the Content-Type the PBX gives it (``application/ogg``).
Registered with ``crm_sync.recordings`` when the telephony app is ready.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from ctihub.phones import e164_or_empty

logger = logging.getLogger(__name__)

LEFT_WITHIN = timedelta(minutes=10)
STARTED_BEFORE = timedelta(seconds=60)  # clocks of the PBX and of ctihub differ a little
AUDIO_FORMAT = "ogg"


class VoicemailAudioSource:
    name = "istra_enduser_voicemail"

    def has_audio(self, call) -> bool:
        found = self._find(call)
        if found is not None:
            found[0].close()
        return found is not None

    def open(self, call):
        from crm_sync.recordings import Audio

        found = self._find(call)
        if found is None:
            return None
        provider, voicemail = found
        stream = provider.voicemail_audio(voicemail.id, AUDIO_FORMAT)

        def chunks_then_log_out():
            try:
                yield from stream.chunks()
            finally:
                provider.close()

        return Audio(stream.content_type, chunks_then_log_out(), stream.length)

    def _find(self, call):
        """(provider, voicemail) for the call, or None."""
        from telephony.models import Call, PbxAccount
        from telephony.providers import provider_for

        if call.direction != Call.Direction.INBOUND or call.answered_at or not call.agent_id:
            return None
        if not call.remote_number_e164 or call.state != Call.State.ENDED:
            return None
        accounts = PbxAccount.objects.filter(
            kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True, terminals__agent_id=call.agent_id
        ).distinct()
        earliest = call.created_at - STARTED_BEFORE
        latest = (call.ended_at or call.created_at) + LEFT_WITHIN
        for account in accounts:
            provider = provider_for(account)
            for voicemail in provider.voicemails():
                same_caller = e164_or_empty(voicemail.remote_number, account.default_region or None) == \
                    call.remote_number_e164
                if same_caller and voicemail.received_at and earliest <= voicemail.received_at <= latest:
                    return provider, voicemail
            provider.close()
        return None


def register() -> None:
    from crm_sync import recordings

    recordings.register_source(VoicemailAudioSource())
