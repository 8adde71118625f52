"""Telepo calls on several devices: a call ends with its last branch, and a voicemail is nobody's answer.

Telepo rings every device of a user at once (softphone, desk phone, mobile...) and
may pass an unanswered call on to a voicemail or a queue. Each of these is a
*branch* of the one call, with its own ``branch_id`` and ``device_type``; the CRM
connector webhook reports each branch's dialog states (TRYING ... CONFIRMED,
TERMINATED) under the call's ``call_id`` and its one ``seq_num`` sequence. So:

* a TERMINATED (ANSWERED_ELSEWHERE, CANCELLED, REJECTED, HANGUP) ends its branch,
  and the call only once no other branch is live. The call's end cause is the
  last branch's;
* a branch that was still setting up when another branch answered was cancelled
  by that answer (SIP forking), even while its own TERMINATED is late or lost;
  a branch set up after the answer (a call moved to another device) is live;
* a new branch setting up (TRYING, PROCEEDING, EARLY) on an answered call does
  not take the call back to ringing;
* a CONFIRMED on a VOICEMAIL or QUEUE device is not the agent answering: the call
  keeps its state and ``answered_at`` stays empty. A call that ends so has the end
  cause ``no_answer`` (voicemail: the agent missed it) or ``transferred`` (a queue
  took it), the normalised causes that say so;
* an older snapshot that saw the call answered (ACTIVE, HELD) gives a call held
  as never answered its answer, though the call changed since it was asked
  (``snapshot_answer``);
* a snapshot cannot tell devices apart (its ``deviceIds`` have no type), so its
  ACTIVE for a call only a voicemail or a queue took does not make the agent's
  call answered either;
* an ANSWERED_ELSEWHERE for a call we never saw answered, with messages missing
  before it (a ``seq_num`` gap), may be one ringing device of a call another
  device of the same user answered, whose messages are late or lost: the call is
  left live and the snapshot the gap asks for decides (listed: it goes on;
  absent: it ends, with the cause its last TERMINATED gave).
* an agent's answer (a CONFIRMED, or a TERMINATED HANGUP that implies one) for a
  call we hold as never answered is always taken, however it comes: after the
  call ended (the snapshot's absence ended it while its webhooks lagged, or an
  end that did not say why came first) and below the call's ``last_seq``. It
  gives the call its ``answered_at`` and nothing else (``late_answer``): an
  answered call is never recorded as missed because its messages came late.

Nothing new is stored: a call's branches are read back from its stored webhook
events (their payloads are the messages as Telepo sent them) in the transaction
that applies the next message. Messages without a ``branch_id`` are all one
branch, which is how calls were followed before branches.

A webhook state or snapshot status ctihub does not know (see ``frames``) keeps
the call live in its last known state here, with the raw value in the event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from telephony import updates as u
from telephony.models import Call, CallEvent
from telephony.providers.telepo import frames
from telephony.updates import CallUpdate

# Devices that take a call without the agent: the end cause of a call only they took.
NOT_THE_AGENT = {"VOICEMAIL": u.END_NO_ANSWER, "QUEUE": u.END_TRANSFERRED}
SETTING_UP = ("TRYING", "PROCEEDING", "EARLY")
ANSWERED_STATES = (Call.State.TALKING, Call.State.HELD)


@dataclass
class Branch:
    branch_id: str
    first_seq: int
    last_seq: int = 0
    device_type: str = ""
    state: Any = None  # its newest message's state, as Telepo wrote it
    confirmed_seq: int | None = None  # its CONFIRMED (or the HANGUP that implies one)

    @property
    def ended(self) -> bool:
        return self.state == "TERMINATED"

    @property
    def is_the_agent(self) -> bool:
        return self.device_type not in NOT_THE_AGENT


def branches_of(messages: Iterable[dict]) -> dict[str, Branch]:
    """Each branch as its newest message leaves it; messages without a usable seq_num are left out."""
    by_key: dict[tuple[str, int], dict] = {}
    for message in messages:
        seq = _seq(message.get("seq_num"))
        if seq is not None:
            # Keyed by branch too, in case Telepo numbers each branch's messages on its own.
            by_key[(_branch_id(message), seq)] = message  # the implied answer stored its message twice
    branches: dict[str, Branch] = {}
    for (branch_id, seq), message in sorted(by_key.items(), key=lambda item: item[0][1]):
        branch = branches.setdefault(branch_id, Branch(branch_id, first_seq=seq))
        branch.last_seq, branch.state = seq, message.get("state")
        if message.get("device_type"):
            branch.device_type = str(message["device_type"])[:40]
        if branch.confirmed_seq is None and (message.get("state") == "CONFIRMED" or _ended_by_hangup(message)):
            branch.confirmed_seq = seq
    return branches


def live_branches(branches: dict[str, Branch]) -> list[Branch]:
    answers = [b.confirmed_seq for b in branches.values() if b.confirmed_seq is not None]
    first_answer = min(answers) if answers else None
    return [
        b for b in branches.values()
        if not b.ended and not (b.confirmed_seq is None and first_answer is not None and b.first_seq < first_answer)
    ]


def taken_by(branches: dict[str, Branch]) -> str | None:
    """The VOICEMAIL or QUEUE device that took a call no agent's device answered; None otherwise."""
    answered = sorted((b for b in branches.values() if b.confirmed_seq is not None), key=lambda b: b.confirmed_seq)
    if not answered or any(b.is_the_agent for b in answered):
        return None
    return answered[-1].device_type


