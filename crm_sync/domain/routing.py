"""Responsible-manager routing: a shared line's incoming call redirected to the caller's manager when free."""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from accounts.models import Agent
from crm_sync.domain.common import ACTIVE_STATES, client_for
from crm_sync.models import CrmCallSync, RetailCrmIntegration
from crm_sync.retailcrm import payloads
from crm_sync.retailcrm.client import RetailCrmError
from telephony.models import Call
from telephony.providers.registry import provider_class

logger = logging.getLogger(__name__)


def route_call(integration_id: int, call_id: int) -> str:
    """Ask retailCRM for the caller's manager; redirect the shared line's call to them if free."""
    from telephony.control import call_action
    from telephony.providers.base import ProviderError
    from telephony.publish import publish_call

    integration = RetailCrmIntegration.objects.filter(pk=integration_id, enabled=True, manager_routing=True).first()
    call = Call.objects.filter(pk=call_id).select_related("account").first()
    if integration is None or call is None:
        return "gone"
    row, _ = CrmCallSync.objects.get_or_create(integration=integration, call=call)
    if not CrmCallSync.objects.filter(pk=row.pk, routing=CrmCallSync.Routing.NONE).update(
        routing=CrmCallSync.Routing.LOOKING
    ):
        return "already routed"
    phone = payloads.remote_phone(call)
    if call.state != Call.State.RINGING or not phone:
        return _routing_done(row, CrmCallSync.Routing.RANG_AS_USUAL)
    try:
        answer = client_for(integration).responsible_manager(phone)
    except RetailCrmError as exc:
        # The call must ring somewhere: without an answer it rings as usual.
        return _routing_done(row, CrmCallSync.Routing.RANG_AS_USUAL, error=str(exc))
    manager = answer.get("manager") if isinstance(answer.get("manager"), dict) else None
    CrmCallSync.objects.filter(pk=row.pk).update(
        looked_up_at=timezone.now(), crm_manager=manager,
        crm_customer=answer.get("customer") if isinstance(answer.get("customer"), dict) else None,
        crm_links=answer.get("links") if isinstance(answer.get("links"), dict) else None,
    )
    agent, extension = free_manager_extension(manager, call.account_id)  # a destination that rings them
    outcome = CrmCallSync.Routing.RANG_AS_USUAL
    error = ""
    if agent is not None:
        call.refresh_from_db()
        if call.state == Call.State.RINGING:
            try:
                call_action(call, "redirect", {"destination": extension})
                outcome = CrmCallSync.Routing.REDIRECTED
            except ProviderError as exc:
                outcome, error = CrmCallSync.Routing.FAILED, f"redirect to {extension} failed: {exc}"
    result = _routing_done(row, outcome, error=error, agent=agent if outcome == CrmCallSync.Routing.REDIRECTED else None)
    publish_call(call_id)  # the card now shows the customer and the links
    return result


def _routing_done(row: CrmCallSync, outcome: str, error: str = "", agent: Agent | None = None) -> str:
    fields = {"routing": outcome, "routed_agent": agent}
    if error:
        fields.update(last_error=error[:2000], last_error_at=timezone.now())
        logger.warning("routing of call %s: %s", row.call_id, error)
    CrmCallSync.objects.filter(pk=row.pk).update(**fields)
    return outcome


def free_manager_extension(manager: dict | None, account_id: int) -> tuple[Agent | None, str]:
    """The manager's agent and the destination that rings them on this account (their terminal's, as its PBX
    reaches it: ``Provider.reach``), if they can take the call now."""
    if not manager:
        return None, ""
    match = Q()
    if manager.get("id") not in (None, ""):
        match |= Q(retailcrm_user_id=str(manager["id"]))
    if manager.get("code"):
        match |= Q(extension_code=str(manager["code"]))
    if not match:
        return None, ""
    agent = Agent.objects.filter(match).first()
    # retailCRM only answers free managers; ctihub also knows statuses set since and calls in progress.
    if agent is None or agent.status != Agent.Status.FREE:
        return None, ""
    if Call.objects.filter(agent=agent, state__in=ACTIVE_STATES).exists():
        return None, ""
    terminal = (
        agent.terminals.filter(account_id=account_id, active=True).exclude(extension="").order_by("id").first()
    )
    if terminal is None:
        return None, ""
    # A Telepo terminal's extension is the device calls are placed from, which Telepo cannot be sent a call to:
    # the redirect was refused and the call rang as usual.
    return agent, provider_class(terminal.account.kind).reach(terminal)
