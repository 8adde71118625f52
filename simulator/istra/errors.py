"""Istra's error answers, as the specs print them.

Two shapes appear in the documents:

* the router's short form ``{"code": ..., "message": ...}`` (ROUTER_ERR_400,
  ROUTER_ERR_503, MYCRM_ERR_403; myIstra says every error looks like this);
* the restlet API's exception form (ERR_0 "Bad Request", ERR_100 "Invalid
  State") with ``exceptionId``, ``firstMessage`` and an ``info`` block.

Handlers raise :class:`IstraError`; the router middleware turns it into the
response, so a handler never builds an error body by hand.
"""

from __future__ import annotations

import time
from typing import Any


class IstraError(Exception):
    """An error answer: HTTP status plus the exact JSON body to send."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(f"{status} {body.get('code')}: {body.get('message')}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def router_error(status: int, code: str, message: str) -> IstraError:
    return IstraError(status, {"code": code, "message": message})


def restlet_exception(status: int, code: str, type_msg: str, message: str, **info: str) -> IstraError:
    """The restlet exception body, e.g. the 400 ERR_0 and 512 ERR_100 of the myCrm doc."""
    # The doc's exceptionIds end in an epoch-millisecond time (1402060415874 is June 2014).
    body: dict[str, Any] = {
        "message": message,
        "exceptionId": f"restletapi_exception_{int(time.time() * 1000)}",
        "code": code,
        "firstMessage": message,
        "info": {"type": {"id": code, "msg": type_msg}, **info},
    }
    return IstraError(status, body)


# --- the errors the documents print, word for word ---------------------------------

def cookie_mismatch() -> IstraError:
    return router_error(403, "ROUTER_ERR_400", "cookie session doesn't match authorisation sent")


def iptc_not_started() -> IstraError:
    return router_error(503, "ROUTER_ERR_503", "IPTC not started")


def mycrm_not_allowed() -> IstraError:
    return router_error(401, "MYCRM_ERR_403", "user extension not allowed for myCRM")


def bad_request(message: str) -> IstraError:
    """400 ERR_0, as the myCrm doc's "bad terminal ID"."""
    return restlet_exception(400, "ERR_0", "Bad Request", message)


def terminal_out_of_service() -> IstraError:
    return restlet_exception(
        512, "ERR_100", "Invalid State", "Terminal out of service",
        model="terminal", value="OutOfService", property="state",
    )


# --- errors the documents leave unspecified (codes chosen here, in the same shape) ---

def authentication_failed() -> IstraError:
    # The docs only say "401" for bad credentials / unknown session (myIstra §VII.A.2);
    # the code names below follow the router's ROUTER_ERR_<status> pattern.
    return router_error(401, "ROUTER_ERR_401", "authentication failed")


def session_unknown() -> IstraError:
    return router_error(401, "ROUTER_ERR_401", "session expired or unknown")


def application_not_allowed(app: str) -> IstraError:
    return router_error(403, "ROUTER_ERR_403", f"resource not available for application {app}")


def not_found(path: str) -> IstraError:
    return router_error(404, "ROUTER_ERR_404", f"no resource at {path}")


def invalid_line_action(line_id: str, action: str, state: str) -> IstraError:
    """An action absent from the line's ``actions`` list: 400 ERR_0 (the doc maps 400 to ERR_0)."""
    return restlet_exception(
        400, "ERR_0", "Bad Request", f"action {action} not allowed on call line {line_id} in state {state}",
        model="callLine", value=state, property="state",
    )
