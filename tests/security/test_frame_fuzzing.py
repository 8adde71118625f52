"""Every provider's frame parsers, fuzzed: any input is a parsed update or a clear rejection.

``ListenerRunner._handle_frame`` catches only ``FrameRejected``; anything else a
parser raises is logged as a crash and costs the socket a reconnect. So for
each parser we feed (1) the providers' own fixture frames with values mutated
(other types, empty, huge, deleted and added keys), (2) arbitrary JSON and (3)
arbitrary text, and accept only the documented outcomes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.providers import provider_class
from telephony.providers.base import ListenerSpec
from telephony.updates import CallUpdate, FrameRejected
from tests.support.recorded import PROVIDERS_DIR, fixtures_dir, recorded

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixtures_of(kind: str, names: list[str]) -> list:
    return [recorded(kind, name) for name in names if (fixtures_dir(kind) / name).exists()]


# --- strategies ------------------------------------------------------------------------------

# Values a PBX plausibly sends, and the edges of them: digit strings (non-ASCII
# digits, huge ones, past a BIGINT), signed numbers, URIs, times, NUL, lone surrogates.
EDGE_VALUES = [
    "", " ", "true", "false", "0", "-1", "1e3", "٣", "²", "9" * 19, "9" * 20, "9" * 30, "9" * 5000,
    "253402300800", "99999999999999", "+33412345670", "x" * 300, "a\x00b", "\ud800", "\x00",
    "tel:+46277464", "tel:", "tel:" + "1" * 60, "v1/rcc/Extension/", "v1/rcc/Extension/1/2", "v1/rcc/CallLine/",
    "v1/rcc/CallLine/" + "7" * 250, "v1/logs/Phone/bean/", "2018-02-02T12:34:57.699+0000", "2018-02-30T12:34:57+0000",
    "0001-01-01T00:00:00+0100", "9999-12-31T23:59:59-2359", "Z", "callRinging", "callAlerting", "callDropped",
    "ringing", "dropped", "talking", "TERMINATED", "CONFIRMED", "HANGUP", "INCOMING", "OUTGOING", "RINGING", "HELD",
    "action: TRANSFER", "v1/data/RestletApiSessionCounters",
    -1, 2**63, 2**64, 10**20, 1.5, -0.0, [], {}, ["HELD"], {"action": {"x": 1}},
]
edge = st.sampled_from(EDGE_VALUES)
scalars = st.one_of(
    edge, edge, edge, edge,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.text(alphabet="0123456789", min_size=1, max_size=25),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw, base):
    """A deep copy of ``base`` with a few values replaced, keys deleted or added, anywhere in it."""
    doc = copy.deepcopy(base)
    containers = []

    def walk(node):
        if isinstance(node, dict):
            containers.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            containers.append(node)
            for value in node:
                walk(value)

    walk(doc)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not containers:
            break
        node = draw(st.sampled_from(containers))
        if isinstance(node, dict):
            keys = list(node)
            action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"] if keys else ["add"]))
            if action == "replace":
                node[draw(st.sampled_from(keys))] = draw(json_values)
            elif action == "delete":
                node.pop(draw(st.sampled_from(keys)), None)
            else:
                node[draw(st.text(max_size=12))] = draw(json_values)
        elif node:
            node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
        else:
            node.append(draw(json_values))
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # now and then, not even the right shape
    return doc


def frames_like(bases: list):
    """Text frames: mutated fixtures (as JSON), arbitrary JSON, and arbitrary text."""
    as_json = st.sampled_from(bases).flatmap(mutated).map(lambda doc: json.dumps(doc))
    return st.one_of(
        as_json, as_json, as_json,
        json_values.map(json.dumps),
        st.text(max_size=200),
        st.sampled_from(["", "null", "[]", "{}", "[" * 5000, '{"item":' * 3000, "1" * 5000, "\ud800"]),
    )


def assert_updates(result):
    assert isinstance(result, list), f"a parser answered {type(result).__name__}, not a list"
    for update in result:
        assert isinstance(update, CallUpdate), f"a parser answered a list holding {type(update).__name__}"


def parsed_or_rejected(parse, text):
    try:
        result = parse(text)
    except FrameRejected:
        return None
    return result


def provider(kind: str):
    account = SimpleNamespace(pk=7, id=7, kind=kind, base_url="http://127.0.0.1:9/restletrouter", default_region="FR")
    return provider_class(kind)(account)


# --- myCrm ---------------------------------------------------------------------------------

MYCRM_FRAMES = fixtures_of("istra_mycrm", ["event_call_ringing.json", "event_call_talking.json",
                                           "event_call_dropped.json"])


@FUZZ
@given(text=frames_like(MYCRM_FRAMES))
def test_it_reads_any_mycrm_frame_as_updates_or_a_rejection(text):
    mycrm = provider("istra_mycrm")
    spec = ListenerSpec(name="CallLines", terminal_pbx_id="897778778")
    result = parsed_or_rejected(lambda t: mycrm.parse_frame(t, spec), text)
    if result is not None:
        assert_updates(result)


# --- myRCC ---------------------------------------------------------------------------------

MYRCC_FRAMES = fixtures_of("istra_myrcc", [
    "frame_5499_talking.json", "frame_5499_held.json", "frame_5499_dropped.json", "frame_5499_unheld.json",
    "frame_monitoring_talking.json", "call_lines_list.json",
])


@FUZZ
@given(text=frames_like(MYRCC_FRAMES))
def test_it_reads_any_myrcc_frame_as_updates_or_a_rejection(text):
    myrcc = provider("istra_myrcc")
    result = parsed_or_rejected(lambda t: myrcc.parse_frame(t, ListenerSpec(name="CallLines")), text)
    if result is not None:
        assert_updates(result)


# --- End User API (myIstra) -----------------------------------------------------------------

ENDUSER_DIR = PROVIDERS_DIR / "istra_enduser"
needs_enduser = pytest.mark.skipif(not ENDUSER_DIR.exists(), reason="the End User provider is not there")
ENDUSER_FRAMES = fixtures_of("istra_enduser", ["notification_frame.json", "notifications_snapshot.json"]) if (
    ENDUSER_DIR.exists()) else [{}]


@needs_enduser
@FUZZ
@given(text=frames_like(ENDUSER_FRAMES))
def test_it_reads_any_enduser_notification_frame_as_counters_or_a_rejection(text):
    from unittest import mock

    enduser = provider("istra_enduser")
    with mock.patch("telephony.providers.istra_enduser.console.publish_counters") as published:
        result = parsed_or_rejected(lambda t: enduser.parse_frame(t, ListenerSpec(name="MixedLogsL")), text)
    if result is not None:
        assert_updates(result)
        for call in published.call_args_list:
            counters = call.args[1]
            assert all(isinstance(v, int) and v >= 0 for v in vars(counters).values())


def _history_and_voicemail_items():
    items = []
    for name in ("call_history.json", "voicemail_list.json"):
        if (fixtures_dir("istra_enduser") / name).exists():
            items.extend(recorded("istra_enduser", name).get("items", []))
    return items or [{}]


@needs_enduser
@FUZZ
@given(item=st.sampled_from(_history_and_voicemail_items()).flatmap(mutated))
def test_it_reads_any_enduser_history_or_voicemail_item_or_rejects_it(item):
    from telephony.providers.istra_enduser import frames

    # The backfill and the voicemail list read these REST items with the same rules as frames.
    try:
        entry = frames.parse_history_entry(item)
    except FrameRejected:
        pass
    else:
        try:
            assert_updates(frames.history_updates(entry, 7, "144"))
        except FrameRejected:
            pass  # e.g. a NUL in the entry: the backfill skips it
    try:
        voicemail = frames.parse_voicemail(item)
    except FrameRejected:
        pass
    else:
        json.dumps(voicemail.as_json())


# --- Telepo (webhook bodies and call-state snapshots) ------------------------------------------

TELEPO_DIR = PROVIDERS_DIR / "telepo"
needs_telepo = pytest.mark.skipif(not TELEPO_DIR.exists(), reason="the Telepo provider is not there")
TELEPO_WEBHOOKS = fixtures_of("telepo", ["webhook_terminated_rejected.json"]) if TELEPO_DIR.exists() else [{}]
TELEPO_SNAPSHOTS = fixtures_of("telepo", ["snapshot.json", "transfer_answer.json"]) if TELEPO_DIR.exists() else [{}]


@needs_telepo
@FUZZ
@given(body=st.one_of(frames_like(TELEPO_WEBHOOKS), st.binary(max_size=100)))
def test_it_reads_any_telepo_webhook_body_as_an_update_or_a_rejection(body):
    from telephony.providers.telepo.frames import implied_answer, parse_webhook_body

    try:
        update = parse_webhook_body(body, 7)
    except FrameRejected:
        return
    assert isinstance(update, CallUpdate)
    implied = implied_answer(update)
    assert implied is None or isinstance(implied, CallUpdate)


@needs_telepo
@FUZZ
@given(body=st.sampled_from(TELEPO_SNAPSHOTS).flatmap(mutated))
def test_it_reads_any_telepo_snapshot_as_updates_or_a_rejection(body):
    from telephony.providers.telepo.frames import parse_snapshot

    try:
        result = parse_snapshot(body, 7, "alice@organization.org", datetime.now(UTC))
    except FrameRejected:
        return
    # A snapshot also says which calls it listed and which it skipped (one unreadable call skips alone).
    assert_updates(result.updates)
    assert result.listed >= {update.pbx_call_id for update in result.updates}


# --- what the fuzzing found, pinned ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "[" * 5000,                                        # nesting deeper than the JSON decoder's recursion
    '{"item": [{"event": "callDropped", "callId": "-1", "talkingTime": "' + "9" * 5000 + '"}]}',
])
def test_it_rejects_pathological_istra_frames_instead_of_crashing(text):
    # A frame that parses keeps its item's event (myCrm's drop still ends the call) with the pathological field
    # read as absent; myRCC has no line id here (a callId is myCrm's), so nothing. The first frame parses for none.
    parses = "[" not in text[:1]
    expected = {"istra_mycrm": [("-1", "ended", None)] if parses else None, "istra_myrcc": [] if parses else None}
    for kind, wanted in expected.items():
        try:
            result = provider(kind).parse_frame(text, ListenerSpec(name="CallLines", terminal_pbx_id="1"))
        except FrameRejected:
            assert wanted is None, f"{kind} rejected a frame it should read"
            continue
        assert [(update.pbx_call_id, update.state, update.talking_ms) for update in result] == wanted, kind


# --- and what a parsed update becomes: a row, never a database error ---------------------------

class _Rollback(Exception):
    pass


@pytest.fixture
def stored_account(db):
    from tests.factories import make_account, make_terminal

    account = make_account(kind="istra_myrcc")
    make_terminal(account, pbx_id="897778778")
    return account


@pytest.mark.django_db
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=frames_like(MYRCC_FRAMES + MYCRM_FRAMES + TELEPO_WEBHOOKS))
def test_it_stores_every_update_a_parser_accepts(stored_account, text):
    """A DataError in apply_call_update would stop the socket just as a parser crash would."""
    from django.db import transaction

    from telephony.domain import apply_call_update

    parsers = [
        lambda t: provider("istra_myrcc").parse_frame(t, ListenerSpec(name="CallLines")),
        lambda t: provider("istra_mycrm").parse_frame(t, ListenerSpec(name="CallLines", terminal_pbx_id="1")),
    ]
    if TELEPO_DIR.exists():
        from telephony.providers.telepo.frames import parse_webhook_body

        parsers.append(lambda t: [parse_webhook_body(t, 7)])
    for parse in parsers:
        updates = parsed_or_rejected(parse, text) or []
        try:
            with transaction.atomic():
                for update in updates:
                    apply_call_update(replace(update, account_id=stored_account.pk))
                raise _Rollback
        except _Rollback:
            pass
