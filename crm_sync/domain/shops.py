"""Which shop a call is about: its site code and external phone, resolved once; and the shop a
click-to-call named, remembered briefly for the outgoing call that follows."""

from __future__ import annotations

import logging

from crm_sync.models import CrmCallSync, ExternalPhone, RetailCrmIntegration
from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.phones import e164_or_empty
from telephony.models import Call, PbxAccount, Terminal

logger = logging.getLogger(__name__)


def shop_of(row: CrmCallSync, call: Call, integration: RetailCrmIntegration, save: bool = True) -> tuple[str, str]:
    """(site code, external phone) of the call, resolved once and kept on the row.

    The external phone is the shop's number the call is about: the one the PBX gave (myCrm's
    ``acdId``, the number a Telepo caller dialled), else for an outgoing call the one retailCRM
    asked a click-to-call for, else for an incoming call the one PSTN number of the terminal it
    rang (``dialled_number``). The site is the integration's shop with that number.
    """
    if row.site_code or row.external_phone:
        return row.site_code, row.external_phone
    external_phone, site = call.external_phone, call.site_code
    if not external_phone and call.direction == Call.Direction.OUTBOUND and call.terminal_id:
        external_phone = recall_click_to_call(call.terminal_id, call.remote_number_e164) or ""
    if not external_phone and call.direction == Call.Direction.INBOUND and call.terminal_id:
        external_phone = dialled_number(call.terminal_id)
    if external_phone and not site:
        site = (
            ExternalPhone.objects.filter(integration=integration, phone=external_phone)
            .values_list("site_code", flat=True)
            .first()
            or ""
        )
    if (site or external_phone) and save:
        CrmCallSync.objects.filter(pk=row.pk).update(site_code=site, external_phone=external_phone)
    if site or external_phone:
        row.site_code, row.external_phone = site, external_phone
    return site, external_phone


def dialled_number(terminal_id: int) -> str:
    """The number a caller dialled to reach this terminal, when its PSTN numbers say it: '' otherwise.

    myRCC's call lines do not say which number was dialled, but its extension directory lists
    each extension's ``pstnNumbers`` (``Terminal.pstn_numbers``). An extension with exactly one
    was reached on that one. With several, any of them may have been dialled, and naming the
    wrong shop is worse than naming none: none is given.
    """
    return _DIALLED.get(terminal_id, lambda: (_dialled_number(terminal_id),))[0]


def _dialled_number(terminal_id: int) -> str:
    found = Terminal.objects.filter(pk=terminal_id).values_list("pstn_numbers", "account__default_region").first()
    if found is None:
        return ""
    numbers, region = found
    numbers = [str(n).strip() for n in (numbers if isinstance(numbers, list) else []) if str(n).strip()]
    if len(numbers) != 1:
        return ""
    return e164_or_empty(numbers[0], region or None)[:32]


# Asked for every event and upload of a call that names no shop (the usual myCrm and myRCC call, when the
# terminal has no single PSTN number: nothing is kept on the row then): a query each time (issue 16). Kept in
# a tuple, so that the usual answer, none, is kept too.
_DIALLED = BriefCache("retailcrm-dialled-number-of-terminal", watch=(Terminal, PbxAccount))


# A click-to-call from retailCRM names the shop's number; the outgoing call that follows
# does not carry it (the PBX does not know about shops), so it is remembered briefly
# and given to that call's ``out`` event and upload.
CLICK_TO_CALL_MEMORY_SECONDS = 120


def _click_to_call_key(terminal_id: int, phone_e164: str) -> str:
    return f"ctihub:retailcrm:c2c:{terminal_id}:{phone_e164}"


def remember_click_to_call(terminal_id: int, phone_e164: str, external_phone: str) -> None:
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        _redis().set(_click_to_call_key(terminal_id, phone_e164), external_phone, ex=CLICK_TO_CALL_MEMORY_SECONDS)
    except Exception:  # only the shop label is lost
        logger.warning("could not remember the shop of a click-to-call", exc_info=True)


def recall_click_to_call(terminal_id: int, phone_e164: str) -> str | None:
    from crm_sync.retailcrm.ratelimit import _redis

    if not phone_e164:
        return None
    try:
        value = _redis().get(_click_to_call_key(terminal_id, phone_e164))
    except Exception:
        return None
    return value.decode() if value else None
