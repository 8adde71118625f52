"""Voicemail audio as the recording of a missed call, for retailCRM's ``recordUrl``.

A missed incoming call of an agent who also has an End User account gets the
voicemail that caller left: same caller number, received between the call's
start and ``LEFT_WITHIN`` after it ended. The audio is streamed from the PBX in
``.ogg`` with the Content-Type the PBX gives it (``application/ogg``).

Such a call "can have voicemail" (``may_get_audio``): it is a missed incoming
call from a known number, and its agent has a terminal on an enabled End User
account. The caller is usually still recording when the call ends, so the
upload of such a call waits for the message (the CRM side asks ``awaits_audio``).
Registered as an audio source (``telephony.plugins``) when the telephony app is ready (``plugins.py``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.phones import e164_or_empty

logger = logging.getLogger(__name__)

LEFT_WITHIN = timedelta(minutes=10)
STARTED_BEFORE = timedelta(seconds=60)  # clocks of the PBX and of ctihub differ a little
AUDIO_FORMAT = "ogg"


def _brief_cache():
    from telephony.models import PbxAccount, Terminal

    # An upload asks for every missed call of its batch (up to 50) whether audio may come: one query per call,
    # for a list that changes when an admin edits an account or a terminal (issue 16, the upload's CPU).
    return BriefCache("istra-enduser-accounts-of-agent", watch=(PbxAccount, Terminal))


_enduser_accounts_of_agent = _brief_cache()  # imported from the app's ready(): the models are loaded


class VoicemailAudioSource:
    name = "istra_enduser_voicemail"

    def has_audio(self, call) -> bool:
        found = self._find(call)
        if found is not None:
            found[0].close()
        return found is not None

    def may_get_audio(self, call) -> bool:
        """A missed call whose agent has an End User account: its caller may be leaving a voicemail."""
        return bool(self._account_ids(call))

    def open(self, call):
        from telephony.plugins import Audio

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

    def _account_ids(self, call) -> tuple[int, ...] | None:
        """The End User accounts whose voicemail may hold this call's message; None for a call that has none."""
        from telephony.models import Call, PbxAccount

        if call.direction != Call.Direction.INBOUND or call.answered_at or not call.agent_id:
            return None
        if not call.remote_number_e164 or call.state != Call.State.ENDED:
            return None
        return _enduser_accounts_of_agent.get(call.agent_id, lambda: tuple(
            PbxAccount.objects.filter(kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True,
                                      terminals__agent_id=call.agent_id).order_by("pk").distinct()
            .values_list("id", flat=True)))

    def _find(self, call):
        """(provider, voicemail) for the call, or None."""
        from telephony.models import PbxAccount
        from telephony.providers import provider_for

        ids = self._account_ids(call)
        if not ids:
            return None
        accounts = PbxAccount.objects.filter(pk__in=ids, enabled=True).order_by("pk")
        earliest = call.created_at - STARTED_BEFORE
        latest = (call.ended_at or call.created_at) + LEFT_WITHIN
        for account in accounts:
            provider = provider_for(account)
            found = None
            try:
                for voicemail in provider.voicemails():
                    same_caller = e164_or_empty(voicemail.remote_number, account.default_region or None) == \
                        call.remote_number_e164
                    if same_caller and voicemail.received_at and earliest <= voicemail.received_at <= latest:
                        found = voicemail
                        break
            finally:
                if found is None:  # a waiting upload asks again and again: every look logs out, even a failed one
                    provider.close()
            if found is not None:
                return provider, found
        return None

