"""django-csp's middleware with its policy strings built once per configuration.

django-csp builds the Content-Security-Policy header from the settings on every response
(``build_policy`` twice, the policy and the report-only one, each after a deep ``asdict`` of the
response's policy parts): ~0.1 ms of a request's CPU in one thread, a third of what the whole
middleware stack cost a makeCallUrl click or a bare DRF view (issue 16). Without a per-view change
(``@csp_update``, ``@csp_replace``, ``@csp``) and without a nonce, the strings depend on the two
settings alone: they are built once for the setting objects in use and reused while those are the
same objects (``override_settings`` puts new ones). Everything else is django-csp's own
``process_response``, run with those two names replaced: the exemptions, the excluded prefixes,
the DEBUG pages, the nonce guard.
"""

from __future__ import annotations

import types

import csp.middleware
from csp.middleware import CSPMiddleware
from csp.utils import build_policy
from django.conf import settings

_built: dict[bool, tuple[object, str]] = {}


def _policy(config=None, update=None, replace=None, nonce=None, report_only: bool = False) -> str:
    if config is not None or update is not None or replace is not None or nonce is not None:
        return build_policy(config=config, update=update, replace=replace, nonce=nonce, report_only=report_only)
    setting = getattr(settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY" if report_only else "CONTENT_SECURITY_POLICY",
                      None)
    known = _built.get(report_only)
    if known is None or known[0] is not setting:
        known = _built[report_only] = (setting, build_policy(report_only=report_only))
    return known[1]


def _parts(parts) -> dict:
    # What build_policy is given, without asdict's deep copy: it only reads them.
    return {"config": parts.config, "update": parts.update, "replace": parts.replace, "nonce": parts.nonce}


class PolicyOnceMiddleware(CSPMiddleware):
    process_response = types.FunctionType(CSPMiddleware.process_response.__code__,
                                          {**vars(csp.middleware), "build_policy": _policy, "asdict": _parts},
                                          "process_response")
