"""The PBX providers: one Django app per PBX API, the same files in each.

``telephony/providers/<kind>/`` holds ``apps.py`` (its ``AppConfig``: registers the kind, its Provider
class, its capabilities, URL prefix, beat entries and admin notes with ``registry``), ``transport.py``
(the ``Provider`` subclass: REST calls and sockets), ``frames.py`` (PBX frames into ``CallUpdate``),
``tasks.py`` (its Celery tasks), ``urls.py`` and ``views.py`` (where the PBX or the console calls us),
``admin.py`` (what the account's admin page says about it) and ``tests/`` with the specs' payloads as
fixtures; a file stays, with a docstring, where a provider has nothing of the kind. Adding a PBX means
adding one folder and its line in ``INSTALLED_APPS``: nothing outside the folder names it
(``tests/test_provider_isolation.py``). ``istra/`` is not a provider: what the three Istra APIs share.
"""

from __future__ import annotations

from telephony.providers.registry import provider_class, provider_for

__all__ = ["provider_class", "provider_for"]