# --- the call as stored ------------------------------------------------------------------------

def lock_call(account_id: int, pbx_call_id: str) -> Call | None:
    """The call, locked until the transaction ends (the caller's), with what settling reads."""
    return (Call.objects.select_for_update().filter(account_id=account_id, pbx_call_id=pbx_call_id)
            .only("id", "state", "direction", "answered_at", "last_seq", "updated_at", "external_phone").first())


def stored_messages(call: Call | None) -> list[dict]:
    if call is None or call.pk is None:
        return []
    return list(CallEvent.objects.filter(call_id=call.pk, kind=frames.WEBHOOK_KIND).values_list("payload", flat=True))


def absent_end_cause(call: Call) -> str | None:
    """The end cause of a call the snapshot no longer lists, from its branches: voicemail or queue if only
    they took it, else what its last TERMINATED said; None (the domain's hangup or no_answer) without one."""
    if call.answered_at is not None:
        return None
    messages = stored_messages(call)
    taker = taken_by(branches_of(messages))
    if taker in NOT_THE_AGENT:
        return NOT_THE_AGENT[taker]
    ends = [m for m in messages if m.get("state") == "TERMINATED" and _seq(m.get("seq_num")) is not None]
    if not ends:
        return None
    last = max(ends, key=lambda m: _seq(m.get("seq_num")))
    return frames.end_cause_for(last.get("termination-reason"), call.direction)


# --- settling an update against the call --------------------------------------------------------

def is_an_answer(message: dict) -> bool:
    """True when the message says the agent answered: their device's CONFIRMED, or the HANGUP that implies one."""
    return _is_the_agent(message) and (message.get("state") == "CONFIRMED" or _ended_by_hangup(message))


def late_answer(update: CallUpdate, call: Call | None) -> CallUpdate | None:
    """The answer an agent's message brings to a call held as never answered that has moved past it; else None.

    Past it: the call ended (the snapshot's absence, or a TERMINATED that did not say it was
    answered, got in first), or a newer message came first (``seq`` at or below ``last_seq``:
    the domain drops that as old news). Telepo's webhooks come duplicated, out of order and
    behind its snapshot, so the answer may come last; dropped, the answered call would stay
    missed. What it brings is the answer alone: an ended call stays ended (with the answer's
    time, the domain makes its cause a hangup) and a live one takes it as talking; the message's
    seq counts only when it is the newest.
    """
    if call is None or call.answered_at is not None or not is_an_answer(update.payload):
        return None
    older = update.seq is not None and call.last_seq is not None and update.seq <= call.last_seq
    if call.state != Call.State.ENDED and not older:
        return None  # in its turn: the usual way (below) takes it
    seq = None if older else update.seq
    if call.state == Call.State.ENDED:
        # A HANGUP says it was answered at the latest when it ended: its own time, as implied_answer.
        return replace(update, state=u.ENDED, answered_at=update.occurred_at, end_cause=None, allowed_actions=None,
                       seq=seq)
    if update.state == u.TALKING:
        return replace(update, seq=None)
    return frames.implied_answer(update)  # an older HANGUP of one branch: its answer, the call goes on


