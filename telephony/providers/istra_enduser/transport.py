"""Centile Istra End User REST API (myIstra): one agent's own view of their telephony.

One account is one end user (``ENDUSER:<login>``). The session is the shared
Istra one (``istra.session.IstraSession``: Basic login with ``X-Application:
myIstra``, the ``myIstra_SESSIONID`` cookie, the CSRF token re-read from every
answer, a new login and one retry when the 30-minute inactivity expiry hit,
``{code, message}`` errors said plainly, gzip). What differs lives here:

* **HTTPS only** (doc §VI.B.2): a ``http://`` base URL is refused, except on the
  loopback interface (a simulator or a local tunnel, where nothing travels on a
  network). Certificates are always verified, against the system CAs plus the
  account's own trusted CA bundle when it has one; there is no switch to turn
  verification off.
* **Audio** answers are binary and streamed (not read into memory, not parsed).
* **The websocket** ``wss://HOST/restletrouter/ws-service/myIstra`` carries only
  the unread counters: the listener is created, bound to
  ``v1/logs/Notifications/bean?listenerName=..`` (whose answer, the current
  counters, is the stream's first frame), and kept alive with the doc's JSON
  frame ``{"keepalive": "true"}`` on every supervisor keep-alive tick
  (``LISTENER_KEEPALIVE_SECONDS``, 20 s by default: within the doc's 30 s).
  Counter frames are not call updates: ``parse_frame`` pushes them to the
  owner's console and returns no update. The supervisor's session checks also
  GET ``v1/logs/Notifications/bean`` on the socket's session: the 30-minute
  inactivity expiry counts requests, and a 401 there is a session gone under
  a socket left open.

Resource paths follow the doc's section headings where its curl lines disagree
(``v1/logs/Voicemail/bean/<id>`` for DELETE, ``v1/logs/Phone/bean/<id>``), and the
caller-ID query is ``rt=customCallerIDChoice,customCallerID`` (the body's comma,
not the heading's dot).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote, urlsplit

import requests
from django.db import DatabaseError
from django.utils.translation import gettext_lazy, ngettext
from redis.exceptions import RedisError

from ctihub.lib.http_client import HttpError
from telephony.providers import unexpected
from telephony.providers.base import EventStream, ListenerSpec, NotSupported, Provider, ProviderError, TerminalInfo
from telephony.providers.istra.framing import say_unread
from telephony.providers.istra.session import IstraSession, enduser_username
from telephony.providers.istra_enduser import frames
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

APP = "myIstra"
LISTENER_NAME = "ctihub-MixedLogs"
KEEPALIVE_FRAME = {"keepalive": "true"}
#: The session check (``EventStream.session_check``): the unread counters, a cheap authenticated GET.
SESSION_CHECK_PATH = "v1/logs/Notifications/bean"
PAGE_LENGTH = 50
MAX_PAGES = 200  # a list that never ends must not loop forever
MANUAL = "ManualSetting"
# The doc spells the manual choice two ways: "ManualSetting" (IUser, what we send) and "manualCustomCallerID"
# (user/Info's list of values). Either is the user's own caller-ID, to be put back with its number.
MANUAL_CHOICES = frozenset({"manualsetting", "manualcustomcallerid"})
CALLER_ID_FIELDS = "customCallerIDChoice,customCallerID"
AUDIO_CHUNK = 64 * 1024


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def require_https(base_url: str) -> None:
    parts = urlsplit(base_url or "")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return
    raise ProviderError(
        f"the Istra End User API runs over HTTPS only: use https://HOST/restletrouter, not {base_url!r}",
        permanent=True,
    )


class EndUserSession(IstraSession):
    """The shared Istra session, with binary audio answers streamed instead of read whole."""

    def _send(self, http, method, path, *, headers, params=None, body=None):
        if not is_audio_path(path):
            return super()._send(http, method, path, headers=headers, params=params, body=body)
        headers = {key: value for key, value in headers.items() if key not in ("Accept", "Content-Type")}
        # Audio does not compress, and an identity answer keeps its Content-Length for the browser.
        headers["Accept-Encoding"] = "identity"
        url = self.url(path)
        try:
            response = http.request(method, url, headers=headers, params=params, stream=True)
        except HttpError as exc:
            raise ProviderError(f"cannot reach the Istra server: {exc}") from exc
        self._note_redirects(url, response)
        return response

    def ws_headers(self) -> list[str]:
        """The upgrade as doc §IX.B lists it: the mandatory headers of §VII.A.3, the session's cookie.

        Those are ``Content-Type: application/json`` and ``X-Application: myIstra``, here without
        the CSRF token ("not required here, by design"); websocket-client adds ``Connection: Upgrade``.
        """
        return [f"Cookie: {self.cookie_header()}", "Content-Type: application/json", f"X-Application: {self.app}"]


def is_audio_path(path: str) -> bool:
    last = path.rsplit("/", 1)[-1]
    return path.startswith("v1/logs/Voicemail/bean/") and "." in last and last.rsplit(".", 1)[1] in frames.AUDIO_FORMATS


@dataclass(frozen=True)
class UserInfo:
    name: str
    enterprise: str
    terminals: tuple[TerminalInfo, ...]
    user_uri: str
    caller_id_choice: str
    caller_id: str


@dataclass(frozen=True)
class CallerId:
    choice: str
    number: str

    @property
    def manual(self) -> bool:
        return self.choice.strip().lower() in MANUAL_CHOICES


@dataclass
class AudioStream:
    """An open audio answer: iterate ``chunks()`` once, then ``close()``."""

    content_type: str
    length: int | None
    response: requests.Response

    def chunks(self):
        try:
            yield from self.response.iter_content(AUDIO_CHUNK)
        finally:
            self.response.close()

    def close(self) -> None:
        self.response.close()


class EndUserProvider(Provider):
    kind = "istra_enduser"
    actions = ()
    holds_sockets = True

    def prepare_shared(self) -> None:
        self.session  # the one IstraSession every thread of the cached provider shares

    @cached_property
    def session(self) -> EndUserSession:
        require_https(self.account.base_url)
        return EndUserSession(self.account, APP, enduser_username(self.account.login), http=self.http)

    # --- user and terminals ---------------------------------------------------------------
    def user_info(self) -> UserInfo:
        info = self.session.request_json("GET", "v1/user/Info")
        if not isinstance(info, dict) or not isinstance(info.get("terminals", []), list):
            raise ProviderError("Istra myIstra answered user/Info with something that is not a user")
        terminals = []
        for item in info.get("terminals") or []:
            terminal_id = item.get("abstractTerminalID") if isinstance(item, dict) else None
            if not isinstance(terminal_id, str) or not terminal_id:
                raise ProviderError("Istra myIstra listed a terminal without an abstractTerminalID")
            terminals.append(TerminalInfo(pbx_id=terminal_id, label=str(item.get("label") or "")))
        user = info.get("user") if isinstance(info.get("user"), dict) else {}
        ent = info.get("ent") if isinstance(info.get("ent"), dict) else {}
        return UserInfo(
            name=str(info.get("userName") or ""), enterprise=str(ent.get("fullName") or ""),
            terminals=tuple(terminals), user_uri=str(user.get("restUri") or ""),
            caller_id_choice=str(user.get("customCallerIDChoice") or ""),
            caller_id=str(user.get("customCallerID") or ""),
        )

    def test_connection(self) -> str:
        info = self.user_info()
        count = len(info.terminals)
        who = info.name or self.account.login
        terminals = ngettext("%(count)s terminal", "%(count)s terminals", count) % {"count": count}
        return f"{who}{f' ({info.enterprise})' if info.enterprise else ''}: {terminals}"

    def fetch_terminals(self) -> list[TerminalInfo]:
        return list(self.user_info().terminals)

    def place_call(self, terminal_pbx_id: str, destination: str) -> dict:
        """``POST v1/user/Terminal/<id>/placeCall``; a POST is never re-sent on a slow answer."""
        destination = (destination or "").strip()
        if not destination:
            raise ProviderError(gettext_lazy("placeCall needs a destination"), permanent=True)
        answer = self.session.request_json(
            "POST", f"v1/user/Terminal/{quote(terminal_pbx_id, safe='')}/placeCall", body={"destination": destination}
        )
        return answer if isinstance(answer, dict) else {}

    def call_action(self, call, action: str, payload: dict) -> dict:
        raise NotSupported(gettext_lazy("the End User API has no call control: use a myRCC account to answer, hold "
                                        "or transfer"))

    # --- voicemail ------------------------------------------------------------------------------
    def voicemail_page(self, offset: int = 0, length: int = PAGE_LENGTH) -> list[frames.Voicemail]:
        items = self._raw_page("v1/logs/Voicemail/bean", {"offset": offset, "length": length}, "voicemail list")
        return self._voicemail_list(items)

    def voicemails(self) -> list[frames.Voicemail]:
        items = _all_pages(lambda o, n: self._raw_page("v1/logs/Voicemail/bean", {"offset": o, "length": n},
                                                       "voicemail list"))
        return self._voicemail_list(items)

    def _voicemail_list(self, items: list) -> list[frames.Voicemail]:
        """Every voicemail of a list that can be read: one that cannot is left out, and said, never the box."""
        voicemails, unread = [], []
        for item in items:
            try:
                voicemails.append(frames.parse_voicemail(item, unread))
            except FrameRejected as exc:
                unexpected.warn_once(logger, self.account.pk, "myIstra voicemail", str(exc),
                                     "Istra myIstra listed a voicemail ctihub cannot read, left out: %s", exc)
        say_unread(logger, self.account.pk, "myIstra", unread, "voicemail")
        return voicemails

    def voicemail(self, voicemail_id: str) -> frames.Voicemail:
        item = self.session.request_json("GET", f"v1/logs/Voicemail/bean/{_id(voicemail_id)}")
        return self._read(frames.parse_voicemail, item, "voicemail")

    def mark_voicemail(self, voicemail_id: str, read: bool) -> frames.Voicemail:
        item = self.session.request_json("PUT", f"v1/logs/Voicemail/bean/{_id(voicemail_id)}", body={"read": bool(read)})
        return self._read(frames.parse_voicemail, item, "voicemail")

    def delete_voicemail(self, voicemail_id: str) -> None:
        """Irreversible at the PBX: the audio file is deleted too (the console asks first).

        A voicemail the PBX no longer has is deleted all the same: a DELETE whose answer timed out is sent
        again (``HttpClient``), and the second one finds nothing when the first worked; another of the user's
        phones may have deleted it too. Said as an error, the agent saw one for a message that was gone.
        """
        try:
            self.session.request("DELETE", f"v1/logs/Voicemail/bean/{_id(voicemail_id)}")
        except ProviderError as exc:
            if exc.status != 404:
                raise

    def voicemail_audio(self, voicemail_id: str, audio_format: str) -> AudioStream:
        if audio_format not in frames.AUDIO_FORMATS:
            raise ProviderError(f"no voicemail audio format {audio_format!r}", permanent=True)
        response = self.session.request("GET", f"v1/logs/Voicemail/bean/{_id(voicemail_id)}.{audio_format}")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not content_type or content_type.startswith(("application/json", "text/")):
            content_type = frames.AUDIO_FORMATS[audio_format]
        length = response.headers.get("Content-Length")
        # A gzipped answer is decoded on the way: its Content-Length is not the audio's.
        plain = not response.headers.get("Content-Encoding")
        return AudioStream(content_type, int(length) if length and length.isdigit() and plain else None, response)

    # --- call history -------------------------------------------------------------------------------
    def history_page(self, offset: int = 0, length: int = PAGE_LENGTH, *, incoming: bool | None = None,
                     missed: bool | None = None) -> list[frames.HistoryEntry]:
        return self._history_entries(self._raw_page("v1/logs/Phone/bean", _history_params(offset, length, incoming, missed),
                                                    "call history"))

    def history(self, *, incoming: bool | None = None, missed: bool | None = None,
                max_pages: int = MAX_PAGES) -> list[frames.HistoryEntry]:
        items = _all_pages(
            lambda o, n: self._raw_page("v1/logs/Phone/bean", _history_params(o, n, incoming, missed), "call history"),
            max_pages=max_pages,
        )
        return self._history_entries(items)

    def _history_entries(self, items: list) -> list[frames.HistoryEntry]:
        entries = []
        for item in items:
            try:
                entries.append(frames.parse_history_entry(item))
            except FrameRejected as exc:
                # One unreadable entry must not hide the others from the backfill.
                logger.warning("skipping a call-history entry: %s", exc, extra={"account_id": self.account.pk})
        return entries

    # --- caller-ID --------------------------------------------------------------------------------------
    @cached_property
    def _user_uri(self) -> str:
        uri = self.user_info().user_uri
        if not uri.startswith("v1/user/IUser/"):
            raise ProviderError("Istra myIstra's user/Info has no user restUri: cannot read the caller-ID")
        return uri

    def caller_id(self) -> CallerId:
        answer = self.session.request_json("GET", self._user_uri, params={"rt": CALLER_ID_FIELDS})
        if not isinstance(answer, dict):
            raise ProviderError("Istra myIstra answered the caller-ID request with something that is not a user")
        # The number under either name: the doc reads it as customCallerID and writes it as manualCustomCallerID.
        number = answer.get("customCallerID") or answer.get("manualCustomCallerID") or ""
        return CallerId(str(answer.get("customCallerIDChoice") or ""), str(number))

    def set_caller_id(self, number_e164: str) -> CallerId:
        """Present ``number_e164`` (E.164) on the user's calls from now on."""
        if not number_e164.startswith("+") or not number_e164[1:].isdigit():
            raise ProviderError(f"a caller-ID must be in E.164 format, not {number_e164!r}", permanent=True)
        self.session.request_json(
            "PUT", self._user_uri, params={"rt": CALLER_ID_FIELDS},
            body={"customCallerIDChoice": MANUAL, "manualCustomCallerID": number_e164},
        )
        return CallerId(MANUAL, number_e164)

    def restore_caller_id(self, previous: CallerId) -> None:
        """Put back what the user had before ``set_caller_id``."""
        if previous.manual and previous.number:
            self.set_caller_id(previous.number)
            return
        if not previous.choice:
            return  # the PBX never said: nothing to restore to
        self.session.request_json("PUT", self._user_uri, params={"rt": CALLER_ID_FIELDS},
                                  body={"customCallerIDChoice": previous.choice})

    # --- counters -------------------------------------------------------------------------------------
    def counters(self) -> frames.Counters:
        return frames.parse_counters(self.session.request_json("GET", "v1/logs/Notifications/bean"))

    # --- the websocket -------------------------------------------------------------------------------
    def listener_specs(self, terminal_pbx_ids: list[str]) -> list[ListenerSpec]:
        return [ListenerSpec(name=LISTENER_NAME)]

    def open_stream(self, spec: ListenerSpec) -> EventStream:
        stream, snapshot = self.session.open_listener(
            spec.name, {"name": spec.name}, "v1/logs/Notifications/bean", {"listenerName": spec.name}
        )
        stream.keepalive_frame = KEEPALIVE_FRAME
        stream.session_check = lambda: self.session.check_alive(SESSION_CHECK_PATH)
        if snapshot.content.strip():
            stream.initial_frames = (snapshot.text,)
        return stream

    def parse_frame(self, text: str, spec: ListenerSpec) -> list[CallUpdate]:
        counters = frames.parse_notification_frame(text)
        if counters is not None:
            from telephony.providers.istra_enduser.console import publish_counters

            try:
                publish_counters(self.account.pk, counters)
            except (DatabaseError, RedisError, OSError) as exc:
                # Every counters frame carries every counter: the next one puts the consoles right. Raised, it
                # took the socket down with it, and the frame was lost all the same.
                logger.warning("could not show myIstra's counters on the consoles (%s: %s); the next frame will",
                               exc.__class__.__name__, exc, extra={"account_id": self.account.pk})
        return []

    def close_stream(self, spec: ListenerSpec, stream: EventStream | None, *, keep_listener: bool = False) -> None:
        self.session.close_listener(spec.name, stream, keep_listener=keep_listener)

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()

    # --- helpers -------------------------------------------------------------------------------------
    def _raw_page(self, path: str, params: dict, what: str) -> list:
        return _page_items(self.session.request_json("GET", path, params=params), what)

    def _read(self, parse, item, what: str):
        try:
            return parse(item)
        except FrameRejected as exc:
            raise ProviderError(f"Istra myIstra sent a {what} ctihub cannot read: {exc}") from None


