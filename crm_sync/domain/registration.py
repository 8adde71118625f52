"""The module's registration in retailCRM: codes, shops, URLs."""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from accounts.models import Agent
from crm_sync.domain.common import client_for
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm import payloads
from crm_sync.retailcrm.client import RetailCrmError

logger = logging.getLogger(__name__)


def registered_agents():
    """Agents retailCRM can know: both a retailCRM user id and a code."""
    return Agent.objects.exclude(extension_code="").exclude(retailcrm_user_id="").order_by("extension_code")


def registration_payload(integration: RetailCrmIntegration) -> dict:
    return payloads.registration_payload(integration, registered_agents(), integration.external_phones.all())


def register_integration(integration: RetailCrmIntegration) -> dict:
    """Create or update the module in retailCRM; keeps what it said it does not know."""
    try:
        answer = client_for(integration).edit_module(integration.module_code, registration_payload(integration))
    except RetailCrmError as exc:
        RetailCrmIntegration.objects.filter(pk=integration.pk).update(last_error=str(exc)[:2000])
        integration.last_error = str(exc)
        raise
    info = answer.get("info") if isinstance(answer.get("info"), dict) else {}
    fields = {
        "registered_at": timezone.now(),
        "last_error": "",
        "not_exist_user_ids": [str(x) for x in info.get("notExistUsersIds") or []],
        "not_exist_site_codes": [str(x) for x in info.get("notExistSiteCodes") or []],
    }
    names = site_names(integration)
    if names is not None:
        fields["site_names"] = names
    RetailCrmIntegration.objects.filter(pk=integration.pk).update(**fields)
    for name, value in fields.items():
        setattr(integration, name, value)
    return answer


def site_names(integration: RetailCrmIntegration) -> dict[str, str] | None:
    """{site code: name} of retailCRM's shops, for the cards and notifications to name a call's shop
    (``cards.shop_codes``). Read when the module is registered, not per call: one request, no rate
    limit spent while phones ring. None when retailCRM did not say: the names known before are kept."""
    try:
        answer = client_for(integration).sites()
    except RetailCrmError as exc:
        logger.warning("integration %s: the shops' names not read: %s", integration.name, exc)
        return None
    sites = answer.get("sites")
    if isinstance(sites, list):  # an empty dict comes as [] from PHP's json_encode
        sites = {}
    if not isinstance(sites, dict):
        return None
    return {str(code): str(site.get("name") or code) for code, site in sites.items() if isinstance(site, dict)}


def integrations_to_reregister():
    """Enabled integrations, and disabled ones retailCRM knows (so it hears they are inactive)."""
    return RetailCrmIntegration.objects.filter(Q(enabled=True) | Q(registered_at__isnull=False))
