"""Call audio for retailCRM's ``recordUrl``: signed, expiring links, and pluggable audio sources.

retailCRM fetches ``recordUrl`` with a plain GET when a user presses play, so the
link itself is the credential: it names the call and carries a signature
(``django.core.signing.TimestampSigner``, keyed by SECRET_KEY) and its signing
time. A changed call id, a forged signature or an age past
``RETAILCRM_RECORD_URL_MAX_AGE_DAYS`` gets a 404, never audio.

Where audio comes from depends on the PBX (recordings where a PBX offers them;
voicemail through the Istra End User API, issue 7). A source registers itself
with the telephony core (``telephony.plugins.register_audio_source``, also
``register_source`` here); the upload asks :func:`record_url_for`, and only
calls some source has audio for get a ``recordUrl``.

Some audio comes after the call: a caller who missed the agent is still
leaving a voicemail when the call ends. A source says so with the optional
``may_get_audio`` (cheap, no PBX request), and the upload of such a call waits
for the audio a bounded time (``crm_sync.domain``, ``RETAILCRM_VOICEMAIL_WAIT_SECONDS``).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core import signing
from django.urls import reverse

from telephony import plugins

logger = logging.getLogger(__name__)

SALT = "crm_sync.recordings.record-url"


# The sources are a plug-in point of the telephony core (the PBX providers register theirs there).
Audio = plugins.Audio
AudioSource = plugins.AudioSource
register_source = plugins.register_audio_source
unregister_source = plugins.unregister_audio_source
sources = plugins.audio_sources
awaits_audio = plugins.awaits_audio
open_audio = plugins.open_audio
iter_chunks = plugins.iter_chunks


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def max_age_seconds() -> int:
    return settings.RETAILCRM_RECORD_URL_MAX_AGE_DAYS * 86400


def sign_call(call_id: int) -> str:
    return _signer().sign(str(call_id))


def call_id_from_token(token: str) -> int | None:
    """The call id a token was signed for, or None when it is forged, altered or too old."""
    try:
        value = _signer().unsign(token, max_age=max_age_seconds())
    except signing.SignatureExpired:
        logger.info("an expired recordUrl was used")
        return None
    except signing.BadSignature:
        logger.warning("a recordUrl with a bad signature was used")
        return None
    return int(value) if value.isdigit() else None


def record_url(call_id: int) -> str:
    return f"{settings.PUBLIC_BASE_URL}{reverse('retailcrm-record', args=[sign_call(call_id)])}"


def record_url_for(call) -> str | None:
    """A signed link if some source has audio for the call; None otherwise."""
    return record_url(call.pk) if plugins.has_audio(call) else None
