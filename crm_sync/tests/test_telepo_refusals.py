"""A Telepo action refused with ``"event": "FAILED"`` (issue 14, point 4), as retailCRM's makeCallUrl answers it.

Here, above telephony, because it needs the retailCRM integration; the provider and console sides are in
``telephony/providers/telepo/tests/test_failed_actions.py``.
"""

from __future__ import annotations

import pytest
from django.test import Client

from crm_sync.models import RetailCrmIntegration
from telephony.providers.telepo.tests.conftest import account, agent, terminal, world  # noqa: F401 (fixtures)
from telephony.providers.telepo.tests.test_failed_actions import SPEC_DESCRIPTION


@pytest.mark.django_db
def test_it_answers_makecallurl_with_an_error_saying_why_telepo_refused(account, terminal, world, settings):
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.ru", api_key="k",
                                        client_id="client-id-0123456789")
    terminal.agent.extension_code, terminal.agent.retailcrm_user_id = "100", "1"
    terminal.agent.save()
    world.fail_next("make")
    response = Client().get("/api/retailcrm/make-call", {"clientId": "client-id-0123456789", "code": "100",
                                                          "phone": "+33612345678", "userId": "1"})
    assert response.status_code == 502
    assert response.json() == {"success": False,
                               "reason": f"the PBX did not place the call: Telepo refused make: {SPEC_DESCRIPTION}"}
    assert world.calls == {}
