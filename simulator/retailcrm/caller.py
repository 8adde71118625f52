"""retailCRM's calling side: the requests it sends to a telephony module's URLs.

When a manager clicks a number, retailCRM sends ``GET {makeCallUrl}`` with
``clientId``, ``code``, ``phone``, ``userId`` (and ``externalPhone`` when the
order or customer belongs to a shop with an external number). When a manager
changes status, ``GET {changeUserStatusUrl}`` with ``clientId``, ``code``,
``userId``, ``status``. The document's example sends the phone's ``+`` as is
(``phone=+79121234567``), not as ``%2B``; so does this.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from simulator.retailcrm.world import USER_STATUSES, RetailCrmWorld

TIMEOUT = aiohttp.ClientTimeout(total=15)


def _url(base: str, params: list[tuple[str, str]]) -> URL:
    query = urlencode(params, safe="+", quote_via=quote)
    separator = "&" if "?" in base else "?"
    return URL(f"{base}{separator}{query}", encoded=True)


async def _get(world: RetailCrmWorld, what: str, url: URL) -> dict[str, Any]:
    started = time.time()
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(url) as response:
                body = await response.text()
                result = {"what": what, "url": str(url), "status": response.status, "body": body}
    except (aiohttp.ClientError, TimeoutError) as exc:
        result = {"what": what, "url": str(url), "status": None, "body": "", "error": f"{exc.__class__.__name__}: {exc}"}
    result["time"] = started
    world.record_outgoing(result)
    return result


def _telephony_and_code(world: RetailCrmWorld, user_id: str, code: str | None, module: str | None):
    telephony = world.telephony_module(module)["integrations"]["telephony"]
    if code is None:
        code = world.codes_by_user().get(str(user_id))
        if code is None:
            # retailCRM shows no phone icon to a user without a code: it cannot send this.
            raise ValueError(f"user {user_id} has no additional code in the integration")
    return telephony, code


async def make_call(world: RetailCrmWorld, user_id: str, phone: str, *, external_phone: str | None = None,
                    code: str | None = None, client_id: str | None = None, module: str | None = None) -> dict[str, Any]:
    telephony, code = _telephony_and_code(world, user_id, code, module)
    if not telephony.get("makeCallUrl"):
        raise ValueError("the integration has no makeCallUrl")
    params = [("clientId", client_id or telephony["clientId"]), ("code", code), ("phone", phone),
              ("userId", str(user_id))]
    if external_phone:
        params.append(("externalPhone", external_phone))
    return await _get(world, "makeCall", _url(telephony["makeCallUrl"], params))


async def change_status(world: RetailCrmWorld, user_id: str, status: str, *, code: str | None = None,
                        client_id: str | None = None, module: str | None = None) -> dict[str, Any]:
    telephony, code = _telephony_and_code(world, user_id, code, module)
    if not telephony.get("changeUserStatusUrl"):
        raise ValueError("the integration has no changeUserStatusUrl")
    if str(user_id) in world.users and status in USER_STATUSES:
        world.update_user(str(user_id), status=status)  # the status changed in retailCRM first
    params = [("clientId", client_id or telephony["clientId"]), ("code", code), ("userId", str(user_id)),
              ("status", status)]
    return await _get(world, "changeUserStatus", _url(telephony["changeUserStatusUrl"], params))
