"""Who a retailCRM callback counts against in the public rate limit (``ctihub.lib.ratelimit``).

``@rate_limited("name")`` here is the base package's limiter with retailCRM's notion of a caller.
"""

from __future__ import annotations

import hashlib

from ctihub.lib import ratelimit


def caller_of(request) -> str:
    """Who a request counts against: the clientId it presents if we gave it out, else its address.

    An unknown clientId counts against the address: every guess its own bucket would let
    someone guess clientIds at any rate.
    """
    from crm_sync.retailcrm.views import integration_for_request

    client_id = request.GET.get("clientId", "")
    if client_id and integration_for_request(request, client_id) is not None:
        return "client:" + hashlib.sha256(client_id.encode()).hexdigest()[:24]  # never the secret itself
    return "addr:" + (request.META.get("REMOTE_ADDR") or "unknown")


def rate_limited(endpoint: str, meanwhile: str = ""):
    """Decorate a view function ``f(request, ...)`` or a method ``f(self, request, ...)`` (``meanwhile``:
    see ``ctihub.lib.ratelimit.rate_limited``)."""
    return ratelimit.rate_limited(endpoint, caller_of, meanwhile)