def settle_webhook(update: CallUpdate, call: Call | None) -> list[CallUpdate]:
    """The updates one webhook message comes to, in order, for ``call`` (locked; None for a new call)."""
    body = update.payload
    state = body.get("state")
    live = call is not None and call.state != Call.State.ENDED
    answer = late_answer(update, call)
    if answer is not None:
        return [answer]
    if call is not None and call.external_phone and update.external_phone is not None:
        # The number dialled is the call's first (or a snapshot's history): a later message of another
        # device names that device's number (see frames).
        update = replace(update, external_phone=None)
    if frames.unknown_state(update):
        return [_keep(update, call.state if live else None)]
    if state in SETTING_UP:
        # A new branch (the call moved to another device) does not take an answered call back to ringing;
        # without a direction, ringing or dialling is a guess the call's own state beats.
        keep = live and (call.state in ANSWERED_STATES or update.direction is None)
        return [_keep(update, call.state)] if keep else [update]
    if state == "CONFIRMED":
        if not _is_the_agent(body):
            return [_keep(update, call.state if live else None)]
        return [update]
    if state != "TERMINATED":
        return [update]
    implied = None
    if _is_the_agent(body) and (call is None or call.answered_at is None):
        implied = frames.implied_answer(update)
    branches = branches_of([*stored_messages(call), body])
    if live_branches(branches) or (implied is None and _elsewhere_after_a_gap(update, call)):
        # Another device still has the call: this branch's end is recorded, the call goes on.
        kept = _keep(update, u.TALKING if implied else (call.state if live else None))
        return [implied, kept] if implied else [kept]
    answered = implied is not None or (call is not None and call.answered_at is not None)
    ended = replace(update, end_cause=_end_cause(update, branches, answered))
    return [implied, ended] if implied else [ended]


def settle_snapshot(update: CallUpdate, call: Call | None) -> CallUpdate:
    """A snapshot's (or an action answer's) call state, for ``call`` (locked; None for a new call)."""
    live = call is not None and call.state != Call.State.ENDED
    if not live:
        return update  # a new call takes the stand-in; nothing revives an ended one
    if frames.unknown_state(update):
        return replace(update, state=call.state)  # the token and actions are still the PBX's word
    if update.state in ANSWERED_STATES and call.answered_at is None:
        if taken_by(branches_of(stored_messages(call))) in NOT_THE_AGENT:
            return replace(update, state=call.state)
    return update


def snapshot_answer(update: CallUpdate, call: Call | None, fetched_at) -> CallUpdate | None:
    """The answer an older snapshot saw, for a call that changed since it was asked but is held as never
    answered; None when it says nothing of the kind.

    The snapshot's other news is older than the call's (``reconcile.apply_unless_newer``), but "it was
    answered, at the latest when asked" stays true whatever came since, and may be the only word of it
    (a CONFIRMED lost; the call ended as missed by a newer snapshot's absence). The agent's, not a
    voicemail's (``settle_snapshot``). Only the answer: no state token or actions, an ended call
    stays ended, a live one is talking.
    """
    if call is None or call.answered_at is not None or update.state not in ANSWERED_STATES:
        return None
    if frames.unknown_state(update) or taken_by(branches_of(stored_messages(call))) in NOT_THE_AGENT:
        return None
    state = u.ENDED if call.state == Call.State.ENDED else u.TALKING
    return replace(update, state=state, answered_at=fetched_at, state_token=None, allowed_actions=None,
                   end_cause=None)


def _elsewhere_after_a_gap(update: CallUpdate, call: Call | None) -> bool:
    if update.payload.get("termination-reason") != "ANSWERED_ELSEWHERE" or update.seq is None:
        return False
    if call is not None and call.answered_at is not None:
        return False
    return update.seq > ((call.last_seq if call is not None else None) or 0) + 1


def _keep(update: CallUpdate, state: str | None) -> CallUpdate:
    """The update, minus what it says about the call's state: ``state`` (None: a new call's stand-in)."""
    if state is None:
        state = u.DIALING if update.direction == u.OUTBOUND else u.RINGING
        actions = frames.DEFAULT_ACTIONS.get((state, update.direction or u.INBOUND), (u.HANGUP,))
        return replace(update, state=state, allowed_actions=actions, end_cause=None)
    return replace(update, state=state, allowed_actions=None, end_cause=None)


def _end_cause(update: CallUpdate, branches: dict[str, Branch], answered: bool) -> str | None:
    if answered:
        # The cause of an answered call is the answered branch's: a ringing branch ending last
        # (a late cancel) says nothing about it, and the domain makes it a hangup.
        this = branches.get(_branch_id(update.payload))
        return update.end_cause if this is not None and this.confirmed_seq is not None else None
    taker = taken_by(branches)
    if taker in NOT_THE_AGENT:
        return NOT_THE_AGENT[taker]
    return update.end_cause


def _is_the_agent(message: dict) -> bool:
    return str(message.get("device_type")) not in NOT_THE_AGENT


def _ended_by_hangup(message: dict) -> bool:
    # A SIP dialog ends in a hang-up (BYE) only once confirmed (see frames.implied_answer).
    return message.get("state") == "TERMINATED" and message.get("termination-reason") == "HANGUP"


def _branch_id(message: dict) -> str:
    value = message.get("branch_id")
    return str(value) if value not in (None, "") else ""


def _seq(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
