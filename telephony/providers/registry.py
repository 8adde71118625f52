"""The PBX providers the hub has, as they registered: the core and the wiring read them here, never by name.

Each provider is a Django app (``telephony/providers/<kind>/``, one line in ``INSTALLED_APPS``) whose
``AppConfig.ready()`` calls ``register(ProviderApp(...))`` with what it brings:

* ``kind`` and ``label``: ``PbxAccount.kind``'s value and its name in the admin (the field's choices);
* ``provider``: the dotted path of its ``Provider`` subclass, imported when first used;
* ``capabilities``: what the core may rely on (``Capabilities``);
* ``url_prefix``: where its ``urls.py`` is mounted ("" when the PBX calls nothing of ours);
* ``beat``: its periodic tasks, by entry name, added to ``CELERY_BEAT_SCHEDULE``;
* ``admin_notes``: the dotted path of ``fn(account) -> [(title, text), ...]``, shown on the account's
  admin page.

Its tasks are found by Celery's autodiscovery (``<package>.tasks`` of every installed app); audio sources
and caller-ID presenters plug into ``telephony.plugins`` from the same ``ready()``. Registering a kind
twice keeps the first (``ready()`` may run more than once in tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import import_module

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    #: Its REST requests may run side by side on the account's one cached provider: its state (an Istra
    #: session, which serialises only its own login and renewal) is thread-safe, so one slow PBX answer
    #: does not queue every other click-to-call of the account behind it. Otherwise Provider's contract
    #: holds: one thread at a time.
    parallel_requests: bool = False
    #: It can show a number as the next call's caller-ID (it registers a caller-ID presenter).
    caller_id: bool = False
    #: It has calls' audio (it registers an audio source).
    audio: bool = False
    #: The extended types its transfer to a number (``redirect``) takes, the first the default (Telepo's
    #: BASIC, VOICEMAIL, CAMP_ON, DIVERSION_BYPASS); empty: the PBX has none, the card asks only the number.
    transfer_types: tuple[str, ...] = ()
    #: Its transfer to a number can leave the agent's call up or clear it once the transfer starts
    #: (Telepo's ``blind``): the card lets the agent choose. Otherwise the PBX decides (myRCC's redirect).
    blind_transfer: bool = False
    #: It removes one party from a conference (``conference_remove``), each party being another call of
    #: the agent's in the conference. myRCC cannot: it only leaves (``leave``) or ends its own line.
    remove_party: bool = False


@dataclass(frozen=True)
class ProviderApp:
    kind: str
    label: str
    provider: str
    capabilities: Capabilities = Capabilities()
    url_prefix: str = ""
    beat: Mapping[str, dict] = field(default_factory=dict)
    admin_notes: str = ""

    @property
    def package(self) -> str:
        return self.provider.rsplit(".", 2)[0]


_apps: dict[str, ProviderApp] = {}
_classes: dict[str, type] = {}


def register(app: ProviderApp) -> None:
    if app.kind in _apps:
        return
    _apps[app.kind] = app
    # Beat reads the schedule once Django is set up (Celery's Django fix-up does it first), so the
    # providers' entries are in the settings' dict by then; an entry the settings name stays theirs.
    from django.conf import settings

    for name, entry in app.beat.items():
        settings.CELERY_BEAT_SCHEDULE.setdefault(name, dict(entry))


def kinds() -> tuple[str, ...]:
    return tuple(_apps)


def get(kind: str) -> ProviderApp:
    try:
        return _apps[kind]
    except KeyError:
        raise LookupError(f"no provider for PBX kind {kind!r}") from None


def capabilities(kind: str) -> Capabilities:
    return get(kind).capabilities


def kind_choices() -> list[tuple[str, str]]:
    """``PbxAccount.kind``'s choices: every registered provider (a callable, so none needs a migration)."""
    return [(app.kind, app.label) for app in _apps.values()]


def provider_class(kind: str):
    cls = _classes.get(kind)
    if cls is None:
        module_path, class_name = get(kind).provider.rsplit(".", 1)
        cls = _classes[kind] = getattr(import_module(module_path), class_name)
    return cls


def provider_for(account, http=None):
    """A new provider for ``account`` (the supervisor's sockets, one-off requests)."""
    return provider_class(account.kind)(account, http=http)


def url_patterns() -> list:
    """Each provider's ``urls.py`` under its prefix, for the project's URLconf."""
    from django.urls import include, path

    return [path(app.url_prefix, include(f"{app.package}.urls")) for app in _apps.values() if app.url_prefix]


def admin_notes(account) -> list[tuple[str, str]]:
    app = _apps.get(account.kind)
    if app is None or not app.admin_notes:
        return []
    module_path, name = app.admin_notes.rsplit(".", 1)
    return getattr(import_module(module_path), name)(account)


# --- A provider per account, reused for REST calls (one login, not one per click) ------------------

_providers: dict[int, tuple[object, object, threading.Lock]] = {}
_providers_lock = threading.Lock()


def cached_provider(account) -> tuple[object, threading.Lock]:
    """The account's logged-in provider, reused until the account is edited, and the lock that keeps it
    to one thread at a time where it needs one (``one_at_a_time``)."""
    with _providers_lock:
        cached = _providers.get(account.pk)
        if cached and cached[0] == account.updated_at:
            return cached[1], cached[2]
        if cached:
            _close_quietly(cached[1])
        provider = provider_for(account)
        if capabilities(account.kind).parallel_requests:
            provider.prepare_shared()  # built here, once, not by the first two threads to share it
        lock = threading.Lock()
        _providers[account.pk] = (account.updated_at, provider, lock)
        return provider, lock


def one_at_a_time(account, lock: threading.Lock):
    """The cached provider's lock, or nothing for a provider whose requests may run side by side."""
    return nullcontext() if capabilities(account.kind).parallel_requests else lock


def _close_quietly(provider) -> None:
    try:
        provider.close()
    except Exception:  # logging out of a stale session must not fail the new request
        logger.info("closing a stale provider failed", exc_info=True)


def forget_providers() -> None:
    with _providers_lock:
        for _, provider, _ in _providers.values():
            _close_quietly(provider)
        _providers.clear()