def _history_params(offset: int, length: int, incoming: bool | None, missed: bool | None) -> dict:
    params: dict = {"offset": offset, "length": length}
    # The doc defines only the "true" filters (isIncoming=true, isMissed=true).
    if incoming:
        params["isIncoming"] = "true"
    if missed:
        params["isMissed"] = "true"
    return params


def _id(value: str) -> str:
    value = str(value or "")
    if not value or not value.isascii() or not value.replace("-", "").isalnum():
        raise ProviderError(f"not an Istra id: {value!r}", permanent=True)
    return value


def _page_items(page, what: str) -> list:
    # The doc's table says "Items", its text and examples "items".
    items = page.get("items", page.get("Items")) if isinstance(page, dict) else None
    if items is None and isinstance(page, dict) and page.get("count") in (0, "0"):
        return []  # an empty page may leave the list out
    if not isinstance(items, list):
        raise ProviderError(f"Istra myIstra answered the {what} with something that is not a page")
    return items


def _all_pages(fetch_page, max_pages: int = MAX_PAGES) -> list:
    """Every page, whatever page length the platform keeps to.

    The doc shows a page of 20 asked and 20 returned, never what a platform does with 50: one that caps its
    pages lower returns fewer than asked on every page. So the next page starts after what came, and only an
    empty page ends the list (a short one is asked past once); a page equal to the one before (a platform
    that ignores the offset) ends it too. Taking a short page for the last read one page of a capped list.
    """
    results: list = []
    offset, previous = 0, None
    for _page_number in range(max_pages):
        page = fetch_page(offset, PAGE_LENGTH)
        if not page or page == previous:
            break
        results.extend(page)
        offset += len(page)
        previous = page
    return results
