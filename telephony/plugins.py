"""The telephony core's plug-in points: what an app above it (the CRM side) may add, without the core
knowing that app.

The core imports no app above it (``tests/test_layers.py`` fails on such an import). An app plugs in
from its ``AppConfig.ready()``, as ``crm_sync`` does (``crm_sync/plugins.py``):

* ``calls_committed`` — a signal sent once a transaction of ``telephony.domain`` that changed calls
  has committed, with ``calls`` (each changed call once, as it is now). It is sent on the committing
  thread inside ``publisher.together()``: a task a receiver queues with ``telephony.queueing.enqueue_soon``
  leaves in the same batch, and Redis pipeline, as the calls' cards (``ctihub/lib/broker.py``). A receiver
  must not block: it runs on the frame path.
* card enrichers — ``register_card_enricher(fn)``: ``fn(calls) -> {call id: {field: value}}``, the
  fields it adds to each call's card, for many calls at once (every frame's cards ask).
* audio sources — ``register_audio_source(source)``: audio of a call (a recording, a voicemail) for
  whoever plays it (retailCRM's ``recordUrl``). The PBX providers register theirs
  (their ``AppConfig.ready()``); the CRM side asks ``has_audio``, ``awaits_audio`` and ``open_audio``.
* caller-ID presenters — ``register_caller_id_presenter(name, fn)``: ``fn(terminal, phone) -> bool``
  shows ``phone`` as the caller-ID of the next call from ``terminal`` (True once the PBX took it).
  The PBX providers that can register theirs; ``present_caller_id`` asks them in turn.
* record finders — ``register_record_finder(name, finder)``: ``finder(update) -> Call | None``, a call
  already stored under another account (the End User call history's backfill) that a socket's first frame
  of a call, a drop, tells of again. The domain asks them only for a call it would otherwise create
  already ended (a drop after a reconnect, rare on the frame path), inside the frame's transaction.
* health sections — ``register_health_section(name, provider)``: ``provider() -> telephony.health.HealthSection``,
  the rows of one kind of thing (status, last event, last error, a link, a fix) the admin's index shows
  after the core's own (PBX accounts, listeners). A provider runs a bounded number of queries, whatever
  the number of its rows.

Registering the same name (or the same function) twice keeps one: ``ready()`` may run more than once in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# --- calls committed ------------------------------------------------------------------------------

# Sent with sender=Call and calls=[Call, ...]; receivers' exceptions reach the committing code, as any
# on-commit work's would. Cached by sender: it is sent for every frame.
calls_committed = Signal(use_caching=True)


# --- card enrichers -------------------------------------------------------------------------------

CardEnricher = Callable[[list], dict]
_card_enrichers: list[CardEnricher] = []


def register_card_enricher(enricher: CardEnricher) -> None:
    if enricher not in _card_enrichers:
        _card_enrichers.append(enricher)


def unregister_card_enricher(enricher: CardEnricher) -> None:
    _card_enrichers[:] = [known for known in _card_enrichers if known is not enricher]


def card_extras(calls: list) -> dict[int, dict]:
    """{call id: the fields every enricher adds to its card}, each enricher asked once for all the calls."""
    if len(_card_enrichers) == 1:  # the usual case (the CRM side): its answer as it is
        return _card_enrichers[0](calls)
    extras: dict[int, dict] = {call.pk: {} for call in calls}
    for enricher in _card_enrichers:
        for call_id, fields in enricher(calls).items():
            extras.setdefault(call_id, {}).update(fields)
    return extras


# --- audio sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Audio ready to stream: the bytes (or chunks) and the Content-Type the player needs."""

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


_audio_sources: list[AudioSource] = []


def register_audio_source(source: AudioSource) -> None:
    if any(existing.name == source.name for existing in _audio_sources):
        return
    _audio_sources.append(source)


def unregister_audio_source(name: str) -> None:
    _audio_sources[:] = [source for source in _audio_sources if source.name != name]


def audio_sources() -> tuple[AudioSource, ...]:
    return tuple(_audio_sources)


def has_audio(call) -> bool:
    """Some source has audio for the call. A source that fails counts as having none."""
    for source in _audio_sources:
        try:
            if source.has_audio(call):
                return True
        except Exception:  # a broken source must not stop the upload of the call itself
            logger.exception("audio source %s failed on call %s", source.name, call.pk)
    return False


def awaits_audio(call) -> bool:
    """True when some source may still get audio for the call: its upload waits for it a while."""
    for source in _audio_sources:
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
    for source in _audio_sources:
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


# --- caller-ID presenters -------------------------------------------------------------------------

CallerIdPresenter = Callable[[object, str], bool]
_caller_id_presenters: dict[str, CallerIdPresenter] = {}


def register_caller_id_presenter(name: str, presenter: CallerIdPresenter) -> None:
    _caller_id_presenters.setdefault(name, presenter)


def unregister_caller_id_presenter(name: str) -> None:
    _caller_id_presenters.pop(name, None)


def present_caller_id(terminal, phone: str) -> bool:
    """Show ``phone`` as the caller-ID of the next call from ``terminal``; True once a presenter's PBX took it.

    False when no presenter can (the PBX then presents its default caller-ID)."""
    return any(presenter(terminal, phone) for presenter in list(_caller_id_presenters.values()))


# --- record finders -------------------------------------------------------------------------------

RecordFinder = Callable[[object], object]
_record_finders: dict[str, RecordFinder] = {}


def register_record_finder(name: str, finder: RecordFinder) -> None:
    _record_finders[name] = finder


def unregister_record_finder(name: str) -> None:
    _record_finders.pop(name, None)


def recorded_elsewhere(update):
    """The call stored elsewhere that ``update`` (the first frame of a call, ended) tells of, else None."""
    for finder in tuple(_record_finders.values()):
        found = finder(update)
        if found is not None:
            return found
    return None


# --- health sections ------------------------------------------------------------------------------

HealthSectionProvider = Callable[[], object]  # -> telephony.health.HealthSection
_health_sections: dict[str, HealthSectionProvider] = {}


def register_health_section(name: str, provider: HealthSectionProvider) -> None:
    _health_sections.setdefault(name, provider)


def unregister_health_section(name: str) -> None:
    _health_sections.pop(name, None)


def health_section_providers() -> tuple[tuple[str, HealthSectionProvider], ...]:
    return tuple(_health_sections.items())
