"""MiCloud Telepo call control and call state over REST, with the account's API ticket as bearer token.

Every action is ``POST`` to a path of ``PATHS`` with a JSON body built by
``_body``. A call action sends the call's last known ``stateToken``; Telepo
refuses it if the call moved on meanwhile. That conflict is never retried: the
user's calls are refreshed from a snapshot and the caller is told to look again.
An action's answer is the call's new state (with its new stateToken), which is
applied at once so the next action carries the right token.

Telepo may also refuse with a 200: an answer with ``"event": "FAILED"`` and an
``eventDescription`` (the spec's own sample, "Call setup failed with status code
504"). That is a ``ProviderError`` (permanent) whose message is Telepo's
description, so the console shows it and makeCallUrl answers an error; the
user's snapshot is asked for, since the refused call may have moved on.
"""

from __future__ import annotations

import logging
import re
from functools import cached_property
from urllib.parse import quote

from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext, gettext_lazy, ngettext

from ctihub.lib.http_client import HttpClient, HttpError
from ctihub.lib.phones import e164_or_empty
from telephony import updates as u
from telephony.providers.base import ActionRefused, NotSupported, Provider, ProviderError, StateConflict, trust_store

logger = logging.getLogger(__name__)

CONTROL = "/api/call/control/v1"
# Every path ctihub calls, in one place: hold, resume and both transfers are spelled
# out by the spec, make by public code; the rest follow the spec's pattern.
PATHS = {
    "make": CONTROL + "/make/{domain}/{userId}/{deviceId}",
    u.ANSWER: CONTROL + "/answer/{domain}/{userId}/{callId}",
    u.HOLD: CONTROL + "/hold/{domain}/{userId}/{callId}",
    u.RESUME: CONTROL + "/resume/{domain}/{userId}/{callId}",
    u.ALTERNATE: CONTROL + "/alternate/{domain}/{userId}/{callId}",
    u.PARK: CONTROL + "/park/{domain}/{userId}/{callId}",
    u.PICKUP: CONTROL + "/pickup/{domain}/{userId}/{callId}",
    u.MUTE: CONTROL + "/mute/{domain}/{userId}/{callId}",
    u.UNMUTE: CONTROL + "/unmute/{domain}/{userId}/{callId}",
    u.MOVE: CONTROL + "/move/{domain}/{userId}/{callId}",
    u.REDIRECT: CONTROL + "/singlesteptransfer/{domain}/{userId}/{callId}",
    u.TRANSFER: CONTROL + "/transfer/{domain}/{userId}/{callId}",
    u.SEND_DTMF: CONTROL + "/dtmf/{domain}/{userId}/{callId}",
    u.CONFERENCE_ADD: CONTROL + "/conferenceadd/{domain}/{userId}/{callId}",
    u.LEAVE: CONTROL + "/conferenceleave/{domain}/{userId}/{callId}",
    u.CONFERENCE_REMOVE: CONTROL + "/conferenceremove/{domain}/{userId}/{callId}",
    u.HANGUP: CONTROL + "/terminate/{domain}/{userId}/{callId}",
    "snapshot": "/api/call/state/v1/snapshot/{domain}/{userId}",
}
CALL_ACTIONS = tuple(a for a in PATHS if a in u.ACTIONS)
# Actions that change the user's other calls too (the target leg, the conference's other legs): the answer
# is the acted-on call's state only, so the user's snapshot is asked for (a conference leg's card then
# offers removing it, a transferred target ends).
AFFECTS_OTHER_CALLS = (u.TRANSFER, u.CONFERENCE_ADD, u.CONFERENCE_REMOVE, u.ALTERNATE)
TRANSFER_TYPES = ("BASIC", "VOICEMAIL", "CAMP_ON", "DIVERSION_BYPASS")
CONFLICT_STATUSES = (409, 412)
DTMF_DIGITS = re.compile(r"^[0-9*#A-Da-d]{1,32}$")


