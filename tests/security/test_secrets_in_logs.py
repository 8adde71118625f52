"""No credential ever reaches a log line, an error message or an HTTP answer.

A realistic flow with every logger at DEBUG: an Istra myCrm login with a
password (and a failed one), retailCRM requests with an API key (and a refused
one), the retailCRM callbacks with the clientId, the admin pages of the
objects holding the secrets, /api/schema/ and /metrics. Then the captured logs,
every exception text and every response body are searched for the secrets.
"""

from __future__ import annotations

import logging

import pytest
from django.contrib import admin
from django.db import connection
from django.urls import reverse

from crm_sync import domain as crm_domain
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmClient, RetailCrmError
from ctihub.lib.logs import ContextFilter
from telephony.models import PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ProviderError
from tests.factories import make_account, make_agent
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)
from tests.support.retailcrm_sim import RetailCrmControl

pytestmark = pytest.mark.django_db

PBX_PASSWORD = "pbx-Pa55-7f3e9c2a1b"
WRONG_PASSWORD = "wrong-Pa55-55e0d1c9"
CRM_API_KEY = "crm-key-4b1d9e77c0aa"
CLIENT_ID = "client-id-8c2f01e6a9d3"
WEBHOOK_SECRET = "telepo-hook-3e9a0f5c77"
TELEPO_TOKEN = "telepo-ticket-a1c9e03d"
SECRETS = (PBX_PASSWORD, WRONG_PASSWORD, CRM_API_KEY, CLIENT_ID, WEBHOOK_SECRET, TELEPO_TOKEN)


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s%(ids)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    handler = Capture()
    root = logging.getLogger()
    loggers = [root] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    levels = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for lg, level in levels:
        lg.setLevel(level)


def assert_clean(text: str, where: str):
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} appears in {where}"


def test_it_keeps_every_secret_out_of_logs_errors_and_answers(sim, captured, admin_client, client, settings):  # noqa: F811
    seen: list[tuple[str, str]] = []
    world = sim.state.istra
    world.add_user("leaky", PBX_PASSWORD)
    world.add_extension("5985841581756135999", "104", label="Leaky", owner="leaky")
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login="leaky",
                           password=PBX_PASSWORD)
    telepo = make_account(kind=PbxAccount.Kind.TELEPO, base_url="http://127.0.0.1:9", enterprise="org.example",
                          login="", password="", api_token=TELEPO_TOKEN, webhook_secret=WEBHOOK_SECRET)

    # The PBX: a login with the password, a listing, a logout; and a login that fails.
    provider = provider_for(account)
    try:
        provider.test_connection()
        provider.fetch_terminals()
    finally:
        provider.close()
    wrong = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login="leaky",
                         password=WRONG_PASSWORD)
    with pytest.raises(ProviderError) as refused:
        provider_for(wrong).test_connection()
    seen.append(("the failed login's error", f"{refused.value!r} {refused.value}"))

    # retailCRM: requests with the API key, and one it refuses.
    crm = RetailCrmControl(sim.url)
    crm.reset()
    crm.add_api_key(CRM_API_KEY)
    integration = RetailCrmIntegration.objects.create(name="shop", crm_url=sim.url, api_key=CRM_API_KEY,
                                                      module_code="ctihub", client_id=CLIENT_ID)
    # Registration is the one request that carries the clientId out, in its body.
    crm_domain.register_integration(integration)
    assert crm.modules()["ctihub"]["integrations"]["telephony"]["clientId"] == CLIENT_ID
    revoked = RetailCrmIntegration.objects.create(name="revoked", crm_url=sim.url, api_key=CRM_API_KEY + "-revoked",
                                                  module_code="ctihub2", client_id=CLIENT_ID + "-2")
    with pytest.raises(RetailCrmError) as registration_refused:
        crm_domain.register_integration(revoked)
    seen.append(("the refused registration's error", str(registration_refused.value)))
    with connection.cursor() as cursor:  # what a database dump would hold
        cursor.execute("SELECT client_id, client_id_digest, api_key FROM crm_sync_retailcrmintegration")
        seen.append(("the integrations' rows", repr(cursor.fetchall())))
    api = RetailCrmClient(sim.url, CRM_API_KEY)
    try:
        api.responsible_manager("+33412345670")
    except RetailCrmError as exc:
        seen.append(("a retailCRM error", str(exc)))
    with pytest.raises(RetailCrmError) as crm_refused:
        RetailCrmClient(sim.url, CRM_API_KEY + "-revoked").get_module("ctihub")
    seen.append(("the refused retailCRM request's error", str(crm_refused.value)))

    # The callbacks retailCRM sends with the clientId, good and bad.
    make_agent(extension_code="104", retailcrm_user_id="1")
    for path, params in [
        ("/api/retailcrm/user-status", {"clientId": CLIENT_ID, "code": "104", "userId": "1", "status": "busy"}),
        ("/api/retailcrm/user-status", {"clientId": CLIENT_ID, "code": "104", "userId": "1", "status": "nope"}),
        ("/api/retailcrm/make-call", {"clientId": CLIENT_ID, "code": "999", "userId": "1", "phone": "+33412345670"}),
        ("/api/retailcrm/make-call", {"clientId": CLIENT_ID + "x"}),
    ]:
        response = client.get(path, params)
        seen.append((f"GET {path} {response.status_code}", response.content.decode()))
    hook = client.post(f"/api/telepo/webhook/{WEBHOOK_SECRET}", data="{", content_type="application/json")
    seen.append((f"the Telepo webhook's {hook.status_code}", hook.content.decode()))

    # The admin pages of everything holding a secret, and the machine-readable endpoints.
    for obj in (account, telepo, integration):
        url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
        seen.append((url, admin_client.get(url).content.decode()))
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        seen.append((url, admin_client.get(url).content.decode()))
    for url in ("/api/schema/", "/metrics", "/healthz"):
        seen.append((url, client.get(url).content.decode()))

    assert any("istra" in line.lower() or "http" in line.lower() for line in captured.lines), "nothing was logged"
    assert_clean("\n".join(captured.lines), "the logs")
    for where, text in seen:
        assert_clean(text, where)
