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

myCrm has no list of the calls alive to read after a reconnect (myRCC has), so a
call that ended while the socket was down would stay live here. Each (re)connect
therefore queues ``reconcile_after_reconnect_task`` (its ``initial_frames``): the call
history of the End User account with the same login on the same server, if the
admin configured one, ends those calls; without one, the stale-call sweep
(``telephony.sweep``) does, after ``CALL_STALE_<STATE>_SECONDS``.
"""

from __future__ import annotations

import json
import threading
import time
from functools import cached_property

from django.utils.translation import gettext_lazy, ngettext

from telephony.providers.base import EventStream, ListenerSpec, NotSupported, Provider, ProviderError, TerminalInfo
from telephony.providers.istra.session import IstraSession, enduser_username
from telephony.providers.istra_mycrm.frames import parse_mycrm_frame
from telephony.updates import CallUpdate

APP = "myCrm"
LISTENER_PREFIX = "ctihub-"
#: The session check (``EventStream.session_check``): the cheapest authenticated myCrm GET.
SESSION_CHECK_PATH = "v1/crm/GetTerminals"
# Seconds between a (re)connect and its reconcile: the frames the reconnect itself brings are applied first.
RECONCILE_DELAY_SECONDS = 2.0
# A reconcile reads the whole account's history: one queued to run at least this long after a socket connected
# covers that socket too. A worker joining takes hundreds of an account's sockets over, and one reconcile task
# each (queued, then run by some worker) was a sixth of the taker's CPU a move and as much again elsewhere.
RECONCILE_COVERS_AFTER_SECONDS = RECONCILE_DELAY_SECONDS / 2
_reconciles_due: dict[int, float] = {}  # account id -> when its last queued reconcile runs (time.monotonic)
_reconciles_lock = threading.Lock()


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

    def prepare_shared(self) -> None:
        self.session  # the one IstraSession every thread of the cached provider shares

    @cached_property
    def session(self) -> IstraSession:
        return IstraSession(self.account, APP, enduser_username(self.account.login), http=self.http)

    # --- REST -------------------------------------------------------------------------
    def test_connection(self) -> str:
        count = len(self.fetch_terminals())
        return ngettext("%(count)s terminal", "%(count)s terminals", count) % {"count": count}

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
        raise NotSupported(gettext_lazy("myCrm has no call control: use a myRCC account to answer, hold or transfer "
                                        "calls"))

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
        # Lazy: run by the supervisor once the socket is bound; it queues the reconcile and yields no frame.
        stream.initial_frames = self._reconcile_later()
        return stream

    def _reconcile_later(self):
        from ctihub.lib.queueing import enqueue
        from telephony.providers.istra_enduser.tasks import reconcile_after_reconnect_task

        now = time.monotonic()
        with _reconciles_lock:
            due = _reconciles_due.get(self.account.pk)
            if due is not None and due - now >= RECONCILE_COVERS_AFTER_SECONDS:
                return  # the one queued runs late enough after this socket connected
            _reconciles_due[self.account.pk] = now + RECONCILE_DELAY_SECONDS
        if not enqueue(reconcile_after_reconnect_task, self.account.pk, countdown=RECONCILE_DELAY_SECONDS):
            with _reconciles_lock:  # not queued: the next socket to connect queues one
                _reconciles_due.pop(self.account.pk, None)
        yield from ()

    def parse_frame(self, text: str, spec: ListenerSpec) -> list[CallUpdate]:
        return parse_mycrm_frame(text, self.account.pk, spec.terminal_pbx_id)

    def close_stream(self, spec: ListenerSpec, stream: EventStream | None, *, keep_listener: bool = False) -> None:
        self.session.close_listener(spec.name, stream, keep_listener=keep_listener)

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
