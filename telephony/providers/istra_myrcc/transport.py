"""Centile Istra myRCC: an enterprise's extensions, their call lines, and call control.

One session per enterprise, logged in as ``<login>|<enterprise>``. One listener
per account (``CallLines``) receives a full snapshot of every call line that
changes; binding it (``GET v1/rcc/CallLine?listenerName=CallLines``) answers
with the lines that exist now, which the stream hands the supervisor as
``initial_frames`` so a reconnect catches up on calls it missed. A call ctihub
still thinks alive but missing from that list ended while the socket was down:
its last snapshot is pulled (``GET v1/rcc/CallLine/<lineId>``) so it ends as it
really did, or, if the PBX has forgotten the line (400 "bad call line ID"), it is
ended now. A line that cannot be pulled (a 404, a 5xx, no answer) does not fail
the connect: the call is left as it is, the line is logged with the account and
pulled again later by ``tasks.pull_lines_task`` (then by the next reconnect).

While the socket is up, the supervisor's session checks send ``GET v1/rcc/Extension?offset=0&length=1``
on its session: the doc says the session "is expired after a (configurable) delay of inactivity", and
websocket pings are not activity; a 401 there is a session expired under a socket left open.

Call control is ``POST v1/rcc/CallLine/<lineId>/<action>``, only for actions the
line's last snapshot allowed.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from urllib.parse import quote

from django.utils.functional import lazy
from django.utils.translation import gettext, gettext_lazy, ngettext

from telephony import updates as u
from telephony.providers.base import (
    ActionRefused,
    EventStream,
    ListenerSpec,
    Provider,
    ProviderError,
    SessionExpired,
    TerminalInfo,
)
from telephony.providers.istra.framing import frame_items
from telephony.providers.istra.session import IstraSession, rcc_username
from telephony.providers.istra_myrcc.frames import (
    ACTION_NAMES,
    EXTENSION_URI_PREFIX,
    LINE_URI_PREFIX,
    LineStates,
    extension_id_from_uri,
    line_id_of,
    parse_myrcc_frame,
)
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

APP = "myRCC"
LISTENER_NAME = "CallLines"
PAGE_LENGTH = 100
MAX_PAGES = 1000  # a `next` link that never ends must not loop forever
#: The session check (``EventStream.session_check``): one extension of the directory, a cheap authenticated GET.
SESSION_CHECK_PATH = "v1/rcc/Extension"
SESSION_CHECK_PARAMS = {"offset": 0, "length": 1}

RCC_ACTIONS = {normalised: rcc for rcc, normalised in ACTION_NAMES.items()}


class MyRccProvider(Provider):
    kind = "istra_myrcc"
    actions = tuple(RCC_ACTIONS)
    holds_sockets = True

    def prepare_shared(self) -> None:
        self.session  # the one IstraSession every thread of the cached provider shares

    @cached_property
    def session(self) -> IstraSession:
        return IstraSession(
            self.account, APP, rcc_username(self.account.login, self.account.enterprise), http=self.http
        )

    @cached_property
    def line_states(self) -> LineStates:
        """What each line was last given on this connection: a snapshot in an unknown state keeps it."""
        return LineStates()

    # --- REST -------------------------------------------------------------------------
    def test_connection(self) -> str:
        count = len(self.fetch_terminals())
        return ngettext("%(count)s extension in %(enterprise)s", "%(count)s extensions in %(enterprise)s", count) % {
            "count": count, "enterprise": self.account.enterprise}

    def fetch_terminals(self) -> list[TerminalInfo]:
        """The enterprise's whole extension directory, following ``next`` page after page."""
        terminals: list[TerminalInfo] = []
        path, params = "v1/rcc/Extension", {"offset": 0, "length": PAGE_LENGTH}
        seen_pages = set()
        while path and path not in seen_pages and len(seen_pages) < MAX_PAGES:
            seen_pages.add(path)
            page = self.session.request_json("GET", path, params=params)
            items = _page_items(page)
            terminals.extend(_extension(item) for item in items)
            # `next` carries its own offset and length.
            path, params = (page.get("next") if items else None), None
        return terminals

    def place_call(self, terminal_pbx_id: str, destination: str) -> dict:
        """Dial from the extension; the answer is the new call line (state ``prompting``)."""
        answer = self.session.request_json(
            "POST", f"{EXTENSION_URI_PREFIX}{quote(terminal_pbx_id, safe='')}/placeCall",
            body={"destination": destination},
        )
        return answer if isinstance(answer, dict) else {}

    def call_action(self, call, action: str, payload: dict) -> dict:
        if action not in (call.allowed_actions or ()) or action not in RCC_ACTIONS:
            allowed = ", ".join(call.allowed_actions or ())
            raise ActionRefused(_not_possible(action, allowed) if allowed else _nothing_possible(action))
        answer = self.session.request_json(
            "POST", f"{LINE_URI_PREFIX}{quote(call.pbx_call_id, safe='')}/{RCC_ACTIONS[action]}",
            body=_action_body(action, payload),
        )
        return answer if isinstance(answer, dict) else {}

    # --- Sockets ------------------------------------------------------------------------
    def listener_specs(self, terminal_pbx_ids: list[str]) -> list[ListenerSpec]:
        return [ListenerSpec(name=LISTENER_NAME)]

    def open_stream(self, spec: ListenerSpec) -> EventStream:
        stream, current_lines = self.session.open_listener(
            spec.name, {"name": spec.name}, "v1/rcc/CallLine", {"listenerName": spec.name}
        )
        # Lazy: the supervisor reads these with its database slot held, after the listed lines are applied.
        stream.initial_frames = self._catch_up(current_lines.text if current_lines.content.strip() else None)
        stream.session_check = lambda: self.session.check_alive(SESSION_CHECK_PATH, SESSION_CHECK_PARAMS)
        return stream

    def _catch_up(self, current_lines: str | None):
        """The lines alive now, then the last word on every call we think alive that is not among them."""
        live = _calls_thought_live(self.account.pk)
        self.line_states.remember_all(live)
        self.line_states.extension_numbers = extension_numbers(self.account.pk)
        if current_lines is None:
            return
        yield current_lines
        try:
            listed = {_line_id_or_none(item) for item in frame_items(current_lines)}
        except FrameRejected:
            return  # the supervisor rejects (and logs) the list itself; without it nothing is known to be gone
        gone, unpulled = self.pull_lines(sorted(set(live) - listed), relogin=False)
        if unpulled:
            from telephony.providers.istra_myrcc.tasks import schedule_pull

            schedule_pull(self.account.pk, unpulled)
        if gone:
            yield json.dumps({"count": len(gone), "results": gone})

    def pull_lines(self, line_ids: list[str], *, relogin: bool = True) -> tuple[list[dict], list[str]]:
        """The last snapshot of each line (a forgotten line reads as dropped now), and the lines not pulled.

        One try per line and no retry on a timeout: a listener waits for this. Once the PBX did not
        answer at all, the lines after it are not tried either (each would wait as long): they wait
        for the retry. A refused session or login still raises: a listener's connect starts over.
        """
        snapshots: list[dict] = []
        unpulled: list[str] = []
        unreachable = False
        for line_id in line_ids:
            if unreachable:
                unpulled.append(line_id)
                continue
            try:
                snapshots.append(self._last_snapshot(line_id, relogin))
            except ProviderError as exc:
                if exc.status == 401 or isinstance(exc, SessionExpired):  # the session or login, not this line
                    raise
                logger.warning("myRCC call line %s cannot be pulled now (%s); its call stays as it is until a retry",
                               line_id, exc, extra={"account_id": self.account.pk})
                unpulled.append(line_id)
                unreachable = exc.status is None
        return snapshots, unpulled

    def _last_snapshot(self, line_id: str, relogin: bool) -> dict:
        path = f"{LINE_URI_PREFIX}{quote(line_id, safe='')}"
        try:
            line = self.session.request_json("GET", path, relogin=relogin, retry_on_timeout=False)
        except ProviderError as exc:
            if exc.status not in (400, 404):  # 503, 500, a timeout...: the PBX could not say, ask again later
                raise
            # "bad call line ID", or not found: the PBX forgot the line, so it ended while we were away; when is
            # unknown. A 404 too: the spec has no GET of one line (a PBX without it answers 404 to every one),
            # and the PBX's full list of a moment ago did not have this line. Retried, the call stayed live for
            # the retries' 40 minutes, then until the next reconnect or the stale-call sweep (hours).
            return {"lineId": line_id, "restUri": f"{LINE_URI_PREFIX}{line_id}", "state": "dropped",
                    "stateCause": "causeNormal"}
        if isinstance(line, dict) and _pulled_line_id(line) == line_id:
            return line  # dropped, or alive after all (another owner stored it after our list)
        raise ProviderError(f"Istra myRCC answered GET {path} with something that is not that call line",
                            status=200)

    def parse_frame(self, text: str, spec: ListenerSpec) -> list[CallUpdate]:
        return parse_myrcc_frame(text, self.account.pk, self.line_states)

    def close_stream(self, spec: ListenerSpec, stream: EventStream | None, *, keep_listener: bool = False) -> None:
        self.session.close_listener(spec.name, stream, keep_listener=keep_listener)

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()


