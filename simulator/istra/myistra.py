"""Istra **myIstra** (End User REST API): voicemail, call history, user info, caller-ID, counters.

Routes under ``/restletrouter`` (X-Application ``myIstra``; Basic user
``ENDUSER:<login>``, the same users as myCrm):

* ``GET v1/user/Info`` -> ``{userName, istraVersion, istraBuildID, ent: {fullName},
  terminals: [{abstractTerminalID, label}], user: {customCallerIDChoice, customCallerID, restUri}}``
* ``POST v1/user/Terminal/:id/placeCall {"destination"}`` -> 200; the call starts on the
  shared call book, so myCrm and myRCC sockets see it like any other click-to-call.
* ``GET|PUT v1/user/IUser/:id?rt=customCallerIDChoice,customCallerID``
* ``GET v1/logs/Voicemail/bean?offset=&length=`` -> ``{count, items}``;
  ``GET|PUT|DELETE v1/logs/Voicemail/bean/:id``; ``GET v1/logs/Voicemail/bean/:id.(ogg|aac|mp4|au)[?dl=true]``
* ``GET v1/logs/Phone/bean?offset=&length=&isIncoming=&isMissed=``; ``GET|DELETE v1/logs/Phone/bean/:id``
* ``GET v1/logs/Notifications/bean[?listenerName=]`` -> the counters; with a listener,
  every later change of the counters is pushed on the session's websocket as
  ``{"listenerName": .., "item": {<counters>}}``.

Session rules are the shared ones (``sessions.py``): the CSRF token of the Login
answer is required on every later request (403 ROUTER_ERR_400 without it), it
rotates when asked, sessions expire after ``session_timeout`` (30 min by default)
and answers are gzipped for clients that accept it.

Where the document is silent or damaged, the simulator chooses:

* ``count`` is the number of items in the page returned (the doc's words), not a total.
* Lists are sorted newest first.
* A call-history entry has ``remoteNumber`` and ``callbackNumber`` (the doc's table lost
  those rows; their descriptions survive under other keys) and ``timestamp`` is UNIX
  seconds as a string, like the voicemail's.
* ``unreadMissedCalls`` counts incoming missed calls not yet seen; nothing in the API
  marks them seen (``DELETE`` of the entry does, and so does the control API).
* A dropped call line of a user's terminal becomes a call-history entry of that user.
* Audio: ``.ogg`` is a real, playable Ogg *Opus* stream of silence (no Vorbis encoder
  here; browsers play both), ``.au`` is real µ-law AU silence, ``.aac``/``.mp4`` is an
  MP4 container header only (not playable). Content-Types are the doc's:
  ``application/ogg``, ``application/mp4``, ``application/au``.
* Errors are the router shape: unknown voicemail/history/terminal -> 404 ``ERR_404``,
  bad input -> 400 ``ERR_0``, a caller-ID refused by policy -> 400 ``ERR_CLI``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulator.control_api import json_errors, only, read_body
from simulator.istra import errors
from simulator.istra.calls import DROPPED, Transition
from simulator.istra.sessions import Session, SessionStore, authenticated, bean_of, split_enduser, world_of

if TYPE_CHECKING:
    from simulator.istra.world import IstraWorld

APP = "myIstra"
DEFAULT_PAGE_LENGTH = 20
VOICEMAIL_PILOT = "555"  # the doc's playNumber example dials 555
COUNTERS_MODEL = "v1/data/RestletApiSessionCounters"

AUDIO_TYPES = {"ogg": "application/ogg", "aac": "application/mp4", "mp4": "application/mp4", "au": "application/au"}


def _long_id() -> str:
    return str(random.randint(10**18, 2**63 - 1))  # 64-bit ids travel as strings


@dataclass
class Voicemail:
    id: str
    msgid: str
    timestamp: int
    duration: int
    remote_number: str
    remote_label: str = ""
    internal: bool = False
    priority: str = "normal"
    read: bool = False
    callback_number: str = ""
    lra: str = ""
    # Fields this voicemail's item carries instead of ours (a test's: a value the doc does not show).
    odd_fields: dict[str, Any] = field(default_factory=dict)

    def item(self) -> dict[str, Any]:
        return {**self._item(), **self.odd_fields}

    def _item(self) -> dict[str, Any]:
        return {
            "msgid": self.msgid,
            # "the filename name can change according to its status read/unread"
            "filename": f"/var/istra/vm/{self.lra}/{'Old' if self.read else 'INBOX'}/msg_{self.msgid}.wav",
            "id": self.id,
            "restUri": f"v1/logs/Voicemail/bean/{self.id}",
            "playNumber": f"{VOICEMAIL_PILOT};lra={self.lra};cd msgid={self.msgid}",
            "timestamp": str(self.timestamp),
            "durationSecond": self.duration,
            "remoteNumber": self.remote_number,
            "restUriContact": "v1/user/Contact/" + self.remote_number if self.internal else "",
            "remoteLabel": self.remote_label,
            "type": "internal" if self.internal else "external",
            "priority": self.priority,
            "read": self.read,
            "callbackNumber": self.callback_number or self.remote_number,
        }


@dataclass
class HistoryEntry:
    id: str
    timestamp: int
    incoming: bool
    missed: bool
    remote_number: str
    remote_label: str = ""
    remote_type: str = "EXTERNAL_NUMBER"
    ring_seconds: int = 0
    talk_seconds: int = 0
    user_number: str = ""
    enterprise: str = ""
    seen: bool = False

    def item(self) -> dict[str, Any]:
        return {
            "restUri": f"v1/logs/Phone/bean/{self.id}",
            "callHistoryId": self.id,
            "isIncoming": self.incoming,
            "isMissed": self.missed,
            "isRejected": False,  # "Not implemented"
            "isWritten": False,  # "Not implemented"
            "remoteNumber": self.remote_number,
            "callbackNumber": self.remote_number,
            "remoteLabel": self.remote_label or self.remote_number,
            "remoteType": self.remote_type,
            "ringDurationSecond": self.ring_seconds,
            "talkDurationSecond": self.talk_seconds,
            "timestamp": str(self.timestamp),
            "userEntName": self.enterprise,
            "userNumber": self.user_number,
        }


@dataclass
class EndUser:
    """What myIstra keeps for one login."""

    login: str
    user_id: str = field(default_factory=_long_id)
    caller_id_choice: str = "FromPresenceState"
    custom_caller_id: str = ""
    voicemails: list[Voicemail] = field(default_factory=list)  # newest first
    history: list[HistoryEntry] = field(default_factory=list)  # newest first
    unread_text_messages: int = 0
    # E.164 numbers the platform's custom caller-ID policy accepts; empty: any E.164.
    allowed_caller_ids: list[str] = field(default_factory=list)

    def counters(self) -> dict[str, Any]:
        return {
            "model": COUNTERS_MODEL,
            "unreadMissedCalls": sum(1 for h in self.history if h.incoming and h.missed and not h.seen),
            "unreadTextMessages": self.unread_text_messages,
            "unreadVoiceMails": sum(1 for v in self.voicemails if not v.read),
        }


class EndUserBook:
    """myIstra's state, and the pushes of its counters to subscribed listeners."""

    def __init__(self, sessions: SessionStore):
        self.sessions = sessions
        self.users: dict[str, EndUser] = {}
        self.subscriptions: dict[str, set[str]] = {}  # session id -> listener names bound to Notifications
        self._msg_seq = itertools.count(1)

    def clear(self) -> None:
        self.users.clear()
        self.subscriptions.clear()

    def user(self, login: str) -> EndUser:
        if login not in self.users:
            self.users[login] = EndUser(login)
        return self.users[login]

    # --- changes (each pushes the new counters) ---------------------------------------

    def leave_voicemail(self, login: str, remote_number: str, *, remote_label: str = "", duration: int = 5,
                        internal: bool = False, priority: str = "normal", timestamp: int | None = None,
                        lra: str = "", odd_fields: dict[str, Any] | None = None) -> Voicemail:
        if duration < 1 or duration > 600:
            raise ValueError("durationSecond must be between 1 and 600")
        stamp = int(timestamp if timestamp is not None else time.time())
        when = datetime.fromtimestamp(stamp, tz=UTC)
        msgid = f"{when:%Y%m%d%H%M%S}{next(self._msg_seq):03d}-313-{lra or '144'}"
        voicemail = Voicemail(_long_id(), msgid, stamp, duration, remote_number, remote_label, internal, priority,
                              lra=lra or "144", odd_fields=dict(odd_fields or {}))
        self.user(login).voicemails.insert(0, voicemail)
        self.push_counters(login)
        return voicemail

    def add_history(self, login: str, entry: HistoryEntry) -> HistoryEntry:
        history = self.user(login).history
        # Newest first, an entry after those of the same second already there (what a stable sort of the list
        # with it appended gave): found by bisection, not a sort of the whole history for every call ended.
        history.insert(bisect.bisect_right(history, -entry.timestamp, key=lambda h: -h.timestamp), entry)
        self.push_counters(login)
        return entry

    def push_counters(self, login: str) -> int:
        """Push the login's counters to every listener bound to Notifications; returns frames sent."""
        user = self.user(login)
        counters = None  # counted only for a frame to send: a count goes through the whole history
        sent = 0
        for session in self.sessions.of_app(APP):
            if session.login != login or self.sessions.is_expired(session):
                continue
            for name in sorted(self.subscriptions.get(session.id, set()) & set(session.listeners)):
                for socket in list(session.sockets):
                    if counters is None:
                        counters = user.counters()
                    socket.send({"listenerName": name, "item": counters})
                    sent += 1
        return sent


