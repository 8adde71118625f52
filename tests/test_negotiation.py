"""ctihub.lib.negotiation: DRF's content negotiation, its answer kept per Accept header."""

from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from ctihub.lib import negotiation
from ctihub.lib.negotiation import RememberedNegotiation

ACCEPTS = [None, "*/*", "application/json", "application/json; indent=4", "text/html",
           "text/html;q=0.9, application/json", "image/png"]


def request(accept: str | None, query: dict | None = None) -> Request:
    extra = {"HTTP_ACCEPT": accept} if accept is not None else {}
    return Request(APIRequestFactory().get("/api/x", query or {}, **extra))


def answer(negotiator, accept, renderers, query=None, suffix=None):
    try:
        renderer, media_type = negotiator.select_renderer(request(accept, query), renderers, suffix)
    except (exceptions.NotAcceptable, Http404) as exc:
        return type(exc).__name__
    return renderers.index(renderer), media_type


@pytest.mark.parametrize("query, suffix", [(None, None), ({"format": "json"}, None), ({"format": "api"}, None),
                                           ({"format": "xml"}, None), (None, "json")])
def test_it_answers_as_drfs_own_negotiation_does(query, suffix, monkeypatch):
    monkeypatch.setattr(negotiation, "_known", {})
    for renderers in ([JSONRenderer()], [JSONRenderer(), BrowsableAPIRenderer()], [BrowsableAPIRenderer(), JSONRenderer()]):
        for _twice in range(2):  # worked out, then remembered
            for accept in ACCEPTS:
                expected = answer(DefaultContentNegotiation(), accept, renderers, query, suffix)
                assert answer(RememberedNegotiation(), accept, renderers, query, suffix) == expected, (accept, renderers)


def test_it_works_an_accept_header_out_once(monkeypatch):
    # DRF parsed the Accept header and every renderer's media type on every request: 7% of a makeCallUrl
    # click's CPU (issue 16).
    monkeypatch.setattr(negotiation, "_known", {})
    worked_out = []
    original = DefaultContentNegotiation.select_renderer
    monkeypatch.setattr(DefaultContentNegotiation, "select_renderer",
                        lambda self, *args: worked_out.append(args[0]) or original(self, *args))
    renderers = [JSONRenderer()]
    for _ in range(5):
        renderer, media_type = RememberedNegotiation().select_renderer(request("*/*"), renderers)
        assert renderer is renderers[0] and media_type == "application/json"
        fresh = [JSONRenderer()]  # each request has its own renderer instances: the one of this request
        assert RememberedNegotiation().select_renderer(request("*/*"), fresh)[0] is fresh[0]
    assert len(worked_out) == 1
    for _ in range(3):
        with pytest.raises(exceptions.NotAcceptable):
            RememberedNegotiation().select_renderer(request("image/png"), renderers)
    assert len(worked_out) == 4  # a refusal is worked out each time


def test_it_is_what_every_api_view_negotiates_with(client):
    from rest_framework.settings import api_settings

    assert api_settings.DEFAULT_CONTENT_NEGOTIATION_CLASS is RememberedNegotiation