def pull_lines_into_calls(account, line_ids: list[str]) -> tuple[int, list[str]]:
    """Pull the lines whose calls are still live in ctihub and apply them: (calls changed, lines not pulled).

    For the retry task, on its own session (not a listener's). A line whose call ended meanwhile
    (a snapshot came, or a reconnect settled it) is not asked for again.
    """
    from telephony.domain import apply_call_updates

    live = _calls_thought_live(account.pk)
    wanted = [line_id for line_id in line_ids if line_id in live]
    if not wanted:
        return 0, []
    provider = MyRccProvider(account)
    try:
        provider.line_states.remember_all(live)
        provider.line_states.extension_numbers = extension_numbers(account.pk)
        snapshots, unpulled = provider.pull_lines(wanted)
    finally:
        provider.close()
    updates = parse_myrcc_frame(json.dumps({"results": snapshots}), account.pk, provider.line_states)
    applied = apply_call_updates(updates)
    return sum(1 for result in applied if result.changed), unpulled


def _line_id_or_none(item: dict) -> str | None:
    try:
        return line_id_of(item)
    except FrameRejected:
        return None


def _pulled_line_id(item: dict) -> str | None:
    # A pulled line is read with plain JSON (an id sent as a number is an int; Python keeps it exact).
    value = item.get("lineId")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _line_id_or_none(item)


