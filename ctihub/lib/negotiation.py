"""DRF's content negotiation with its answer kept per Accept header.

DRF parses the request's Accept header, every renderer's media type and their precedence on every
request (``DefaultContentNegotiation.select_renderer``): 7% of a makeCallUrl click's CPU in one thread,
as much for any API view (issue 16), for the same few Accept headers every time. The answer depends
only on that header, the ``?format=`` override or format suffix and the view's renderers, so it is
kept for them (the renderer's place in the list and the media type; a refusal, ``406`` or ``404``, is
worked out again each time). Up to ``MAX_REMEMBERED`` answers, then it starts afresh.
"""

from __future__ import annotations

import threading

from rest_framework.negotiation import DefaultContentNegotiation

MAX_REMEMBERED = 256

_known: dict[tuple, tuple[int, str]] = {}
_lock = threading.Lock()


class RememberedNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        format = format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE) or ""
        key = (request.META.get("HTTP_ACCEPT", "*/*"), format,
               tuple((type(renderer), renderer.media_type, renderer.format) for renderer in renderers))
        known = _known.get(key)
        if known is not None:
            return renderers[known[0]], known[1]
        renderer, media_type = super().select_renderer(request, renderers, format_suffix)
        place = next(n for n, candidate in enumerate(renderers) if candidate is renderer)
        with _lock:
            if len(_known) >= MAX_REMEMBERED:
                _known.clear()
            _known[key] = (place, media_type)
        return renderer, media_type
