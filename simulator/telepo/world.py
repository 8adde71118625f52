"""The simulated MiCloud Telepo platform: tickets, users, their calls, and the CRM connector webhook queue.

``SimulatorState.telepo`` is one :class:`TelepoWorld`. The REST handlers
(``api.py``), the control API (``control.py``) and Python callers (tests running
the simulator in a thread) call its methods; each takes the world's lock.

What it enforces, from the spec (Backend 5.1, CTI APIs):

* bearer API tickets per domain, with the CALL_CONTROL scope, and the Cloud CTI
  API licence per user;
* every call carries a ``stateToken`` that changes with each change; an action
  sent with another token is refused as a conflict (409);
* an action is only possible when the call's ``actions`` list it;
* every call state change (TRYING, PROCEEDING, EARLY, CONFIRMED, TERMINATED) is a
  webhook message with a ``seq_num`` per call, POSTed in order to the domain's
  CRM connector URL (HTTPS; plain HTTP only to loopback, for tests), unless the
  control API holds, drops, duplicates or reorders them.

What a real PBX may do beyond our reading of the spec, each off unless asked for
(the demo asks for none):

* **branches**: an incoming call given ``ring_devices`` rings each of them as a
  branch of its own (``branch_id``, ``device_type``), one ``seq_num`` sequence for
  the call. The device that answers sends CONFIRMED and the others TERMINATED
  ANSWERED_ELSEWHERE; a device may decline alone (``decline``: its branch ends
  REJECTED, the call goes on ringing elsewhere); a VOICEMAIL or QUEUE device may
  take the call (``divert``); a move opens a branch on the new device before the
  old one ends. The snapshot shows a diverted call ACTIVE on that device.
* **words we do not know**: ``set_status_name`` shows a call's snapshot status
  under another name; a ``rename`` rule sends a message's state (or another
  field) under another name. Both are what Telepo says, so they are in ``sent``.
* **a stale stateToken refused another way**: the spec says only that such a request
  "will fail"; ``set_mismatch_status`` answers it with another 4xx than 409 (400, 422...).
* **timestamps written another way**: ``set_stamp_style`` writes each delivered
  message's ``timestamp`` in one of ``STAMP_STYLES`` (the spec shows only
  ``2018-02-02T12:34:57.699+0000`` and says "UTC"): ``Z``, ``+00:00``, no offset,
  a space for the T, nanoseconds, epoch milliseconds or seconds, or text no reader
  takes. ``sent`` keeps the spec's form (replays and shifts read it).
* **transfers keep the call's id**: a blind single-step transfer to a number (tel:) or a
  userId (sip:) of another user of the domain ends the first user's leg (TERMINATED)
  and rings the target under the same ``call_id`` (EARLY on, numbered on), as a PBX
  that reports each user's states under the call's one id would.
* **refusals**: ``fail_next`` makes the next action (or make call) answer 200 with
  ``"event": "FAILED"`` and an ``eventDescription``, like the spec's sample, and
  do nothing.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

RINGING, ALERTING, ACTIVE, HELD, PARKED, TERMINATED = "RINGING", "ALERTING", "ACTIVE", "HELD", "PARKED", "TERMINATED"
TRANSFER_TYPES = ("BASIC", "VOICEMAIL", "CAMP_ON", "DIVERSION_BYPASS")
TERMINATION_REASONS = ("CANCELLED", "ANSWERED_ELSEWHERE", "HANGUP", "REJECTED")
DEVICE_TYPES = ("MOBILE", "SOFT", "DESKTOP", "FXS", "EXTERNAL_PBX", "FAX", "VOICEMAIL", "EXTERNAL", "MOBILE_EXT",
                "CONFERENCE", "QUEUE", "MOBILE_VOIP", "WEB")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RENAMABLE = ("state", "termination-reason", "direction", "device_type")
SPEC_FAILURE = "Call setup failed with status code 504"  # the spec's sample eventDescription


class TelepoError(Exception):
    """An error answer: HTTP status and a JSON body ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def not_found(message: str) -> TelepoError:
    return TelepoError(404, "NOT_FOUND", message)


def bad_request(message: str, code: str = "BAD_REQUEST") -> TelepoError:
    return TelepoError(400, code, message)


STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"
STAMP_STYLES = {
    "spec": lambda at: _stamp(at),
    "zulu": lambda at: _stamp(at).replace("+0000", "Z"),
    "colon-offset": lambda at: (at + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+02:00",
    "no-offset": lambda at: _stamp(at).removesuffix("+0000"),
    "space": lambda at: _stamp(at).replace("T", " ").removesuffix("+0000"),
    "nanoseconds": lambda at: at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000+0000",
    "epoch-ms": lambda at: int(at.timestamp() * 1000),
    "epoch-s": lambda at: round(at.timestamp(), 3),
    "unreadable": lambda at: "sometime on " + at.strftime("%A"),
}


def now_stamp() -> str:
    return _stamp(datetime.now(UTC))


def shift_stamp(stamp: str, seconds: float) -> str:
    return _stamp(datetime.strptime(stamp, STAMP_FORMAT) + timedelta(seconds=seconds))


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


@dataclass
class Ticket:
    ticket: str
    domain: str
    scopes: tuple[str, ...] = ("CALL_CONTROL",)


@dataclass
class User:
    user_id: str
    domain: str
    email: str = ""
    number: str = ""
    display_name: str = ""
    devices: dict[str, str] = field(default_factory=dict)  # deviceId -> device_type
    cti_licence: bool = True


@dataclass
class Party:
    party_id: str = ""
    type: str = "TEL_URI"
    tel_uri: str = ""
    display_name: str = ""
    display_number: str = ""
    email: str = ""

    def view(self) -> dict[str, Any]:
        return {"partyId": self.party_id, "type": self.type, "telUri": self.tel_uri,
                "displayName": self.display_name, "displayNumber": self.display_number}


@dataclass
class Branch:
    """One device ringing (or having) a forked call."""

    branch_id: str
    device_id: str
    state: str = "EARLY"  # the state of its last webhook message
    confirmed: bool = False

    @property
    def live(self) -> bool:
        return self.state != TERMINATED


@dataclass
class Call:
    call_id: str
    user_id: str
    domain: str
    inbound: bool
    remote: Party
    status: str
    device_id: str
    state_token: int
    branch_id: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    created: float = field(default_factory=time.time)
    answered: float | None = None
    muted: bool = False
    conference: bool = False
    participants: list[dict[str, Any]] = field(default_factory=list)
    dtmfs: list[str] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    termination_reason: str | None = None
    history: list[str] = field(default_factory=list)
    # A forked call's branches (empty: one branch, ``branch_id`` on ``device_id``, as before).
    branches: list[Branch] = field(default_factory=list)
    taken_by: str | None = None  # the VOICEMAIL or QUEUE device a call was diverted to
    status_name: str | None = None  # the snapshot's word for ``status`` when told to use another
    dialled: str = ""  # the number an incoming call was first sent to (a switchboard), before it reached the user

    @property
    def live(self) -> bool:
        return self.status != TERMINATED

    def live_branches(self) -> list[Branch]:
        return [b for b in self.branches if b.live]


@dataclass
class WebhookRule:
    """Drop, duplicate or rename the next ``remaining`` messages (of ``state``, if given).

    A rename sends the message's ``key`` (its state unless told) as ``to``: a word ctihub does not know.
    """

    kind: str
    remaining: int
    state: str | None = None
    to: Any = None
    key: str = "state"


@dataclass
class FailRule:
    """Answer the next ``remaining`` actions (``action``: a path name, or any) FAILED, doing nothing."""

    action: str | None
    description: str
    remaining: int


class TelepoWorld:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.tickets: dict[str, Ticket] = {}
            self.users: dict[str, User] = {}
            self.calls: dict[str, Call] = {}
            self.webhook_urls: dict[str, str] = {}
            self.pending: list[dict[str, Any]] = []  # messages waiting to be POSTed
            self.sent: list[dict[str, Any]] = []  # every message generated, in order
            self.deliveries: list[dict[str, Any]] = []
            self.held = False
            self.pace = 0.0  # seconds between two deliveries: a sender whose queue lags behind its snapshot
            self.stamp_style = "spec"  # how a delivered message writes its timestamp (STAMP_STYLES)
            # The status a stale stateToken is refused with: the spec says only "the request will fail".
            self.mismatch_status = 409
            self.rules: list[WebhookRule] = []
            self.failures: list[FailRule] = []
            self.requests: list[dict[str, Any]] = []
            self._request_seq = itertools.count(1)
            self._tokens = itertools.count(487345453, 7919)
            self._call_ids = itertools.count(1)

    # --- directory --------------------------------------------------------------------------

    def add_ticket(self, ticket: str, domain: str, scopes: tuple[str, ...] = ("CALL_CONTROL",)) -> Ticket:
        if not ticket or not domain:
            raise ValueError("a ticket needs its value and its domain")
        with self.lock:
            self.tickets[ticket] = Ticket(ticket, domain, tuple(scopes))
            return self.tickets[ticket]

    def revoke_ticket(self, ticket: str) -> None:
        with self.lock:
            self.tickets.pop(ticket)

    def add_user(self, user_id: str, domain: str, *, email: str = "", number: str = "", display_name: str = "",
                 devices: dict[str, str] | list[str] | None = None, cti_licence: bool = True) -> User:
        if not user_id or not domain:
            raise ValueError("a user needs a userId and a domain")
        if isinstance(devices, list):
            devices = {device: "SOFT" for device in devices}
        devices = dict(devices or {f"{user_id}.soft": "SOFT"})
        bad = [t for t in devices.values() if t not in DEVICE_TYPES]
        if bad:
            raise ValueError(f"unknown device type {bad[0]!r}")
        with self.lock:
            self.users[user_id] = User(user_id, domain, email, number, display_name, devices, cti_licence)
            return self.users[user_id]

    def set_webhook(self, domain: str, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
            raise ValueError("the CRM connector webhook URL must use HTTPS")
        with self.lock:
            self.webhook_urls[domain] = url
            return url

    # --- calls, PBX side ------------------------------------------------------------------------

    def incoming_call(self, user_id: str, caller: str, *, display_name: str = "", caller_user: str = "",
                      caller_email: str = "", ring_devices: list[str] | None = None, dialled: str = "") -> Call:
        """Someone calls the user: their devices ring (webhook EARLY).

        With ``ring_devices`` each of those devices rings as a branch of its own (an EARLY each).
        With ``dialled`` the caller dialled that number (a switchboard) and Telepo retargeted the
        call to the user: the snapshot's ``historyInfo`` says so, as in the spec's examples.
        """
        with self.lock:
            user = self.user(user_id)
            for device in ring_devices or ():
                if device not in user.devices:
                    raise not_found(f"user {user_id} has no device {device}")
            devices = list(dict.fromkeys(ring_devices or ()))
            call = self._new_call(user, True, _party(caller, display_name, caller_user, caller_email), RINGING,
                                  devices[0] if devices else next(iter(user.devices)))
            call.dialled = dialled
            if not devices:
                self._webhook(call, "EARLY")
                return call
            for device in devices:
                branch = Branch(secrets.token_hex(4), device)
                call.branches.append(branch)
                self._webhook(call, "EARLY", branch)
            call.branch_id = call.branches[0].branch_id
            return call

    def outgoing_call(self, user_id: str, destination: str, *, device_id: str | None = None,
                      display_name: str = "") -> Call:
        """The user dials from a device: the far end is alerted (webhooks TRYING, EARLY)."""
        with self.lock:
            user = self.user(user_id)
            device = device_id or next(iter(user.devices))
            if device not in user.devices:
                raise not_found(f"user {user_id} has no device {device}")
            number = destination[4:] if destination.startswith("tel:") else destination
            call = self._new_call(user, False, _party(number, display_name), ALERTING, device)
            self._webhook(call, "TRYING")
            self._webhook(call, "EARLY")
            return call

    def answer(self, call_id: str, device_id: str | None = None) -> Call:
        """The ringing party picks up: the user (incoming) or the far end (outgoing)."""
        with self.lock:
            call = self.call(call_id)
            if call.status not in (RINGING, ALERTING):
                raise TelepoError(409, "INVALID_STATE", f"call {call_id} is {call.status}, not ringing")
            if device_id:
                if call.branches and device_id not in [b.device_id for b in call.live_branches()]:
                    raise TelepoError(409, "INVALID_STATE", f"device {device_id} is not ringing call {call_id}")
                call.device_id = device_id
            self._connect(call)
            return call

    def decline(self, call_id: str, device_id: str) -> Call:
        """One device of a forked call declines: its branch ends REJECTED; the call ends if it was the last."""
        with self.lock:
            call = self.call(call_id)
            branch = self._live_branch(call, device_id)
            if call.status != RINGING or branch.confirmed:
                raise TelepoError(409, "INVALID_STATE", f"call {call_id} is {call.status}, not ringing")
            self._end_branch(call, branch, "REJECTED")
            if not call.live_branches():
                call.status, call.termination_reason = TERMINATED, "REJECTED"
            else:
                call.state_token = next(self._tokens)
                if call.device_id == device_id:
                    call.device_id = call.live_branches()[0].device_id
            return call

    def divert(self, call_id: str, device_id: str) -> Call:
        """A ringing call is taken by another device of the user, a VOICEMAIL or a QUEUE one: not an answer.

        A branch on that device is CONFIRMED, the others end ANSWERED_ELSEWHERE; the snapshot shows
        the call ACTIVE on that device. The caller hanging up later ends it with HANGUP.
        """
        with self.lock:
            call = self.call(call_id)
            user = self.user(call.user_id)
            if call.status != RINGING:
                raise TelepoError(409, "INVALID_STATE", f"call {call_id} is {call.status}, not ringing")
            if device_id not in user.devices:
                raise not_found(f"user {call.user_id} has no device {device_id}")
            if not call.branches:  # a call ringing on one device becomes a forked one
                call.branches.append(Branch(call.branch_id, call.device_id))
            branch = Branch(secrets.token_hex(4), device_id, confirmed=True)
            call.branches.append(branch)
            self._webhook(call, "CONFIRMED", branch)
            branch.state = "CONFIRMED"
            for other in call.live_branches():
                if other is not branch:
                    self._end_branch(call, other, "ANSWERED_ELSEWHERE")
            call.status, call.device_id, call.taken_by = ACTIVE, device_id, device_id
            call.state_token = next(self._tokens)
            return call

    def set_status_name(self, call_id: str, name: str | None) -> Call:
        """Show the call's snapshot (and action answers) status as ``name``, a word ctihub may not know."""
        with self.lock:
            call = self.call(call_id)
            call.status_name = name or None
            return call

    def fail_next(self, action: str | None = None, description: str = SPEC_FAILURE, count: int = 1) -> FailRule:
        """The next ``count`` actions (``action``: a path name such as hold or make; None for any) answer FAILED."""
        if action is not None and action not in ACTIONS and action != "make":
            raise ValueError(f"no call control action {action!r}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self.lock:
            rule = FailRule(action, str(description), count)
            self.failures.append(rule)
            return rule

    def hangup(self, call_id: str, reason: str | None = None) -> Call:
        """The far end (or the network) ends the call."""
        with self.lock:
            call = self.call(call_id)
            if not call.live:
                raise TelepoError(409, "INVALID_STATE", f"call {call_id} has already ended")
            if reason is None:
                reason = "HANGUP" if call.answered or call.taken_by else "CANCELLED"
            if reason not in TERMINATION_REASONS:
                raise ValueError(f"reason must be one of {', '.join(TERMINATION_REASONS)}")
            self._terminate(call, reason)
            return call

    # --- the call control API -------------------------------------------------------------------

    def authorize(self, header: str | None, domain: str, user_id: str | None = None) -> User | None:
        """Check the bearer ticket for the domain (and the user's licence); TelepoError otherwise."""
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            raise TelepoError(401, "UNAUTHORIZED", "Authentication required: Authorization: Bearer <api ticket>")
        with self.lock:
            ticket = self.tickets.get(header[7:].strip())
            if ticket is None:
                raise TelepoError(401, "UNAUTHORIZED", "The api ticket is not valid")
            if ticket.domain != domain:
                raise TelepoError(403, "FORBIDDEN", f"The api ticket is not valid for domain {domain}")
            if "CALL_CONTROL" not in ticket.scopes:
                raise TelepoError(403, "FORBIDDEN", "The api ticket has no CALL_CONTROL scope")
            if user_id is None:
                return None
            user = self.users.get(user_id)
            if user is None or user.domain != domain:
                raise not_found(f"No user {user_id} in domain {domain}")
            if not user.cti_licence:
                raise TelepoError(403, "FORBIDDEN", f"User {user_id} has no Cloud CTI API license")
            return user

    def snapshot(self, user_id: str) -> dict[str, Any]:
        with self.lock:
            calls = [c for c in self.calls.values() if c.user_id == user_id and c.live]
            return {"fullState": True, "calls": [self.state_view(c) for c in calls]}

    def make(self, user: User, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        destination = _uri(body.get("destination"), "destination")
        with self.lock:
            if device_id not in user.devices:
                raise not_found(f"User {user.user_id} has no device {device_id}")
            failure = self._take_failure("make")
            if failure is not None:
                return {"callId": f"{secrets.token_urlsafe(12)}{next(self._call_ids)}", "userId": user.user_id,
                        "inbound": False, "status": TERMINATED, "event": "FAILED", "eventDescription": failure,
                        "duration": 0, "deviceIds": [device_id], "actions": []}
            call = self.outgoing_call(user.user_id, destination, device_id=device_id)
            return self.state_view(call)

    def act(self, user: User, action: str, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call-control action, after the token and the call's allowed actions are checked."""
        with self.lock:
            call = self.calls.get(call_id)
            if call is None or call.user_id != user.user_id or not call.live:
                raise not_found(f"User {user.user_id} has no call {call_id}")
            if action not in ACTIONS:
                raise not_found(f"No call control action {action!r}")
            _check_token(call, body.get("stateToken"), "stateToken", self.mismatch_status)
            if ACTION_NAMES[action] not in self.actions(call):
                raise bad_request(f"{action} is not possible on call {call_id} ({call.status})", "ACTION_NOT_ALLOWED")
            failure = self._take_failure(action)
            if failure is not None:  # the spec's refusal: a 200, the call as it is, and why
                return {**self.state_view(call), "event": "FAILED", "eventDescription": failure}
            ACTIONS[action](self, call, body)
            call.history.append(action)
            if call.user_id != user.user_id:
                # Transferred to another user: the call is theirs now, the acting user's leg has ended.
                return {**self.state_view(call), "userId": user.user_id, "status": TERMINATED, "actions": []}
            if call.live:
                call.state_token = next(self._tokens)
            return self.state_view(call)

    def actions(self, call: Call) -> list[str]:
        others = [c for c in self.calls.values() if c.user_id == call.user_id and c.live and c is not call]
        if call.taken_by:
            return ["TERMINATE"]  # a voicemail or a queue has it
        if call.status == RINGING:
            return ["ANSWER", "PICKUP", "SINGLE_STEP_TRANSFER", "TERMINATE"]
        if call.status == ALERTING:
            return ["TERMINATE"]
        if call.status == PARKED:
            return ["PICKUP", "TERMINATE"]
        if call.status == ACTIVE:
            names = ["HOLD", "PARK", "UNMUTE" if call.muted else "MUTE", "DTMF"]
        else:
            names = ["RESUME", "PARK"]
        names += ["MOVE", "SINGLE_STEP_TRANSFER", "TERMINATE"]
        if others:
            names += ["TRANSFER", "CONFERENCE_ADD"]
        if call.status == HELD and any(c.status == ACTIVE for c in others):
            names.append("ALTERNATE")
        if call.conference:
            names += ["CONFERENCE_LEAVE", "CONFERENCE_REMOVE"]
        return names

    def state_view(self, call: Call) -> dict[str, Any]:
        view = {
            "stateToken": call.state_token, "callId": call.call_id, "userId": call.user_id,
            "remoteParty": call.remote.view(), "participants": list(call.participants),
            "conference": call.conference, "inbound": call.inbound, "status": call.status_name or call.status,
            "duration": int(time.time() - (call.answered or call.created)), "deviceIds": self._device_ids(call),
            "actions": [{"action": name, "deviceIds": [call.device_id]} for name in self.actions(call)],
            "muted": call.muted,
        }
        if call.dialled:
            user = self.users[call.user_id]
            view["historyInfo"] = {
                "subject": "Main Switchboard number", "campOn": False,
                "initialParty": _party(call.dialled).view(),
                "previousParty": Party(user.user_id, "USER_ID", f"tel:{user.number}" if user.number else "",
                                       user.display_name, user.number).view(),
                "previousRetargetReason": "FORWARDED",
            }
        return view

    def _device_ids(self, call: Call) -> list[str]:
        if call.branches and call.status == RINGING:
            return [b.device_id for b in call.live_branches()]
        return [call.device_id]

    def _take_failure(self, action: str) -> str | None:
        for rule in list(self.failures):
            if rule.action in (None, action):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.failures.remove(rule)
                return rule.description
        return None

    # --- action effects (each after the checks in act) -------------------------------------------

    def _answer(self, call: Call, body: dict[str, Any]) -> None:
        device = body.get("deviceId")
        if device is not None and device not in self.users[call.user_id].devices:
            raise not_found(f"User {call.user_id} has no device {device}")
        if device:
            call.device_id = device
        self._connect(call)

    def _hold(self, call: Call, body: dict[str, Any]) -> None:
        call.status = HELD

    def _resume(self, call: Call, body: dict[str, Any]) -> None:
        self._alternate(call, body)  # one active call per user: the one talking now is held

    def _alternate(self, call: Call, body: dict[str, Any]) -> None:
        for other in self.calls.values():
            if other.user_id == call.user_id and other.live and other.status == ACTIVE:
                other.status = HELD
                other.state_token = next(self._tokens)
        call.status = ACTIVE

    def _park(self, call: Call, body: dict[str, Any]) -> None:
        call.status = PARKED

    def _pickup(self, call: Call, body: dict[str, Any]) -> None:
        if call.status == RINGING:
            self._answer(call, body)
        else:
            call.status = ACTIVE

    def _mute(self, call: Call, body: dict[str, Any]) -> None:
        call.muted = True

    def _unmute(self, call: Call, body: dict[str, Any]) -> None:
        call.muted = False

    def _move(self, call: Call, body: dict[str, Any]) -> None:
        device = body.get("deviceId")
        if not device:
            raise bad_request("deviceId is required")
        if device not in self.users[call.user_id].devices:
            raise not_found(f"User {call.user_id} has no device {device}")
        if call.branches and device != call.device_id:
            # A forked call moves as a new branch: it is set up and answered before the old one ends.
            old = self._live_branch(call, call.device_id)
            branch = Branch(secrets.token_hex(4), device)
            call.branches.append(branch)
            self._webhook(call, "EARLY", branch)
            branch.state, branch.confirmed = "CONFIRMED", True
            self._webhook(call, "CONFIRMED", branch)
            self._end_branch(call, old, "HANGUP")
        call.device_id = device

    def _single_step_transfer(self, call: Call, body: dict[str, Any]) -> None:
        destination = _uri(body.get("destination"), "destination")
        transfer_type = body.get("type", "BASIC")
        if transfer_type not in TRANSFER_TYPES:
            raise bad_request(f"type must be one of {', '.join(TRANSFER_TYPES)}")
        blind = body.get("blind", False)
        if not isinstance(blind, bool):
            raise bad_request("blind must be a boolean")
        call.transfers.append({"destination": destination, "type": transfer_type, "blind": blind})
        call.status = ACTIVE if call.status == HELD else call.status  # "automatically unheld"
        if blind:
            self._terminate(call, "HANGUP")
            target = self._user_reached_by(call.domain, destination)
            if target is not None and target.user_id != call.user_id:
                self._ring_transfer_target(call, target)

    def _user_reached_by(self, domain: str, destination: str) -> User | None:
        """The user of ``domain`` a transfer's destination names: their number (tel:) or their userId (sip:)."""
        address = destination.split(":", 1)[1].split(";", 1)[0]
        for user in self.users.values():
            if user.domain == domain and address in (user.number, user.user_id) and user.devices:
                return user
        return None

    def _ring_transfer_target(self, call: Call, target: User) -> None:
        """The call, transferred to another user, rings them under the same ``call_id``: the first user's leg
        has ended (TERMINATED above), the target's begins (EARLY), its messages numbered on from the first's."""
        call.user_id, call.status, call.device_id = target.user_id, RINGING, next(iter(target.devices))
        call.branch_id, call.branches, call.taken_by = secrets.token_hex(4), [], None
        call.answered, call.termination_reason, call.inbound = None, None, True
        call.state_token = next(self._tokens)
        self._webhook(call, "EARLY")

    def _target(self, call: Call, body: dict[str, Any]) -> Call:
        target_id = body.get("targetCallId")
        if not isinstance(target_id, str) or not target_id:
            raise bad_request("targetCallId is required")
        target = self.calls.get(target_id)
        if target is None or target.user_id != call.user_id or not target.live or target is call:
            raise not_found(f"User {call.user_id} has no other call {target_id}")
        _check_token(target, body.get("targetStateToken"), "targetStateToken", self.mismatch_status)
        return target

    def _transfer(self, call: Call, body: dict[str, Any]) -> None:
        target = self._target(call, body)
        call.transfers.append({"targetCallId": target.call_id})
        # The two far ends now talk to each other; both of the user's legs clear.
        self._terminate(target, "HANGUP")
        self._terminate(call, "HANGUP")

    def _dtmf(self, call: Call, body: dict[str, Any]) -> None:
        digits = body.get("digits")
        if not isinstance(digits, str) or not digits or any(ch not in "0123456789*#ABCDabcd" for ch in digits):
            raise bad_request("digits must be DTMF digits (0-9, *, #, A-D)")
        call.dtmfs.append(digits)

    def _conference_add(self, call: Call, body: dict[str, Any]) -> None:
        target = self._target(call, body)
        for leg in (call, target):
            leg.conference = True
            leg.status = ACTIVE
        participants = [{"id": leg.call_id, "remoteParty": leg.remote.view()} for leg in (call, target)]
        call.participants = target.participants = participants
        target.state_token = next(self._tokens)

    def _conference_leave(self, call: Call, body: dict[str, Any]) -> None:
        self._terminate(call, "HANGUP")

    def _conference_remove(self, call: Call, body: dict[str, Any]) -> None:
        participant = body.get("participantId")
        if participant not in [p["id"] for p in call.participants]:
            raise not_found(f"No participant {participant!r} in the conference of call {call.call_id}")
        call.participants = [p for p in call.participants if p["id"] != participant]
        removed = self.calls.get(participant)
        if removed is not None and removed.live and removed is not call:
            self._terminate(removed, "HANGUP")

    def _terminate_action(self, call: Call, body: dict[str, Any]) -> None:
        self._terminate(call, "REJECTED" if call.status == RINGING else "HANGUP")

    # --- state changes and their webhooks ---------------------------------------------------------

    def _new_call(self, user: User, inbound: bool, remote: Party, status: str, device: str) -> Call:
        call_id = f"{secrets.token_urlsafe(12)}{next(self._call_ids)}"
        call = Call(call_id, user.user_id, user.domain, inbound, remote, status, device, next(self._tokens))
        self.calls[call_id] = call
        return call

    def _connect(self, call: Call) -> None:
        call.status = ACTIVE
        call.answered = time.time()
        call.state_token = next(self._tokens)
        if not call.branches:
            self._webhook(call, "CONFIRMED")
            return
        # The device that answers first, then every other device stops ringing (SIP forking).
        answering = self._live_branch(call, call.device_id)
        answering.state, answering.confirmed = "CONFIRMED", True
        self._webhook(call, "CONFIRMED", answering)
        for other in call.live_branches():
            if other is not answering:
                self._end_branch(call, other, "ANSWERED_ELSEWHERE")

    def _terminate(self, call: Call, reason: str) -> None:
        call.status = TERMINATED
        call.termination_reason = reason
        if not call.branches:
            self._webhook(call, "TERMINATED")
            return
        # Devices still ringing are cancelled (or all rejected); the one that has the call ends last.
        for branch in sorted(call.live_branches(), key=lambda b: b.confirmed):
            ringing_reason = reason if reason in ("CANCELLED", "REJECTED") else "CANCELLED"
            self._end_branch(call, branch, reason if branch.confirmed else ringing_reason)

    def _live_branch(self, call: Call, device_id: str) -> Branch:
        for branch in call.live_branches():
            if branch.device_id == device_id:
                return branch
        raise TelepoError(409, "INVALID_STATE", f"device {device_id} has no branch of call {call.call_id}")

    def _end_branch(self, call: Call, branch: Branch, reason: str) -> None:
        branch.state = TERMINATED
        self._webhook(call, "TERMINATED", branch, reason)

    def _webhook(self, call: Call, state: str, branch: Branch | None = None, reason: str | None = None) -> None:
        call.seq += 1
        user = self.users[call.user_id]
        device = branch.device_id if branch is not None else call.device_id
        message = {
            "seq_num": call.seq, "call_id": call.call_id,
            "branch_id": branch.branch_id if branch is not None else call.branch_id, "timestamp": now_stamp(),
            "state": state, "direction": "INCOMING" if call.inbound else "OUTGOING",
            "local_email": user.email, "local_user_id": user.user_id, "local_number": user.number,
            "device_type": user.devices.get(device, "SOFT"), "remote_email": call.remote.email,
            "remote_user_id": call.remote.party_id if call.remote.type == "USER_ID" else "",
            "remote_number": call.remote.display_number,
        }
        if state == "TERMINATED":
            message["termination-reason"] = reason or call.termination_reason
        message = self._rename(message)
        self.sent.append(message)
        for copy in self._apply_rules(message):
            self.pending.append({"domain": call.domain, "body": copy})

    def _rename(self, message: dict[str, Any]) -> dict[str, Any]:
        for rule in list(self.rules):
            if rule.kind == "rename" and rule.state in (None, message["state"]) and rule.key in message:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                return {**message, rule.key: rule.to}
        return message

    def _apply_rules(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        for rule in list(self.rules):
            if rule.kind == "rename":
                continue
            if rule.state in (None, message["state"]):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                if rule.kind == "drop":
                    self.deliveries.append({"body": message, "status": None, "dropped": True})
                    return []
                return [message, dict(message)]
        return [message]

    # --- webhook controls --------------------------------------------------------------------------

    def hold_webhooks(self) -> None:
        with self.lock:
            self.held = True

    def release_webhooks(self, order: str = "fifo", seed: int | None = None) -> int:
        """Send what was held: in order, reversed, or shuffled (``seed`` makes it repeatable)."""
        with self.lock:
            if order == "reverse":
                self.pending.reverse()
            elif order == "shuffle":
                random.Random(seed).shuffle(self.pending)
            elif order != "fifo":
                raise ValueError("order must be fifo, reverse or shuffle")
            self.held = False
            return len(self.pending)

    def set_mismatch_status(self, status: int) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError("status must be a 4xx HTTP status")
        with self.lock:
            self.mismatch_status = status

    def set_stamp_style(self, style: str) -> None:
        if style not in STAMP_STYLES:
            raise ValueError(f"style must be one of {', '.join(STAMP_STYLES)}")
        with self.lock:
            self.stamp_style = style

    def set_pace(self, seconds: float) -> None:
        if not 0 <= seconds <= 10:
            raise ValueError("pace must be between 0 and 10 seconds")
        with self.lock:
            self.pace = seconds

    def add_rule(self, kind: str, count: int = 1, state: str | None = None, *, to: Any = None,
                 field: str = "state") -> WebhookRule:
        if kind not in ("drop", "duplicate", "rename") or count < 1:
            raise ValueError("a rule drops, duplicates or renames at least one message")
        if kind == "rename" and field not in RENAMABLE:
            raise ValueError(f"a rename changes one of {', '.join(RENAMABLE)}")
        with self.lock:
            rule = WebhookRule(kind, count, state, to, field)
            self.rules.append(rule)
            return rule

    def resend(self, call_id: str, seq_num: int, shift_seconds: float = 0.0) -> dict[str, Any]:
        """Queue an already sent message again (a redelivery).

        ``shift_seconds`` moves its ``timestamp``: a test that ages a call in
        ctihub's database by a day replays its messages as old as the call
        (``-86400``), or as restamped by the sender (``0``).
        """
        with self.lock:
            for message in self.sent:
                if message["call_id"] == call_id and message["seq_num"] == seq_num:
                    body = dict(message)
                    if shift_seconds:
                        body["timestamp"] = shift_stamp(body["timestamp"], shift_seconds)
                    self.pending.append({"domain": self.call(call_id).domain, "body": body})
                    return body
        raise KeyError(f"no message {seq_num} for call {call_id}")

    def take_pending(self) -> list[tuple[str | None, dict[str, Any]]]:
        with self.lock:
            if self.held:
                return []
            taken, self.pending = self.pending, []
            return [(self.webhook_urls.get(item["domain"]), self._styled(item["body"])) for item in taken]

    def _styled(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.stamp_style == "spec" or not isinstance(body.get("timestamp"), str):
            return body
        try:
            at = datetime.strptime(body["timestamp"], STAMP_FORMAT)
        except ValueError:  # a test's own value (a rename): sent as it is
            return body
        return {**body, "timestamp": STAMP_STYLES[self.stamp_style](at)}

    def record_delivery(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.deliveries.append(entry)

    # --- views --------------------------------------------------------------------------------------

    def log_request(self, method: str, path: str, headers: dict[str, str], body: str) -> dict[str, Any]:
        with self.lock:
            entry = {"seq": next(self._request_seq), "time": time.time(), "method": method, "path": path,
                     "headers": headers, "body": body, "status": None}
            self.requests.append(entry)
            return entry

    def requests_since(self, seq: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e) for e in self.requests if e["seq"] > seq]

    def call(self, call_id: str) -> Call:
        with self.lock:
            call = self.calls.get(call_id)
        if call is None:
            raise KeyError(f"no call {call_id!r}")
        return call

    def user(self, user_id: str) -> User:
        with self.lock:
            user = self.users.get(user_id)
        if user is None:
            raise KeyError(f"no user {user_id!r}")
        return user

    def call_view(self, call: Call) -> dict[str, Any]:
        with self.lock:
            return {**self.state_view(call), "seq": call.seq, "terminationReason": call.termination_reason,
                    "dtmfs": list(call.dtmfs), "transfers": list(call.transfers), "history": list(call.history),
                    "branches": [{"branchId": b.branch_id, "deviceId": b.device_id, "state": b.state}
                                 for b in call.branches], "takenBy": call.taken_by}


ACTIONS = {
    "answer": TelepoWorld._answer,
    "hold": TelepoWorld._hold,
    "resume": TelepoWorld._resume,
    "alternate": TelepoWorld._alternate,
    "park": TelepoWorld._park,
    "pickup": TelepoWorld._pickup,
    "mute": TelepoWorld._mute,
    "unmute": TelepoWorld._unmute,
    "move": TelepoWorld._move,
    "singlesteptransfer": TelepoWorld._single_step_transfer,
    "transfer": TelepoWorld._transfer,
    "dtmf": TelepoWorld._dtmf,
    "conferenceadd": TelepoWorld._conference_add,
    "conferenceleave": TelepoWorld._conference_leave,
    "conferenceremove": TelepoWorld._conference_remove,
    "terminate": TelepoWorld._terminate_action,
}


# The path's action and the name the call's ``actions`` list it under.
ACTION_NAMES = {path: path.upper() for path in ACTIONS} | {
    "singlesteptransfer": "SINGLE_STEP_TRANSFER", "dtmf": "DTMF", "conferenceadd": "CONFERENCE_ADD",
    "conferenceleave": "CONFERENCE_LEAVE", "conferenceremove": "CONFERENCE_REMOVE",
}


def _party(number: str, display_name: str = "", user_id: str = "", email: str = "") -> Party:
    tel = number if number.startswith("tel:") else (f"tel:{number}" if number else "")
    return Party(party_id=user_id or tel, type="USER_ID" if user_id else "TEL_URI", tel_uri=tel,
                 display_name=display_name, display_number=number.removeprefix("tel:"), email=email)


def _uri(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.startswith(("tel:", "sip:", "sips:")) or len(value) < 5:
        raise bad_request(f"{name} must be a SIP or tel URI")
    if value.startswith("tel:") and not (value[4:].startswith("+") or ";phone-context=" in value):
        raise bad_request(f"{name}: a tel URI is global (+E.164) or has a phone-context")
    return value


def _check_token(call: Call, token: Any, name: str, status: int = 409) -> None:
    if token is None:
        return
    if isinstance(token, bool) or not isinstance(token, int):
        raise bad_request(f"{name} must be an integer")
    if token != call.state_token:
        raise TelepoError(status, "STATE_TOKEN_MISMATCH",
                          f"{name} {token} does not match the state of call {call.call_id} ({call.state_token})")
