"""A refused Istra login is sent once: nothing logs in with the account until an admin saves it or a cool-down passes.

Istra suspends an account "in case of too many failures in a row" (myIstra doc, Istra Password Policy). These
tests drive every REST user of an account (listener, call-history backfill, voicemail view, recordUrl check,
caller-ID, myRCC line pulls) through the real providers against the simulator, which here suspends a user
after three wrong passwords in a row (``lockoutAfter``), as a real platform might.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from telephony import control
from telephony.models import Call, PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ListenerSpec, ProviderError
from telephony.providers.istra_enduser import callerid
from telephony.providers.istra_enduser.recordings import VoicemailAudioSource
from telephony.providers.istra_enduser.tasks import backfill_account_task
from telephony.providers.istra_myrcc.tasks import pull_lines_task
from tests.factories import make_account, make_agent, make_call, make_terminal
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

TERMINAL = "5985841581756135023"
SHOP = "+33412345670"
AGENT_PASSWORD = "agent-pass-123"


@pytest.fixture
def platform(sim, monkeypatch):
    world = sim.state.istra
    world.add_user("chatfield", "0000", enterprise="e1")
    world.add_extension(TERMINAL, "144", label="Desk", owner="chatfield")
    world.configure(lockout_after=3)
    # A caller-ID restore is queued only after a success; nothing reaches a broker here.
    monkeypatch.setattr("telephony.providers.istra_enduser.tasks.enqueue", lambda *args, **kwargs: None)
    yield world
    control.forget_providers()


@pytest.fixture
def enduser(sim, platform):
    """chatfield's End User account, typed with a wrong password, and a missed call of chatfield's."""
    agent = make_agent("chatfield")
    account = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0001")
    terminal = make_terminal(account, pbx_id=TERMINAL, agent=agent, label="Desk")
    return account, terminal


def logins(world) -> list[int]:
    """The status of every Login the simulated platform received, in order."""
    return [e["status"] for e in world.requests_received() if e["path"].endswith("/v1/service/Login")]


def refuse_the_listener(account: PbxAccount) -> ProviderError:
    provider = provider_for(account)
    with pytest.raises(ProviderError) as refused:
        provider.open_stream(ListenerSpec(name="ctihub-MixedLogs"))
    provider.close()
    assert refused.value.permanent
    return refused.value


def test_it_sends_one_login_in_all_after_a_refusal(platform, enduser):
    account, terminal = enduser
    refusal = refuse_the_listener(account)
    assert "check the login and password" in str(refusal)

    backfill = backfill_account_task(account.pk)
    client = Client()
    assert client.login(username="chatfield", password=AGENT_PASSWORD)
    [box] = client.get("/enduser/voicemails/").json()["boxes"]
    missed = make_call(account, terminal=terminal, agent=terminal.agent, state=Call.State.ENDED,
                       remote_number_e164="+33612345678", ended_at=timezone.now())
    try:  # what crm_sync's recordUrl check asks (it takes an error for "no audio")
        has_audio = VoicemailAudioSource().has_audio(missed)
    except ProviderError:
        has_audio = False
    presented = callerid.present_external_phone(terminal, SHOP)

    assert logins(platform) == [401]
    assert "no login sent" in backfill["error"] and "no login sent" in box["error"]
    assert (has_audio, presented) == (False, False)
    assert not platform.directory.users["chatfield"].locked
    account.refresh_from_db()
    assert account.login_refused_at is not None
    assert account.login_refused_reason == str(refusal)


def test_it_says_why_and_until_when_without_sending_the_login(platform, enduser, settings):
    settings.ISTRA_LOGIN_COOLDOWN_SECONDS = 600
    account, _ = enduser
    refuse_the_listener(account)
    refused_at = PbxAccount.objects.get(pk=account.pk).login_refused_at
    with pytest.raises(ProviderError) as held:
        provider_for(account).test_connection()
    message = str(held.value)
    assert held.value.permanent
    assert "refused at" in message and "check the login and password" in message
    assert timezone.localtime(refused_at + timedelta(seconds=600)).strftime("%H:%M:%S") in message
    assert "saves the account" in message
    assert logins(platform) == [401]


def test_it_tries_once_more_after_the_cool_down_and_then_holds_again(platform, enduser, settings):
    settings.ISTRA_LOGIN_COOLDOWN_SECONDS = 60
    account, _ = enduser
    refuse_the_listener(account)
    PbxAccount.objects.filter(pk=account.pk).update(login_refused_at=timezone.now() - timedelta(seconds=61))
    assert "check the login and password" in backfill_account_task(account.pk)["error"]  # tried, refused
    assert "no login sent" in backfill_account_task(account.pk)["error"]  # a new cool-down
    assert logins(platform) == [401, 401]


def test_it_lifts_the_refusal_when_a_login_after_the_cool_down_works(platform, enduser, settings):
    settings.ISTRA_LOGIN_COOLDOWN_SECONDS = 60
    account, _ = enduser
    refuse_the_listener(account)
    platform.directory.users["chatfield"].password = "0001"  # the Istra admin set what ctihub has
    PbxAccount.objects.filter(pk=account.pk).update(login_refused_at=timezone.now() - timedelta(seconds=61))
    assert "error" not in backfill_account_task(account.pk)
    account.refresh_from_db()
    assert (account.login_refused_at, account.login_refused_reason) == (None, "")
    assert logins(platform) == [401, 200]


def test_it_logs_in_again_once_an_admin_saved_the_account(platform, enduser, admin_client):
    account, _ = enduser
    refuse_the_listener(account)
    backfill_account_task(account.pk)
    form = {
        "name": account.name, "kind": account.kind, "enabled": "on", "base_url": account.base_url, "ws_url": "",
        "enterprise": "", "login": account.login, "ca_bundle": "", "default_region": "", "password": "0000",
        "api_token": "", "webhook_secret": "", "terminals-TOTAL_FORMS": "0", "terminals-INITIAL_FORMS": "0",
        "listeners-TOTAL_FORMS": "0", "listeners-INITIAL_FORMS": "0",
    }
    saved = admin_client.post(reverse("admin:telephony_pbxaccount_change", args=[account.pk]), form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert "error" not in backfill_account_task(account.pk)
    assert logins(platform) == [401, 200]  # the right password, on an account never suspended
    assert PbxAccount.objects.get(pk=account.pk).login_refused_at is None


def test_it_holds_only_the_refused_credentials(platform, enduser):
    account, _ = enduser
    refuse_the_listener(account)
    account.password = "0000"  # saved outside the admin: the refusal stays, but it was about "0001"
    account.save()
    assert provider_for(PbxAccount.objects.get(pk=account.pk)).test_connection() == "Desk (e1): 1 terminal"
    assert logins(platform) == [401, 200]
    assert PbxAccount.objects.get(pk=account.pk).login_refused_at is None


def test_it_holds_the_myrcc_line_pulls_after_a_refused_login(sim, platform):
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=sim.istra_base, login="chatfield",
                           password="0001", enterprise="e1")
    make_call(account, pbx_call_id="-5", state=Call.State.TALKING)  # live here, missing from the PBX's list
    with pytest.raises(ProviderError):
        provider_for(account).test_connection()
    for attempt in range(3):
        assert "no login sent" in pull_lines_task(account.pk, ["-5"], attempt)["error"]
    assert logins(platform) == [401]


def test_it_reads_the_refusal_where_the_caller_says_and_still_holds_the_login(platform, enduser):
    # A listener's runner has the read made on the supervisor's database threads (issue 19): same answer.
    from telephony.providers.base import database_work_on

    account, _ = enduser
    refuse_the_listener(account)
    reads = []

    def on_database_threads(operation):
        reads.append(operation)
        return operation()

    with database_work_on(on_database_threads):
        held = refuse_the_listener(account)
    assert "no login sent" in str(held) and len(reads) == 1
    assert logins(platform) == [401]
