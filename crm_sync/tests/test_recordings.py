"""recordUrl: signed, expiring links to call audio from pluggable sources."""

from __future__ import annotations

import time

import pytest

from crm_sync import recordings
from tests.factories import make_account, make_call

pytestmark = pytest.mark.django_db

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


class FakeSource:
    """Audio for the calls it was given, as a PBX recording store would."""

    name = "fake-recordings"

    def __init__(self, call_ids):
        self.call_ids = set(call_ids)

    def has_audio(self, call):
        return call.pk in self.call_ids

    def open(self, call):
        if call.pk not in self.call_ids:
            return None
        return recordings.Audio(content_type="audio/wav", chunks=[WAV[:6], WAV[6:]], length=len(WAV))


@pytest.fixture
def call(db):
    return make_call(make_account(), state="ended")


@pytest.fixture
def source(call):
    fake = FakeSource([call.pk])
    recordings.register_source(fake)
    yield fake
    recordings.unregister_source(fake.name)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_it_serves_the_audio_with_its_content_type_at_the_signed_url(client, call, source, settings):
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    url = recordings.record_url_for(call)
    assert url.startswith("https://hub.example.com/api/retailcrm/records/")
    response = client.get(url.removeprefix("https://hub.example.com"))
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/wav"
    assert response["Content-Length"] == str(len(WAV))
    assert b"".join(response.streaming_content) == WAV


def test_it_gives_no_record_url_when_no_source_has_audio_for_the_call(call, source):
    other = make_call(call.account, state="ended")
    assert recordings.record_url_for(other) is None


def test_it_refuses_a_tampered_link(client, call, source):
    token = recordings.sign_call(call.pk)
    other = make_call(call.account, state="ended")
    source.call_ids.add(other.pk)
    forged = f"{other.pk}{token[len(str(call.pk)):]}"  # same signature, another call's id
    assert client.get(f"/api/retailcrm/records/{forged}").status_code == 404
    assert client.get(f"/api/retailcrm/records/{token[:-2]}xx").status_code == 404
    assert client.get(f"/api/retailcrm/records/{token}").status_code == 200


def test_it_refuses_an_expired_link(client, call, source, settings, monkeypatch):
    settings.RETAILCRM_RECORD_URL_MAX_AGE_DAYS = 1
    signed_at = time.time() - 86400 - 5
    monkeypatch.setattr("django.core.signing.time.time", lambda: signed_at)
    token = recordings.sign_call(call.pk)
    monkeypatch.undo()
    assert recordings.call_id_from_token(token) is None
    assert client.get(f"/api/retailcrm/records/{token}").status_code == 404


def test_it_accepts_a_link_just_inside_its_lifetime(call, settings, monkeypatch):
    settings.RETAILCRM_RECORD_URL_MAX_AGE_DAYS = 1
    signed_at = time.time() - 86400 + 60
    monkeypatch.setattr("django.core.signing.time.time", lambda: signed_at)
    token = recordings.sign_call(call.pk)
    monkeypatch.undo()
    assert recordings.call_id_from_token(token) == call.pk


def test_it_answers_404_when_the_audio_is_gone(client, call, source):
    token = recordings.sign_call(call.pk)
    source.call_ids.clear()
    assert client.get(f"/api/retailcrm/records/{token}").status_code == 404
