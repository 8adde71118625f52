"""One package per PBX API, the same files in each.

``telephony/providers/<kind>/`` holds ``transport.py`` (the ``Provider``
subclass: REST calls and sockets), ``frames.py`` (PBX frames into
``CallUpdate``), ``views.py`` where the PBX calls us, and ``tests/`` with the
specs' payloads as fixtures. Adding a PBX means copying one folder and adding a
line to ``PROVIDERS``.
"""

from __future__ import annotations

from importlib import import_module

PROVIDERS = {
    "istra_mycrm": "telephony.providers.istra_mycrm.transport.MyCrmProvider",
    "istra_myrcc": "telephony.providers.istra_myrcc.transport.MyRccProvider",
    "istra_enduser": "telephony.providers.istra_enduser.transport.EndUserProvider",
    "telepo": "telephony.providers.telepo.transport.TelepoProvider",
}


def provider_class(kind: str):
    try:
        module_path, class_name = PROVIDERS[kind].rsplit(".", 1)
    except KeyError:
        raise LookupError(f"no provider for PBX kind {kind!r}") from None
    return getattr(import_module(module_path), class_name)


def provider_for(account, http=None):
    return provider_class(account.kind)(account, http=http)
