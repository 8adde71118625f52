"""schemathesis against /api/schema/, in-process (WSGI): no input gets a 5xx.

Every operation is tried with generated inputs twice: as generated (so an
unknown clientId, mostly) and with the registered clientId put in (so the
validation past the credential is exercised too). The PBX is replaced by a stub,
so a 502 "the PBX is unreachable" cannot hide a real server error.

The Telepo webhook and the voicemail views are plain Django views outside the
DRF schema; their bad-input answers are covered by their own tests and the
Telepo webhook body by the parser fuzzing in test_frame_fuzzing.py.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from crm_sync.models import RetailCrmIntegration, client_id_digests
from tests.factories import make_agent

CLIENT_ID = "schemathesis-client-id-0123"

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def registered(db, settings, monkeypatch):
    from django.core import signals
    from django.db import close_old_connections

    # As Django's test client does: the WSGI app must not close the test's connection (and transaction).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    settings.PUBLIC_RATE_LIMIT_PER_SECOND = 100000
    # The clientId is encrypted: an integration is found by its digest, never by filtering on it.
    RetailCrmIntegration.objects.get_or_create(
        client_id_digest=client_id_digests(CLIENT_ID)[0],
        defaults={"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": CLIENT_ID})
    from accounts.models import Agent

    if not Agent.objects.filter(extension_code="104").exists():
        make_agent(extension_code="104", retailcrm_user_id="1")
    monkeypatch.setattr("crm_sync.domain.make_call", lambda *args, **kwargs: {"callerIdPresented": False})
    monkeypatch.setattr("crm_sync.domain.change_user_status", lambda *args, **kwargs: None)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_it_answers_every_generated_request_without_a_server_error(case, registered):
    case.call_and_validate(checks=[not_a_server_error])
    if isinstance(case.query, dict):
        case.query["clientId"] = CLIENT_ID
        case.call_and_validate(checks=[not_a_server_error])
