"""Istra's error answers, said for an admin: one ``ProviderError`` each, ``permanent`` when retrying cannot help.

Shared by myCrm, myRCC and myIstra (``session.py`` raises them). ``LoginHeld`` is the refusal remembered
for every process (see ``session.py``'s module doc).
"""

from __future__ import annotations

import requests

from telephony.providers.base import ProviderError, SessionExpired


class LoginHeld(ProviderError):
    """No login sent: these credentials were refused lately (see ``session.py``'s module doc).

    Its status is the refusal's 401, so what tells a refused login from a failed request (myRCC's
    line pulls) tells this one too.
    """

    def __init__(self, message: str):
        super().__init__(message, permanent=True, status=401)


def _error_fields(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:200]
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("code") or ""), str(body.get("message") or body.get("firstMessage") or "")


def session_lost(response: requests.Response) -> bool:
    """Istra forgot (or refuses) our session, as opposed to refusing the user."""
    if response.status_code == 401:
        return _error_fields(response)[0] != "MYCRM_ERR_403"
    if response.status_code == 403:
        return _error_fields(response)[0] == "ROUTER_ERR_400"
    return False


def error_from_response(
    response: requests.Response, app: str, what: str, *, during_login: bool = False
) -> ProviderError:
    """Istra's error answer, said for an admin, with ``permanent`` set when retrying cannot help."""
    status = response.status_code
    code, message = _error_fields(response)
    said = f" ({code}: {message})" if code else (f" ({message})" if message else "")
    fields = {"code": code, "status": status}
    if status == 401 and code == "MYCRM_ERR_403":
        return ProviderError(
            f"Istra refused {what}: the user's extension is not allowed to use myCrm{said}. "
            "Enable the CRM rights for this user in Istra's web administration.",
            permanent=True, **fields,
        )
    if status == 401 and during_login:
        credentials = "login, password and enterprise" if app == "myRCC" else "login and password"
        return ProviderError(f"Istra {app} refused {what}{said}: check the {credentials}", permanent=True, **fields)
    if status == 401:
        return SessionExpired(f"Istra {app} session expired during {what}{said}", **fields)
    if status == 403 and code == "ROUTER_ERR_400":
        return SessionExpired(
            f"Istra {app} says the session cookie does not match the authorisation sent, during {what}{said}",
            **fields,
        )
    if status == 400 and code == "ERR_0":
        return ProviderError(f"Istra {app} refused {what} as a bad request{said}", permanent=True, **fields)
    if status == 512:
        return ProviderError(f"Istra {app}: the terminal is out of service, during {what}{said}", **fields)
    if status == 503 and code == "ROUTER_ERR_503":
        return ProviderError(
            f"Istra {app}: the telephony core (IPTC) is not started, during {what}{said}", **fields
        )
    if status >= 500 or status in (408, 429):
        return ProviderError(f"Istra {app} failed {what}: HTTP {status}{said}", **fields)
    if not code:
        # Istra refuses in its own words, a JSON body with a code. A 4xx without one came from something in front
        # of it (a proxy's or Jetty's page while the PBX is maintained): retried, for a listener stopped until an
        # admin clicks loses every pop-up of the account meanwhile. The account shows the error all the same.
        return ProviderError(f"Istra {app} refused {what}: HTTP {status} without Istra's error body{said}; "
                             "retried, as something in front of Istra may have answered", **fields)
    return ProviderError(f"Istra {app} refused {what}: HTTP {status}{said}", permanent=True, **fields)
