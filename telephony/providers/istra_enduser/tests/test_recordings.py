"""Voicemail as a missed call's recording: which calls may have one, asked for each call of every upload."""

from __future__ import annotations

import pytest

from telephony.models import Call, PbxAccount
from telephony.providers.istra_enduser.recordings import VoicemailAudioSource
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db


def missed_call(agent):
    return make_call(make_account(kind=PbxAccount.Kind.ISTRA_MYCRM), agent=agent, state=Call.State.ENDED,
                     direction=Call.Direction.INBOUND, remote_number_e164="+33612345678")


def test_it_looks_up_an_agents_end_user_accounts_once_yet_sees_a_new_one_at_once(django_assert_num_queries):
    agent = make_agent(extension_code="144")
    call, source = missed_call(agent), VoicemailAudioSource()
    assert not source.may_get_audio(call)  # the agent has no End User account yet
    with django_assert_num_queries(0):  # an upload's other missed calls of the same agent
        assert not source.may_get_audio(call)
    make_terminal(make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER), agent=agent)  # the admin adds one
    assert source.may_get_audio(call)
    with django_assert_num_queries(0):
        assert source.may_get_audio(call)


def test_it_expects_no_voicemail_for_an_answered_or_outgoing_call_or_one_of_a_disabled_account():
    agent = make_agent(extension_code="145")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER)
    make_terminal(enduser, agent=agent)
    source = VoicemailAudioSource()
    answered = missed_call(agent)
    answered.answered_at = answered.created_at
    outgoing = missed_call(agent)
    outgoing.direction = Call.Direction.OUTBOUND
    assert not source.may_get_audio(answered) and not source.may_get_audio(outgoing)
    enduser.enabled = False
    enduser.save()
    assert not source.may_get_audio(missed_call(agent))
