"""Centile Istra myCrm: an end user's terminals, their call events, click-to-call.

myCrm logs in as ``ENDUSER:<login>`` and has no call control. Events come per
terminal: each terminal gets its own listener and websocket, bound to the
session the websocket was opened with.

Socket flow (``open_stream``), following the doc's "Call Flow" and the README's
decision on the websocket URL:

1. log in (a fresh session: the websocket and the listener must share it);
2. open ``ws(s)://HOST/restletrouter/ws-service/myCrm`` with the session cookie;
3. ``POST v1/service/EventListener/bean`` with the doc's two-line payload;
4. ``GET v1/crm/CallLine?listenerName=..&terminalId=..`` to bind the listener.

While the socket is up, the supervisor's session checks send ``GET v1/crm/GetTerminals`` on the same
session: Istra expires a session without requests (websocket pings do not count), and a 401 there is
how a session expired under a socket the PBX left open shows.
"""

from __future__ import annotations

import json
from functools import cached_property

from telephony.providers.base import EventStream, ListenerSpec, NotSupported, Provider, ProviderError, TerminalInfo
from telephony.providers.istra_mycrm.frames import parse_mycrm_frame
from telephony.providers.istra_session import IstraSession, enduser_username
from telephony.updates import CallUpdate

APP = "myCrm"
LISTENER_PREFIX = "ctihub-"
#: The session check (``EventStream.session_check``): the cheapest authenticated myCrm GET.
SESSION_CHECK_PATH = "v1/crm/GetTerminals"


def listener_payload(name: str, terminal_pbx_id: str) -> str:
    """The create-listener body exactly as the doc prints it: two JSON objects on two lines.

    (The doc's example says Content-Length 57, which is exactly this for
    "CallLines" and its terminal id.)
    """
    compact = {"separators": (",", ":")}
    return json.dumps({"name": name}, **compact) + "\n" + json.dumps({"terminalId": terminal_pbx_id}, **compact)


class MyCrmProvider(Provider):
    kind = "istra_mycrm"
    actions = ()
    holds_sockets = True

    @cached_property
    def session(self) -> IstraSession:
        return IstraSession(self.account, APP, enduser_username(self.account.login), http=self.http)

    # --- REST -------------------------------------------------------------------------
    def test_connection(self) -> str:
        count = len(self.fetch_terminals())
        return f"{count} terminal{'s' if count != 1 else ''}"

    def fetch_terminals(self) -> list[TerminalInfo]:
        answer = self.session.request_json("GET", "v1/crm/GetTerminals")
        if not isinstance(answer, list) or not all(isinstance(t, dict) and t.get("terminalId") for t in answer):
            raise ProviderError("Istra myCrm answered GetTerminals with something that is not a terminal list")
        return [
            TerminalInfo(pbx_id=str(t["terminalId"]), device_model=str(t.get("deviceModel") or ""))
            for t in answer
        ]

    def place_call(self, terminal_pbx_id: str, destination: str) -> dict:
        # A GET that dials: never resent because the answer was slow.
        answer = self.session.request_json(
            "GET", "v1/crm/PlaceCall", params={"terminalId": terminal_pbx_id, "destination": destination},
            retry_on_timeout=False,
        )
        return answer if isinstance(answer, dict) else {}

    def call_action(self, call, action: str, payload: dict) -> dict:
        raise NotSupported("myCrm has no call control: use a myRCC account to answer, hold or transfer calls")

    # --- Sockets ------------------------------------------------------------------------
    def listener_specs(self, terminal_pbx_ids: list[str]) -> list[ListenerSpec]:
        return [ListenerSpec(name=f"{LISTENER_PREFIX}{tid}", terminal_pbx_id=tid) for tid in terminal_pbx_ids]

    def open_stream(self, spec: ListenerSpec) -> EventStream:
        stream, _ = self.session.open_listener(
            spec.name,
            listener_payload(spec.name, spec.terminal_pbx_id),
            "v1/crm/CallLine",
            {"listenerName": spec.name, "terminalId": spec.terminal_pbx_id},
        )
        stream.session_check = lambda: self.session.check_alive(SESSION_CHECK_PATH)
        return stream

    def parse_frame(self, text: str, spec: ListenerSpec) -> list[CallUpdate]:
        return parse_mycrm_frame(text, self.account.pk, spec.terminal_pbx_id)

    def close_stream(self, spec: ListenerSpec, stream: EventStream | None) -> None:
        self.session.close_listener(spec.name, stream)

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
