"""The console websocket: live call cards in, call control out.

On connect the page gets a snapshot of the viewer's calls, then live card
updates. The viewer joins its groups before the snapshot is read, so nothing
that happens in between is missed; cards carry a version, so the page drops
an update older than what it shows. Every incoming message is checked against
who the viewer is: an agent only ever sees and drives their own calls; and
against the session the console was opened with: it closes (4401) once that
session is over (telephony/console_sessions.py). Whatever the page sends, a
malformed request gets an error reply and the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from datetime import datetime, timedelta

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.utils import timezone, translation
from django.utils.functional import lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.utils.translation.trans_real import parse_accept_lang_header

from ctihub.lib import card_trace
from ctihub.lib.console_heap import console_heap
from ctihub.lib.ws_db import Batched, on_web_pool, setup_slots
from telephony import console
from telephony.console_sessions import session_user_id, user_group
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)

# Text when sent, in the page's language (``_reply_error``), not when raised.
_pbx_said = lazy(lambda error: gettext("PBX: %(error)s") % {"error": error}, str)
_unknown_request = lazy(lambda action: gettext("unknown request %(action)s") % {"action": action}, str)

CLOSE_LOGIN_REQUIRED = 4401
CLOSE_NO_ROLE = 4400
# "Try again later": the page reconnects with backoff (console.js retries every code it does not explain).
# Not RFC 6455's 1013: daphne (autobahn) refuses to send any code but 1000 and 3000-4999, raised in the
# consumer, and the browser saw 1011 (an internal error) instead.
CLOSE_TRY_AGAIN = 4013
SNAPSHOT_TIMEOUT_SECONDS = 10
# The page's requests are a few hundred bytes; anything much larger is not one of them.
MAX_REQUEST_CHARS = 16_384
JOIN_TIMEOUT_SECONDS = 2
# Resync: a card is normally on the page within milliseconds of its commit; one this late was lost.
IN_FLIGHT_GRACE = timedelta(seconds=3)
COMMIT_MARGIN = timedelta(seconds=1)
# The page's keep-alive (console.js): it sends exactly PING every few seconds once it has its snapshot and
# reconnects when PONG does not come back in time. A hung web process (stopped, its loop stuck) keeps its
# sockets open, and only an answer proves it still serves them. Compared as text and answered here, before
# any JSON decoding or session check: thousands of consoles ping, and a pong must cost no database query.
PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'


async def finished_within(task: asyncio.Future, seconds: float) -> bool:
    """Whether ``task`` finished (its exception raised here) in time; if not it is cancelled, not awaited.

    Not ``asyncio.wait_for``: it waits for the cancelled task to end, and a redis-py read stuck on a
    connection that Redis restarted under it ignored its cancel for twenty seconds (seen in a soak).
    """
    done, _pending = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
        return False
    task.result()
    return True


def language_of(scope) -> str:
    """The language of the agent's page, for the refusals this socket sends it: the chooser's cookie, else
    the browser's Accept-Language, else the default (as LocaleMiddleware picks a page's, without a path)."""
    wanted = []
    cookie = (scope.get("cookies") or {}).get(settings.LANGUAGE_COOKIE_NAME)
    if cookie:
        wanted.append(cookie)
    for name, value in scope.get("headers") or ():
        if name == b"accept-language":
            wanted += [code for code, _q in parse_accept_lang_header(value.decode("latin-1")) if code != "*"]
    for code in wanted:
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


_resyncs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its Resyncs


def resyncs() -> Resyncs:
    loop = asyncio.get_running_loop()
    found = _resyncs.get(loop)
    if found is None:
        found = _resyncs[loop] = Resyncs()
    return found


class Resyncs:
    """Every CONSOLE_RESYNC_SECONDS, the cards a lost publish kept from the consoles of this process.

    One database look for all of them, each console then taking what it may see and does not have. It
    was one query per console and period: at 1,000 consoles 67 queries a second, and daphne's CPU per card
    delivered twice a bare forwarding consumer's (issue 16). Changes younger than IN_FLIGHT_GRACE are left
    to their publish (still on its way, most likely) and looked at next time.

    The look reads each changed call's id, version and agent only (``console.versions_changed``); cards are
    built only for the calls some console lacks (``console.cards_for``), none when no publish was lost.
    Building every changed call's card (``cards_changed``: the ORM rows, the account's secrets decrypted,
    retailCRM's fields) cost a web pool thread 70-100 ms of CPU a period at 200 events/s, taken from daphne's
    event loop by the GIL: the cards in flight meanwhile were late by as much (issue 16, third pass). And
    the consoles are gone through ``RESYNC_CONSOLES_AT_ONCE`` at a time, the event loop serving cards in
    between: all 1,000 in one go held it for 20-60 ms.
    """

    def __init__(self):
        self.consoles: set[ConsoleConsumer] = set()
        self.task: asyncio.Task | None = None

    def add(self, consumer: ConsoleConsumer) -> None:
        self.consoles.add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._forever())
            card_trace.watch_loop_lag()  # only with CARD_TRACE (the pop-up benchmark)

    def discard(self, consumer: ConsoleConsumer) -> None:
        self.consoles.discard(consumer)

    async def _forever(self) -> None:
        period = settings.CONSOLE_RESYNC_SECONDS
        while self.consoles:
            await asyncio.sleep(period)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("console resync failed; trying again in %ss", period, exc_info=True)

    async def once(self) -> None:
        consoles = list(self.consoles)
        if not consoles:
            return
        held = _LoopTime()
        until = timezone.now() - IN_FLIGHT_GRACE
        windows = []
        for n, consumer in enumerate(consoles):
            windows.append(consumer._resync_window(until))
            if n % RESYNC_CONSOLES_AT_ONCE == RESYNC_CONSOLES_AT_ONCE - 1:
                await held.yield_()
        since = min(window[0] for window in windows)
        live = set().union(*(window[2] for window in windows))
        await held.pause()
        changed = await on_web_pool(console.versions_changed)(live, since, until)
        held.resume()
        # An agent's console looks only at its agent's calls (all it may see): each console going through
        # every changed call cost consoles x calls a period, 1.5 million at 1,000 consoles and 300 events/s.
        by_agent: dict[object, list] = {}
        for item in changed:
            by_agent.setdefault(item[0].get("agent"), []).append(item)
        lacking: list[tuple[ConsoleConsumer, list[int]]] = []
        for n, (consumer, (own_since, versions, own_live)) in enumerate(zip(consoles, windows)):
            viewer = consumer.viewer
            if viewer.is_supervisor:
                mine = changed
            else:
                mine = by_agent.get(viewer.agent.pk, []) if viewer.agent is not None else []
            # What it has now, not only before the look: a publish may have come in the meantime.
            has = {**versions, **{call_id: shown[0] for call_id, shown in consumer.shown.items()}}
            ids = [call["id"] for call in console.newer_than_shown(viewer, mine, has, own_live, own_since)]
            if ids:
                lacking.append((consumer, ids))
            if n % RESYNC_CONSOLES_AT_ONCE == RESYNC_CONSOLES_AT_ONCE - 1:
                await held.yield_()
        if lacking:
            await held.pause()
            cards = await on_web_pool(console.cards_for)({i for _consumer, ids in lacking for i in ids}, until)
            held.resume()
            for consumer, ids in lacking:
                for call_id in ids:
                    card = cards.get(call_id)
                    shown = consumer.shown.get(call_id)
                    if card is None or (shown is not None and shown[0] >= card["version"]):
                        continue  # gone, or its publish came while the cards were read
                    logger.info("console of %s: call %s card v%s was never received; sent now",
                                consumer.viewer.user.pk, card["id"], card["version"])
                    try:
                        await consumer._send_card(card)
                    except Exception:  # a console closing meanwhile: the others still get theirs
                        logger.debug("resync card not sent to a closing console", exc_info=True)
        held.done()


# Consoles a resync goes through between two turns of the event loop: ~2-3 ms of it at a time.
RESYNC_CONSOLES_AT_ONCE = 100


class _LoopTime:
    """How long a resync held daphne's event loop in each stretch, for the benchmark's breakdown
    (``ctihub.lib.card_trace.note_pause``: only with CARD_TRACE)."""

    def __init__(self):
        self.resume()

    async def yield_(self) -> None:
        await self.pause()
        self.resume()

    async def pause(self) -> None:
        self.done()
        await asyncio.sleep(0)

    def resume(self) -> None:
        self.started_wall, self.started, self.started_cpu = time.time(), time.perf_counter(), time.thread_time()

    def done(self) -> None:
        card_trace.note_pause("resync", self.started_wall, time.perf_counter() - self.started,
                              time.thread_time() - self.started_cpu)


# Consoles that connect together (a deploy, a network blip: all of them) read their viewers and their
# snapshots together, at most this many to a read (``ctihub.lib.ws_db.Batched``). Looked up at each call,
# not bound here, so a test's stand-in counts.
SETUP_BATCH_MOST = 100
_viewers = Batched(lambda users: console.viewers_for(users), SETUP_BATCH_MOST)
_snapshots = Batched(lambda viewers: console.snapshots(viewers), SETUP_BATCH_MOST)


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_LOGIN_REQUIRED)
            return
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.shown: dict[int, tuple[int, bool, datetime]] = {}  # call id -> (version, live, when) as the page has it
        # The page gives up on a snapshot SNAPSHOT_TIMEOUT_SECONDS after it opened: so does this, its
        # turn in the queue included.
        snapshot = asyncio.ensure_future(self._set_up(user))
        try:
            sent = await finished_within(snapshot, SNAPSHOT_TIMEOUT_SECONDS)
        except TimeoutError:
            sent = False
        if sent and snapshot.result() is None:
            await self.close(code=CLOSE_NO_ROLE)
            return
        if not sent:
            # A console left open without its snapshot would show nothing and never know: close it
            # so the page reconnects (seen after Redis restarts, group_add never answering).
            logger.warning("console snapshot not sent within %ss; closing", SNAPSHOT_TIMEOUT_SECONDS)
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        resyncs().add(self)
        self._heap = console_heap()  # the same one at its close, whatever the settings are then
        self._heap.set_up()

    async def _set_up(self, user) -> bool | None:
        """Who the viewer is, its groups joined (in its turn), its snapshot sent. None: no role, refused."""
        self.viewer = await _viewers(user)
        if not self.viewer.has_role:
            return None
        self.session_over = False  # from here on its requests are answered (a refused console's are not)
        # Its user's group too: a logout, a deactivation or a password change closes this console at once.
        self.groups_joined = [*self.viewer.groups(), user_group(user.pk)]
        await self._join_and_send_snapshot()
        return True

    async def _join_and_send_snapshot(self):
        async with setup_slots():
            joins = asyncio.ensure_future(self._join_groups())
            try:
                joined = await finished_within(joins, JOIN_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                joins.cancel()
                raise
        if not joined:
            # One Redis round trip each, normally: a join this slow is a dead connection, and the page
            # gets its snapshot sooner on a new socket (a new connection) than by waiting here.
            raise TimeoutError(f"group_add took over {JOIN_TIMEOUT_SECONDS}s")
        # What changed before this is in the snapshot: its read starts after this moment (its batch's
        # read starts once every console in it has joined).
        self.checked_until = timezone.now()
        snapshot = await _snapshots(self.viewer)
        self._note_shown(snapshot["calls"])
        await self.send_json(snapshot)

    async def _join_groups(self):
        # Side by side: one round trip's wait for all of them, not one per group.
        await asyncio.gather(*(self.channel_layer.group_add(group, self.channel_name) for group in self.groups_joined))

    async def disconnect(self, code):
        resyncs().discard(self)
        heap = getattr(self, "_heap", None)
        if heap is not None:
            self._heap = None
            heap.closed()
        groups = getattr(self, "groups_joined", [])
        if groups:
            # In turn too: every console of a stopping daphne or a dropped network leaves at once, and one
            # Redis connection opened per discard kept daphne past its application close timeout.
            async with setup_slots():
                await asyncio.gather(*(self.channel_layer.group_discard(group, self.channel_name)
                                       for group in groups))

    def _note_shown(self, cards: list[dict]) -> None:
        now = timezone.now()
        for card in cards:
            version = self.shown.get(card["id"], (0, False, now))[0]
            if card["version"] >= version:
                self.shown[card["id"]] = (card["version"], card["state"] != "ended", now)

    def _resync_window(self, until: datetime) -> tuple[datetime, dict[int, int], set[int]]:
        """What this console's next resync looks at: changes since where its last look stopped, the
        versions it has and the calls it shows live (see ``Resyncs``)."""
        # `updated_at` is stamped a moment before its commit, hence the margin behind the last look.
        since = self.checked_until - COMMIT_MARGIN
        self.checked_until = max(self.checked_until, until)
        # An ended call shown before `since` only comes back if it changes again: forget it.
        self.shown = {call_id: shown for call_id, shown in self.shown.items() if shown[1] or shown[2] >= since}
        live = {call_id for call_id, (_version, is_live, _when) in self.shown.items() if is_live}
        versions = {call_id: version for call_id, (version, _live, _when) in self.shown.items()}
        return since, versions, live

    async def _send_card(self, card: dict, trace: dict | None = None) -> None:
        self._note_shown([card])
        if trace is None:
            await self.send_json({"type": "card", "card": card})
        else:  # CARD_TRACE (the benchmark): when it passed each stage, and now
            await self.send_json({"type": "card", "card": card, "trace": {**trace, "sent": time.time()}})

    async def dispatch(self, message):
        """channels' own, without its ``aclose_old_connections()`` before every message: a hop to asgiref's
        one sync thread and back for each card and each connect, to close connections that thread never
        opens for a console (all its database calls run on the web pool, which closes its own:
        ``ctihub.lib.ws_db``)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- from the layer ---------------------------------------------------------------
    async def call_card(self, event):
        card = event["card"]
        if not self.viewer.may_see(card):  # defence in depth: groups already scope this
            return
        shown = self.shown.get(card["id"])
        if shown is not None and shown[0] >= card["version"]:
            # The page has this version already: the snapshot had it (a change between the join and the
            # read), or a resync sent it while its publish was still on its way (a worker more than
            # IN_FLIGHT_GRACE behind). Sent again it was a duplicate card (issue 16: 121 in one run).
            return
        await self._send_card(card, event.get("trace"))

    async def agent_status(self, event):
        await self.send_json({"type": "agent_status", "agent": event["agent"], "status": event["status"]})

    async def console_push(self, event):
        """Anything else a feature pushes to a console (counters, voicemail...)."""
        await self.send_json(event["payload"])

    async def console_session_check(self, event):
        """Its user logged out (``ended_session``: that session), was deactivated or changed password."""
        if getattr(self, "session_over", True):
            return
        ended = event.get("ended_session")
        if (ended and ended == self.session_key) or not await self._session_valid():
            await self._end_session()

    # --- the session it was opened with -------------------------------------------------
    async def _session_valid(self) -> bool:
        return await on_web_pool(session_user_id)(self.session_key) == self.user_id

    async def _end_session(self) -> None:
        self.session_over = True
        await self.close(code=CLOSE_LOGIN_REQUIRED)

    # --- from the page --------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """JSON text only; anything else is answered with an error, not a crash of the socket (1011)."""
        if getattr(self, "session_over", True):
            return
        if text_data == PING:
            await self.send(text_data=PONG)
            return
        if text_data is None:
            await self._reply_error(None, _("send requests as JSON text, not binary frames"))
            return
        if len(text_data) > MAX_REQUEST_CHARS:
            await self._reply_error(None, _("request too large"))
            return
        try:
            content = await self.decode_json(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            await self._reply_error(None, _("not a JSON request"))
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs):
        if getattr(self, "session_over", True):
            return  # refused or closing: nothing to answer
        request_id = content.get("id") if isinstance(content, dict) else None
        if not _is_scalar(request_id):
            request_id = None  # echoed back as it came: only a plain value
        try:
            if not await self._session_valid():
                await self._end_session()
                return
            result = await self._dispatch(content if isinstance(content, dict) else {})
        except console.Refused as exc:
            await self._reply_error(request_id, exc)  # made text in the page's language
        except ProviderError as exc:
            await self._reply_error(request_id, _pbx_said(exc))
        except Exception:
            # A bug, not the page's fault: logged with its traceback, but the console stays open.
            action = content.get("action") if isinstance(content, dict) else None
            logger.exception("console request %r of user %s failed", action, self.user_id)
            await self._reply_error(request_id, _("ctihub could not do that (an internal error, logged)"))
        else:
            await self.send_json({"type": "result", "id": request_id, "ok": True, "result": _jsonable(result)})

    async def _reply_error(self, request_id, error) -> None:
        """``error``: text, a lazy translation or a ``Refused``, made text here in the page's language."""
        with translation.override(language_of(self.scope)):
            error = str(error)
        await self.send_json({"type": "result", "id": request_id, "ok": False, "error": error})

    async def _dispatch(self, content: dict):
        action = content.get("action")
        if action == "call_action":
            call_id = console.call_id_from(content.get("call"))
            if call_id is None:
                raise console.Refused(_("which call?"))
            payload = content.get("payload")
            payload = {} if payload is None else payload
            if not isinstance(payload, dict):
                raise console.Refused(_("the payload must be an object"))
            return await on_web_pool(console.act_on_call)(
                self.viewer, call_id, _text(content.get("name")), payload
            )
        if action == "dial":
            return await on_web_pool(console.dial)(self.viewer, _text(content.get("number")))
        if action == "set_status":
            return await on_web_pool(console.change_status)(self.viewer, _text(content.get("status")))
        if action == "snapshot":
            return await on_web_pool(console.snapshot)(self.viewer)
        if not _is_scalar(action):
            raise console.Refused(_("unknown request"))
        raise console.Refused(_unknown_request(repr(action)[:180]))


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _text(value) -> str:
    """A text field of a request: a string, or a number written out; anything else is empty."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
