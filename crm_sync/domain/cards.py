"""What a call card shows from retailCRM (a card enricher: ``crm_sync.plugins``)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from crm_sync.domain.handoff import serving_integrations
from crm_sync.models import CrmCallSync, ExternalPhone
from telephony.models import Call

# The card of a manager's leg of a redirected call shows the lookup made for the shared line.
ROUTED_CARD_WINDOW = timedelta(minutes=2)


def card_fields(call: Call) -> dict:
    """What a call card shows from retailCRM: the customer, their manager and links (or None)."""
    return card_fields_many([call])[call.pk]


def card_fields_many(calls: list[Call]) -> dict[int, dict]:
    """``card_fields`` for many calls, in three queries at most (none for accounts no CRM serves)."""
    fields: dict[int, dict] = {call.pk: {"crm": None} for call in calls}
    # Only incoming calls are looked up, and only by responsible-manager routing: an account no routing
    # integration serves has nothing to show, and its cards (every frame's) cost no query.
    looked_up = [c for c in calls if c.pk and c.direction == Call.Direction.INBOUND
                 and serving_integrations(c.account_id)[1]]
    if not looked_up:
        return fields
    found: dict[int, CrmCallSync] = {}
    # The integration's shop names ride along (a join, not a query more).
    for row in CrmCallSync.objects.filter(
        call_id__in={c.pk for c in looked_up}, looked_up_at__isnull=False
    ).annotate(shop_names=F("integration__site_names")).order_by("looked_up_at"):
        found[row.call_id] = row  # the latest lookup wins
    # The manager's own leg of a redirected call: show what the lookup for the shared line found.
    legs = [c for c in looked_up if c.pk not in found and c.agent_id and c.remote_number_e164]
    if legs:
        routed = CrmCallSync.objects.filter(
            routed_agent_id__in={c.agent_id for c in legs}, routing=CrmCallSync.Routing.REDIRECTED,
            call__account_id__in={c.account_id for c in legs},
            call__remote_number_e164__in={c.remote_number_e164 for c in legs},
            looked_up_at__gte=timezone.now() - ROUTED_CARD_WINDOW,
        ).annotate(shop_names=F("integration__site_names")).select_related("call").order_by("looked_up_at")
        latest = {(r.routed_agent_id, r.call.account_id, r.call.remote_number_e164): r for r in routed}
        for call in legs:
            row = latest.get((call.agent_id, call.account_id, call.remote_number_e164))
            if row is not None:
                found[call.pk] = row
    shops = shop_codes(looked_up, found)
    for call in looked_up:
        row = found.get(call.pk)
        if row is not None:
            code = shops.get(call.pk, "")
            names = row.shop_names if isinstance(row.shop_names, dict) else {}
            fields[call.pk] = {"crm": {"customer": row.crm_customer, "manager": row.crm_manager,
                                       "links": row.crm_links, "routing": row.routing,
                                       "shop": names.get(code) or code or None}}
    return fields


def shop_codes(calls: list[Call], found: dict[int, CrmCallSync]) -> dict[int, str]:
    """{call id: the code of the retailCRM shop (site) the call is about}, for the calls looked up.

    The agent (and the notification of a hidden console) sees the shop by its name (the integration's
    ``site_names``), not the number dialled. The code: the customer's own site as retailCRM answered
    it, else the shop the call was resolved to (``shops.shop_of``), else the shop whose external phone
    the PBX said was dialled.
    """
    codes: dict[int, str] = {}
    by_phone: dict[tuple[int, str], list[int]] = {}
    for call in calls:
        row = found.get(call.pk)
        if row is None:
            continue
        customer = row.crm_customer if isinstance(row.crm_customer, dict) else {}
        code = str(customer.get("site") or "") or row.site_code or call.site_code
        if code:
            codes[call.pk] = code
        elif call.external_phone:
            by_phone.setdefault((row.integration_id, call.external_phone), []).append(call.pk)
    if by_phone:
        for integration_id, phone, code in ExternalPhone.objects.filter(
            integration_id__in={i for i, _ in by_phone}, phone__in={p for _, p in by_phone}
        ).values_list("integration_id", "phone", "site_code"):
            for call_id in by_phone.get((integration_id, phone), ()):
                codes[call_id] = code
    return codes