def extension_numbers(account_id: int) -> frozenset[str]:
    """The short numbers of the account's extensions, as the directory was last synced."""
    from telephony.models import Terminal

    return frozenset(Terminal.objects.filter(account_id=account_id).exclude(extension="")
                     .values_list("extension", flat=True))


def _calls_thought_live(account_id: int) -> dict[str, str]:
    """Line id -> state of the account's calls that ctihub holds live."""
    from telephony.models import Call

    live = Call.objects.filter(account_id=account_id).exclude(state=Call.State.ENDED)
    # A "#<pk>" suffix marks an old call whose id the PBX has since recycled: not a line id any more.
    return {pbx_id: state for pbx_id, state in live.values_list("pbx_call_id", "state") if "#" not in pbx_id}


def _page_items(page) -> list[dict]:
    items = page.get("items", page.get("results")) if isinstance(page, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProviderError("Istra myRCC answered the extension list with something that is not a page of extensions")
    return items


def _extension(item: dict) -> TerminalInfo:
    try:
        extension_id = extension_id_from_uri(str(item.get("restUri") or ""))
    except FrameRejected as exc:
        raise ProviderError(f"Istra myRCC listed an extension without a usable restUri: {exc}") from None
    return TerminalInfo(
        pbx_id=extension_id,
        extension=str(item.get("addressNumber") or ""),
        label=str(item.get("displayName") or ""),
        # The doc's own example spells it both ways.
        department=str(item.get("department") or item.get("Department") or ""),
        photo_url=str(item.get("urlPhoto") or ""),
        pstn_numbers=tuple(str(n) for n in item.get("pstnNumbers") or ()),
    )


# What the agent reads on the card, in the console's language when shown (telephony.consumers), not when raised.
_not_possible = lazy(lambda action, allowed: gettext("%(action)s is not possible on this call now (the PBX allows: "
                                                     "%(allowed)s)") % {"action": action, "allowed": allowed}, str)
_nothing_possible = lazy(lambda action: gettext("%(action)s is not possible on this call now (the PBX allows "
                                                "nothing)") % {"action": action}, str)
_needs_other_call = lazy(lambda action: gettext("%(action)s needs the other call") % {"action": action}, str)
_needs_destination = lazy(lambda action: gettext("%(action)s needs a destination number") % {"action": action}, str)


def _action_body(action: str, payload: dict) -> dict | None:
    """The JSON the doc's action table asks for, from what the console sends."""
    if action in (u.MERGE, u.TRANSFER):
        other_call = payload.get("other_call")
        if other_call is None:
            raise ActionRefused(_needs_other_call(action))
        return {"line": f"{LINE_URI_PREFIX}{other_call.pbx_call_id}"}
    if action in (u.REDIRECT, u.ADD_PARTY):
        destination = str(payload.get("destination") or "").strip()
        if not destination:
            raise ActionRefused(_needs_destination(action))
        return {"destination": destination}
    if action == u.SEND_DTMF:
        digits = str(payload.get("digits") or "").strip()
        if not digits:
            raise ActionRefused(gettext_lazy("send_dtmf needs digits"))
        return {"dtmfs": digits}
    return None