# --- audio ----------------------------------------------------------------------------------

def audio_bytes(fmt: str, seconds: int) -> bytes:
    if fmt == "ogg":
        return ogg_opus_silence(seconds)
    if fmt == "au":
        return au_silence(seconds)
    return mp4_header()


def au_silence(seconds: int, rate: int = 8000) -> bytes:
    # Sun AU: ".snd", data offset, size, encoding 1 (8-bit µ-law), rate, channels; 0xFF is µ-law silence.
    data = b"\xff" * (rate * seconds)
    return struct.pack(">4sIIIII", b".snd", 24, len(data), 1, rate, 1) + data


def mp4_header() -> bytes:
    return struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"M4A ", 0, b"M4A ", b"mp42") + struct.pack(">I4s", 8, b"free")


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], granule: int, serial: int, seq: int, flags: int) -> bytes:
    lacing = b""
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, seq, 0, len(lacing)) + lacing
    page = header + b"".join(packets)
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus_silence(seconds: int) -> bytes:
    """A valid Ogg Opus file of ``seconds`` of silence (20 ms frames, the classic f8 ff fe packet)."""
    serial, pre_skip = 0x1CEB00DA, 312
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, 8000, 0, 0)
    vendor = b"istra-simulator"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_ogg_page([head], 0, serial, 0, 0x02), _ogg_page([tags], 0, serial, 1, 0)]
    frames = 50 * seconds
    per_page = 50
    seq = 2
    for start in range(0, frames, per_page):
        count = min(per_page, frames - start)
        last = start + count >= frames
        granule = pre_skip + (start + count) * 960
        pages.append(_ogg_page([b"\xf8\xff\xfe"] * count, granule, serial, seq, 0x04 if last else 0))
        seq += 1
    return b"".join(pages)