class TelepoProvider(Provider):
    kind = "telepo"
    actions = CALL_ACTIONS
    holds_sockets = False  # Telepo calls us (the CRM connector webhook)

    @cached_property
    def client(self) -> HttpClient:
        return self.http or HttpClient("telepo", verify=trust_store(self.account.ca_bundle))

    def prepare_shared(self) -> None:
        self.client  # the one HttpClient every thread of the cached provider shares (it is thread-safe)

    @classmethod
    def reach(cls, terminal) -> str:
        """A Telepo terminal is a user, its extension the device calls are placed from (not a destination): the
        user's first PSTN number if the admin gave one, else the user's own address (a userId is SIP-shaped,
        ``user@organization.org``), which reaches whichever of the user's devices Telepo rings."""
        numbers = [n for n in terminal.pstn_numbers or () if isinstance(n, str) and n.strip()]
        return numbers[0] if numbers else f"sip:{terminal.pbx_id}"

    # --- REST -------------------------------------------------------------------------
    def test_connection(self) -> str:
        users = list(self.account.terminals.filter(active=True).values_list("pbx_id", flat=True))
        if not users:
            raise ProviderError(gettext_lazy("add one terminal per Telepo user (PBX id = the userId) to test the API "
                                             "ticket"), permanent=True)
        calls = sum(len(self.snapshot(user_id).get("calls") or []) for user_id in users)
        # Shown in the admin's language (telephony.admin runs it in the request).
        reachable = ngettext("%(count)s Telepo user reachable", "%(count)s Telepo users reachable", len(users))
        now = ngettext("%(count)s call now", "%(count)s calls now", calls)
        return f"{reachable % {'count': len(users)}}, {now % {'count': calls}}"

    def fetch_terminals(self):
        raise NotSupported(gettext_lazy("Telepo does not list its users over the call-control API: add one terminal "
                                        "per Telepo user (PBX id = userId, extension = the deviceId to place calls "
                                        "from)"))

    def snapshot(self, user_id: str) -> dict:
        answer = self.request("GET", "snapshot", userId=user_id)
        if not isinstance(answer.get("calls", []), list):
            raise ProviderError(f"Telepo answered the snapshot of {user_id} without a list of calls")
        return answer

    def place_call(self, terminal_pbx_id: str, destination: str) -> dict:
        device_id = self._device_of(terminal_pbx_id)
        answer = self.request("POST", "make", body={"destination": self.tel_uri(destination)},
                              userId=terminal_pbx_id, deviceId=device_id)
        _raise_if_failed(answer, "make")
        return answer

    def call_action(self, call, action: str, payload: dict) -> dict:
        if action not in CALL_ACTIONS:
            raise NotSupported(f"Telepo has no {action} action")
        user_id = _user_of(call)
        body = self._body(action, call, payload)
        requested_at = timezone.now()
        try:
            answer = self.request("POST", action, body=body, userId=user_id, callId=call.pbx_call_id)
        except StateConflict as exc:
            self._refresh_after_conflict(user_id)
            raise StateConflict(_changed_meanwhile(action), code=exc.code or "STATE_TOKEN_MISMATCH",
                                status=exc.status) from exc
        except ActionRefused:
            # The spec says only that a stale stateToken makes the request "fail": a 400 or 422 may be one. The
            # snapshot brings the call's token and actions as they are, so the agent's next click can work.
            self._refresh_soon(user_id)
            raise
        if _failed(answer):
            # The call's state in a refusal is not news to act on; the snapshot says where the call is.
            self._refresh_soon(user_id)
            _raise_if_failed(answer, action)
        self._absorb(answer, user_id, requested_at)
        if action in AFFECTS_OTHER_CALLS:
            self._refresh_soon(user_id)
        return answer

    # --- requests ---------------------------------------------------------------------
    def request(self, method: str, path_key: str, body: dict | None = None, **params: str) -> dict:
        url = self.account.base_url.rstrip("/") + PATHS[path_key].format(
            domain=quote(self.account.enterprise, safe=""), **{k: quote(str(v), safe="") for k, v in params.items()}
        )
        headers = {"Authorization": f"Bearer {self.account.api_token}", "Accept": "application/json"}
        try:
            response = self.client.request(method, url, json=body, headers=headers)
        except HttpError as exc:
            raise ProviderError(f"Telepo did not answer: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response, path_key)
        if not response.content.strip():
            return {}
        try:
            answer = response.json()
        except ValueError:
            raise ProviderError(f"Telepo answered {path_key} with something that is not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def tel_uri(self, number: str) -> str:
        """A destination as Telepo wants it: a SIP or tel URI, numbers in E.164."""
        text = (number or "").strip()
        if text.lower().startswith(("sip:", "sips:")):
            return text
        if text.lower().startswith("tel:"):
            text = text[4:]
        e164 = e164_or_empty(text, self.account.default_region or None)
        if e164:
            return f"tel:{e164}"
        digits = re.sub(r"[\s().-]", "", text)
        if digits.startswith("+") and digits[1:].isdigit():
            return f"tel:{digits}"  # already international, if unknown to the numbering plan (the spec's +15555)
        if digits and all(ch.isdigit() or ch in "*#" for ch in digits):
            # A short internal number is only meaningful inside the organisation (RFC 3966 local number).
            return f"tel:{digits};phone-context={self.account.enterprise}"
        raise ActionRefused(_not_a_number(repr(number)[:60]))

    # --- bodies -----------------------------------------------------------------------
    def _body(self, action: str, call, payload: dict) -> dict:
        body: dict = {}
        token = _token(call.state_token)
        if token is not None:
            body["stateToken"] = token
        if action == u.REDIRECT:
            body.update(self._single_step_transfer(payload))
        elif action in (u.TRANSFER, u.CONFERENCE_ADD):
            body.update(_target_call(action, payload))
        elif action == u.SEND_DTMF:
            digits = str(payload.get("digits") or "").strip()
            if not DTMF_DIGITS.match(digits):
                raise ActionRefused(gettext_lazy("send_dtmf needs digits (0-9, *, #, A-D)"))
            body["digits"] = digits
        elif action == u.MOVE:
            body["deviceId"] = _required(payload, "device_id",
                                         gettext_lazy("move needs the device to move the call to"))
        elif action == u.CONFERENCE_REMOVE:
            body["participantId"] = _participant(payload)
        elif action in (u.ANSWER, u.PICKUP) and payload.get("device_id"):
            body["deviceId"] = str(payload["device_id"])
        return body

    def _single_step_transfer(self, payload: dict) -> dict:
        destination = str(payload.get("destination") or "").strip()
        if not destination:
            raise ActionRefused(gettext_lazy("redirect needs a destination number"))
        transfer_type = str(payload.get("type") or "BASIC").upper()
        if transfer_type not in TRANSFER_TYPES:
            raise ActionRefused(_transfer_types(", ".join(TRANSFER_TYPES)))
        blind = payload.get("blind", False)
        if not isinstance(blind, bool):  # "false" from a form would read as True
            raise ActionRefused(gettext_lazy("blind must be true or false"))
        return {"blind": blind, "type": transfer_type, "destination": self.tel_uri(destination)}

    def _device_of(self, user_id: str) -> str:
        terminal = self.account.terminals.filter(pbx_id=user_id).only("extension").first()
        if terminal is None or not terminal.extension:
            raise ProviderError(_no_device(user_id), permanent=True)
        return terminal.extension

    # --- keeping our calls right ---------------------------------------------------------
    def _absorb(self, answer: dict, user_id: str, requested_at) -> None:
        from telephony.providers.telepo import reconcile

        try:
            if answer.get("callId") and answer.get("status"):
                reconcile.apply_call_state(self.account, user_id, answer, requested_at)
            else:
                reconcile.request_reconcile(self.account.pk, user_id)
        except Exception:  # the action succeeded; a failed refresh is caught up by the next snapshot
            logger.warning("could not apply Telepo's answer", extra={"account_id": self.account.pk}, exc_info=True)

    def _refresh_soon(self, user_id: str) -> None:
        from telephony.providers.telepo import reconcile

        try:
            reconcile.request_reconcile(self.account.pk, user_id)
        except Exception:  # the action's outcome is what the agent must hear; the periodic reconcile catches up
            logger.warning("could not ask for a Telepo snapshot", extra={"account_id": self.account.pk},
                           exc_info=True)

    def _refresh_after_conflict(self, user_id: str) -> None:
        from telephony.providers.telepo import reconcile

        try:
            reconcile.reconcile_user(self.account, user_id, provider=self)
        except ProviderError as exc:
            logger.warning("refreshing %s after a stateToken conflict failed: %s", user_id, exc,
                           extra={"account_id": self.account.pk})

    def close(self) -> None:
        if "client" in self.__dict__ and self.http is None:
            self.client.close()


# What the agent (or the admin) reads, in their language when shown (the console, an admin message), not when
# raised; Telepo's own words (its eventDescription) stay as Telepo wrote them.
_changed_meanwhile = lazy(lambda action: gettext(
    "the call changed at the PBX before the %(action)s reached it; its state is refreshed: look at the call "
    "again and retry if it still makes sense") % {"action": action}, str)
_not_a_number = lazy(lambda number: gettext("%(number)s is not a phone number, a tel: or a sip: URI")
                     % {"number": number}, str)
_transfer_types = lazy(lambda types: gettext("transfer type must be one of %(types)s") % {"types": types}, str)
_no_device = lazy(lambda user: gettext("set the deviceId to call from as the extension of Telepo user %(user)s")
                  % {"user": user}, str)
_needs_other_call = lazy(lambda action: gettext("%(action)s needs the other call") % {"action": action}, str)
_refused = lazy(lambda action, reason: gettext("Telepo refused %(action)s: %(reason)s")
                % {"action": action, "reason": reason}, str)


def _user_of(call) -> str:
    """The Telepo user whose call it is: its terminal's, else (matched by email or number) its agent's."""
    from telephony.models import Terminal

    if call.terminal_id:
        return call.terminal.pbx_id
    if call.agent_id:
        user_id = (Terminal.objects.filter(account_id=call.account_id, agent_id=call.agent_id, active=True)
                   .values_list("pbx_id", flat=True).first())
        if user_id:
            return user_id
    raise ActionRefused(gettext_lazy("this call has no Telepo user: ctihub cannot act on it"))


def _token(value) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _target_call(action: str, payload: dict) -> dict:
    other = payload.get("other_call")
    if other is None:
        raise ActionRefused(_needs_other_call(action))
    body = {"targetCallId": other.pbx_call_id}
    token = _token(other.state_token)
    if token is not None:
        body["targetStateToken"] = token
    return body


def _participant(payload: dict) -> str:
    """The conference participant to remove: the agent's call (leg) in the conference the console named
    (``party_call``, checked to be the agent's), or a participant id as Telepo lists it.

    Telepo lists a conference's participants by call id (the spec's sample: ``participants[].id`` is the
    ``callId``), so a leg's call id is its participant id.
    """
    party = payload.get("party_call")
    if party is not None:
        return party.pbx_call_id
    return _required(payload, "participant_id", gettext_lazy("conference_remove needs the participant"))


def _required(payload: dict, key: str, message: str) -> str:
    value = str(payload.get(key) or "").strip()
    if not value:
        raise ActionRefused(message)
    return value


def _failed(answer: dict) -> bool:
    return str(answer.get("event") or "").upper() == "FAILED"


def _raise_if_failed(answer: dict, path_key: str) -> None:
    """Telepo says no with a 200: ``"event": "FAILED"`` and why in ``eventDescription`` (the spec's sample).

    Permanent: sent again as it is, the request meets the same refusal; the agent reads Telepo's reason.
    """
    if not _failed(answer):
        return
    description = str(answer.get("eventDescription") or "").strip()[:500] or gettext_lazy("no reason given")
    raise ProviderError(_refused(path_key, description), permanent=True, code="FAILED")


def _error(response, path_key: str) -> ProviderError:
    status = response.status_code
    code, message = _error_details(response)
    text = f"Telepo refused {path_key} (HTTP {status}{f' {code}' if code else ''}){f': {message}' if message else ''}"
    if status in CONFLICT_STATUSES:
        return StateConflict(text, code=code, status=status)
    if status == 401:
        return ProviderError(f"{text}; check the account's API ticket", permanent=True, code=code, status=status)
    if status == 403:
        return ProviderError(f"{text}; the ticket needs CALL_CONTROL and the user a Cloud CTI API licence",
                             permanent=True, code=code, status=status)
    if status in (400, 404, 422):
        return ActionRefused(text, code=code, status=status)
    return ProviderError(text, code=code, status=status)


def _error_details(response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200].strip()
    if not isinstance(body, dict):
        return "", ""
    return (str(body.get("code") or body.get("error") or body.get("event") or ""),
            str(body.get("message") or body.get("description") or body.get("eventDescription") or ""))
