"""Call audio for retailCRM's ``recordUrl``: signed, expiring links, and pluggable audio sources.

retailCRM fetches ``recordUrl`` with a plain GET when a user presses play, so the
link itself is the credential: it names the call and carries a signature
(``django.core.signing.TimestampSigner``, keyed by SECRET_KEY) and its signing
time. A changed call id, a forged signature or an age past
``RETAILCRM_RECORD_URL_MAX_AGE_DAYS`` gets a 404, never audio.

Where audio comes from depends on the PBX (recordings where a PBX offers them;
voicemail through the Istra End User API, issue 7). A source registers itself
here with :func:`register_source`; the upload asks :func:`record_url_for`, and
only calls some source has audio for get a ``recordUrl``.

Some audio comes after the call: a caller who missed the agent is still
leaving a voicemail when the call ends. A source says so with the optional
``may_get_audio`` (cheap, no PBX request), and the upload of such a call waits
for the audio a bounded time (``crm_sync.services``, ``RETAILCRM_VOICEMAIL_WAIT_SECONDS``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from django.core import signing
from django.urls import reverse

logger = logging.getLogger(__name__)

SALT = "crm_sync.recordings.record-url"


@dataclass(frozen=True)
class Audio:
    """Audio ready to stream: the bytes (or chunks) and the Content-Type retailCRM's player needs."""

    content_type: str
    chunks: Iterable[bytes]
    length: int | None = None


class AudioSource(Protocol):
    name: str

    def has_audio(self, call) -> bool:
        """Cheap: is there audio for this call (decides whether the upload gets a recordUrl)?"""

    def open(self, call) -> Audio | None:
        """The audio, or None if it is gone."""

    # Optional: ``may_get_audio(call) -> bool``, cheap (no PBX request): could audio for this
    # finished call still appear (a voicemail being left)? Sources without it never make an upload wait.


_sources: list[AudioSource] = []


def register_source(source: AudioSource) -> None:
    if any(existing.name == source.name for existing in _sources):
        return
    _sources.append(source)


def unregister_source(name: str) -> None:
    _sources[:] = [source for source in _sources if source.name != name]


def sources() -> tuple[AudioSource, ...]:
    return tuple(_sources)


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
    for source in _sources:
        try:
            if source.has_audio(call):
                return record_url(call.pk)
        except Exception:  # a broken source must not stop the upload of the call itself
            logger.exception("audio source %s failed on call %s", source.name, call.pk)
    return None


def awaits_audio(call) -> bool:
    """True when some source may still get audio for the call: its upload waits for it a while."""
    for source in _sources:
        may_get_audio = getattr(source, "may_get_audio", None)
        if may_get_audio is None:
            continue
        try:
            if may_get_audio(call):
                return True
        except Exception:  # a broken source must not hold the upload of the call itself
            logger.exception("audio source %s failed on call %s", source.name, call.pk)
    return False


def open_audio(call) -> Audio | None:
    for source in _sources:
        try:
            audio = source.open(call)
        except Exception:
            logger.exception("audio source %s failed to open call %s", source.name, call.pk)
            continue
        if audio is not None:
            return audio
    return None


def iter_chunks(audio: Audio) -> Iterator[bytes]:
    if isinstance(audio.chunks, (bytes, bytearray)):
        yield bytes(audio.chunks)
        return
    yield from audio.chunks