# --- login ------------------------------------------------------------------------------------

def authenticate(world: IstraWorld, user: str, password: str) -> tuple[str, str]:
    """Basic user ``ENDUSER:<login>`` with the user's (digits) password."""
    credentials = split_enduser(user, password)
    if credentials is None:
        raise errors.authentication_failed()
    login, real_password = credentials
    account = world.directory.users.get(login)
    if account is None or account.password != real_password:
        raise errors.authentication_failed()
    return account.login, account.enterprise


# --- helpers ----------------------------------------------------------------------------------

def _not_found(what: str) -> errors.IstraError:
    return errors.router_error(404, "ERR_404", f"{what} not found")


def _bad(message: str) -> errors.IstraError:
    return errors.router_error(400, "ERR_0", message)


def _int_param(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise _bad(f"bad {name} parameter")
    return int(raw)


def _flag_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise _bad(f"bad {name} parameter")
    return raw == "true"


async def _json_body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise _bad(f"malformed JSON payload: {exc.msg}") from None
    if not isinstance(body, dict):
        raise _bad("payload must be a JSON object")
    return body


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    offset = _int_param(request, "offset", 0, minimum=0)
    length = _int_param(request, "length", DEFAULT_PAGE_LENGTH, minimum=1)
    cap = world_of(request).config.max_page_length
    page = items[offset:offset + (min(length, cap) if cap else length)]
    return web.json_response({"count": len(page), "items": page})


def _me(request: web.Request, session: Session) -> EndUser:
    return world_of(request).enduser.user(session.login)


def _voicemail(request: web.Request, session: Session, voicemail_id: str) -> Voicemail:
    for voicemail in _me(request, session).voicemails:
        if voicemail.id == voicemail_id:
            return voicemail
    raise _not_found(f"voicemail {voicemail_id}")


def _caller_id_view(user: EndUser) -> dict[str, Any]:
    return {"restUri": f"v1/user/IUser/{user.user_id}", "customCallerIDChoice": user.caller_id_choice,
            "customCallerID": user.custom_caller_id}


def _is_e164(number: Any) -> bool:
    return isinstance(number, str) and number.startswith("+") and number[1:].isdigit() and 8 <= len(number) <= 16


# --- routes: user -------------------------------------------------------------------------------

@authenticated(APP, iptc=False)
async def user_info(request: web.Request, session: Session) -> web.Response:
    world = world_of(request)
    user = _me(request, session)
    terminals = world.directory.terminals_of(session.login)
    return web.json_response({
        "userName": next((t.label for t in terminals if t.label), session.login),
        "istraVersion": "9.1.0",
        "istraBuildID": "9.1.0-4713",
        "ent": {"fullName": session.enterprise, "restUri": f"v1/ent/Enterprise/{session.enterprise}"},
        "terminals": [{"abstractTerminalID": t.id, "label": t.label or t.number,
                       "restUri": f"v1/user/Terminal/{t.id}"} for t in terminals],
        "user": {**_caller_id_view(user), "login": session.login},
    })


@authenticated(APP)
async def place_call(request: web.Request, session: Session) -> web.Response:
    world = world_of(request)
    terminal = world.directory.extension(request.match_info["id"])
    if terminal is None or terminal.owner != session.login:
        raise _not_found(f"terminal {request.match_info['id']}")
    if terminal.out_of_service:
        raise errors.terminal_out_of_service()
    destination = (await _json_body(request)).get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise _bad("destination is missing")
    world.calls.place_call(terminal, destination.strip())
    return web.Response(status=200)


def _own_user_id(request: web.Request, session: Session) -> EndUser:
    user = _me(request, session)
    if request.match_info["id"] != user.user_id:
        raise _not_found(f"user {request.match_info['id']}")
    return user


@authenticated(APP, iptc=False)
async def get_caller_id(request: web.Request, session: Session) -> web.Response:
    return web.json_response(_caller_id_view(_own_user_id(request, session)))


@authenticated(APP, iptc=False)
async def put_caller_id(request: web.Request, session: Session) -> web.Response:
    user = _own_user_id(request, session)
    body = await _json_body(request)
    choice = body.get("customCallerIDChoice")
    if choice == "ManualSetting":
        number = body.get("manualCustomCallerID")
        if not _is_e164(number):
            raise _bad("manualCustomCallerID must be a number in E.164 format")
        if user.allowed_caller_ids and number not in user.allowed_caller_ids:
            raise errors.router_error(400, "ERR_CLI", f"caller id {number} refused by the custom caller id policy")
        user.caller_id_choice, user.custom_caller_id = choice, number
    elif choice == "FromPresenceState":
        user.caller_id_choice = choice
    else:
        raise _bad("customCallerIDChoice must be ManualSetting or FromPresenceState")
    answer = {**body, "restUri": f"v1/user/IUser/{user.user_id}"}
    return web.json_response(answer)


# --- routes: voicemail --------------------------------------------------------------------------

@authenticated(APP, iptc=False)
async def list_voicemails(request: web.Request, session: Session) -> web.Response:
    return _page(request, [v.item() for v in _me(request, session).voicemails])


@authenticated(APP, iptc=False)
async def voicemail_resource(request: web.Request, session: Session) -> web.StreamResponse:
    ref = request.match_info["ref"]
    voicemail_id, dot, fmt = ref.partition(".")
    if dot:
        if request.method != "GET":
            raise errors.router_error(405, "ROUTER_ERR_405", "only GET on an audio file")
        if fmt not in AUDIO_TYPES:
            raise _bad(f"unknown audio format .{fmt}")
        voicemail = _voicemail(request, session, voicemail_id)
        response = web.Response(body=audio_bytes(fmt, voicemail.duration), content_type=AUDIO_TYPES[fmt])
        if request.query.get("dl") == "true":
            response.headers["Content-Disposition"] = f'attachment; filename="{voicemail.id}.{fmt}"'
        return response
    voicemail = _voicemail(request, session, voicemail_id)
    if request.method == "PUT":
        body = await _json_body(request)
        if "read" in body:
            if not isinstance(body["read"], bool):
                raise _bad("read must be true or false")
            voicemail.read = body["read"]
            world_of(request).enduser.push_counters(session.login)
    elif request.method == "DELETE":
        _me(request, session).voicemails.remove(voicemail)
        world_of(request).enduser.push_counters(session.login)
        return web.Response(status=200)
    return web.json_response(voicemail.item())


# --- routes: call history -----------------------------------------------------------------------

@authenticated(APP, iptc=False)
async def list_history(request: web.Request, session: Session) -> web.Response:
    incoming, missed = _flag_param(request, "isIncoming"), _flag_param(request, "isMissed")
    entries = [
        h for h in _me(request, session).history
        # "isIncoming=true: returns only incoming calls"; "isMissed=true: returns only missed calls"
        if (not incoming or h.incoming) and (not missed or h.missed)
    ]
    return _page(request, [h.item() for h in entries])


@authenticated(APP, iptc=False)
async def history_resource(request: web.Request, session: Session) -> web.Response:
    user = _me(request, session)
    entry = next((h for h in user.history if h.id == request.match_info["id"]), None)
    if entry is None:
        raise _not_found(f"call history entry {request.match_info['id']}")
    if request.method == "DELETE":
        user.history.remove(entry)
        world_of(request).enduser.push_counters(session.login)
        return web.Response(status=200)
    return web.json_response(entry.item())


# --- routes: notifications ---------------------------------------------------------------------

@authenticated(APP, iptc=False)
async def notifications(request: web.Request, session: Session) -> web.Response:
    name = request.query.get("listenerName")
    book = world_of(request).enduser
    if name is not None:
        if bean_of(world_of(request), session, name) is None:
            raise _bad("bad listener name")
        book.subscriptions.setdefault(session.id, set()).add(name)
    return web.json_response(book.user(session.login).counters())


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/user/Info", user_info)
    router.add_post("/v1/user/Terminal/{id}/placeCall", place_call)
    router.add_get("/v1/user/IUser/{id}", get_caller_id)
    router.add_put("/v1/user/IUser/{id}", put_caller_id)
    router.add_get("/v1/logs/Voicemail/bean", list_voicemails)
    router.add_route("*", "/v1/logs/Voicemail/bean/{ref}", voicemail_resource)
    router.add_get("/v1/logs/Phone/bean", list_history)
    router.add_route("*", "/v1/logs/Phone/bean/{id}", history_resource)
    router.add_get("/v1/logs/Notifications/bean", notifications)


# --- calls become history -----------------------------------------------------------------------

def history_recorder(world: IstraWorld):
    """The CallBook observer: a dropped line of a user's terminal lands in that user's call history."""

    def record(transition: Transition) -> None:
        if transition.after != DROPPED or transition.before == DROPPED:
            return
        line = transition.line
        extension = world.directory.extension(line.extension_id)
        if extension is None or extension.owner is None:
            return
        talked = line.talking_since_ms is not None
        entry = world.enduser.add_history(extension.owner, HistoryEntry(
            id=_long_id(),
            timestamp=line.created_ms // 1000,
            incoming=line.incoming,
            missed=not talked,
            remote_number=line.remote.number,
            remote_label=line.remote.label,
            remote_type="STATION" if line.remote.internal else "EXTERNAL_NUMBER",
            ring_seconds=round(line.ringing_ms / 1000),
            talk_seconds=round(line.talking_ms / 1000) if talked else 0,
            user_number=extension.number,
            enterprise=extension.enterprise,
        ))
        line.report(APP, DROPPED)  # a myIstra client can now read it in the history
        line.history_ids[extension.owner] = entry.id

    return record


# --- control API (/_sim/istra/enduser/...) ------------------------------------------------------

CONTROL_PREFIX = "/_sim/istra/enduser"


_control = json_errors()


async def _control_body(request: web.Request, known: set[str]) -> dict[str, Any]:
    body = await read_body(request)
    only(body, known)
    return body


def _known_login(request: web.Request, login: Any) -> str:
    if not isinstance(login, str) or login not in world_of(request).directory.users:
        raise KeyError(f"no user {login!r}")
    return login


def enduser_view(user: EndUser) -> dict[str, Any]:
    return {
        "login": user.login, "userId": user.user_id,
        "callerId": {"customCallerIDChoice": user.caller_id_choice, "customCallerID": user.custom_caller_id},
        "allowedCallerIds": list(user.allowed_caller_ids),
        "counters": user.counters(),
        "voicemails": [v.item() for v in user.voicemails],
        "history": [{**h.item(), "seen": h.seen} for h in user.history],
    }


@_control
async def control_leave_voicemail(request: web.Request) -> web.Response:
    body = await _control_body(request, {"login", "from", "label", "durationSecond", "internal", "priority",
                                         "timestamp", "fields"})
    odd_fields = body.get("fields", {})
    if not isinstance(odd_fields, dict) or not all(isinstance(key, str) and key for key in odd_fields):
        raise ValueError("'fields' must map field names to the values the voicemail carries")
    login = _known_login(request, body.get("login"))
    remote = body.get("from")
    if not isinstance(remote, str) or not remote:
        raise ValueError("'from' is required")
    world = world_of(request)
    terminals = world.directory.terminals_of(login)
    voicemail = world.enduser.leave_voicemail(
        login, remote, remote_label=str(body.get("label", "")), duration=int(body.get("durationSecond", 5)),
        internal=bool(body.get("internal", False)), priority=str(body.get("priority", "normal")),
        timestamp=body.get("timestamp"), lra=terminals[0].number if terminals else "", odd_fields=odd_fields,
    )
    return web.json_response(voicemail.item(), status=201)


@_control
async def control_add_history(request: web.Request) -> web.Response:
    body = await _control_body(request, {"login", "remoteNumber", "remoteLabel", "remoteType", "isIncoming",
                                         "isMissed", "ringDurationSecond", "talkDurationSecond", "timestamp"})
    login = _known_login(request, body.get("login"))
    remote = body.get("remoteNumber")
    if not isinstance(remote, str) or not remote:
        raise ValueError("'remoteNumber' is required")
    world = world_of(request)
    terminals = world.directory.terminals_of(login)
    missed = bool(body.get("isMissed", False))
    entry = world.enduser.add_history(login, HistoryEntry(
        id=_long_id(), timestamp=int(body.get("timestamp", time.time())), incoming=bool(body.get("isIncoming", True)),
        missed=missed, remote_number=remote, remote_label=str(body.get("remoteLabel", "")),
        remote_type=str(body.get("remoteType", "EXTERNAL_NUMBER")),
        ring_seconds=int(body.get("ringDurationSecond", 5)),
        talk_seconds=0 if missed else int(body.get("talkDurationSecond", 30)),
        user_number=terminals[0].number if terminals else "", enterprise=world.directory.users[login].enterprise,
    ))
    return web.json_response(entry.item(), status=201)


@_control
async def control_get(request: web.Request) -> web.Response:
    login = _known_login(request, request.match_info["login"])
    return web.json_response(enduser_view(world_of(request).enduser.user(login)))


@_control
async def control_patch(request: web.Request) -> web.Response:
    """{unreadTextMessages, allowedCallerIds, callerId: {customCallerIDChoice, customCallerID}, seeMissedCalls}"""
    body = await _control_body(request, {"unreadTextMessages", "allowedCallerIds", "callerId", "seeMissedCalls"})
    login = _known_login(request, request.match_info["login"])
    book = world_of(request).enduser
    user = book.user(login)
    if "unreadTextMessages" in body:
        user.unread_text_messages = int(body["unreadTextMessages"])
    if "allowedCallerIds" in body:
        user.allowed_caller_ids = [str(n) for n in body["allowedCallerIds"]]
    if "callerId" in body:
        user.caller_id_choice = str(body["callerId"].get("customCallerIDChoice", user.caller_id_choice))
        user.custom_caller_id = str(body["callerId"].get("customCallerID", user.custom_caller_id))
    if body.get("seeMissedCalls"):
        for entry in user.history:
            entry.seen = True
    book.push_counters(login)
    return web.json_response(enduser_view(user))


def add_control_routes(app: web.Application) -> None:
    app.router.add_post(f"{CONTROL_PREFIX}/voicemails", control_leave_voicemail)
    app.router.add_post(f"{CONTROL_PREFIX}/history", control_add_history)
    app.router.add_get(f"{CONTROL_PREFIX}/{{login}}", control_get)
    app.router.add_patch(f"{CONTROL_PREFIX}/{{login}}", control_patch)
