"""The retailCRM client: exact encoding, the API key header, timeouts, backoff, errors that quote retailCRM.

The transport is replaced at the one place the project allows (HttpClient's
adapter), so these tests see the exact bytes that would go on the wire. The
expected bodies are written out by hand from what the official clients do:
one form field whose value is ``json.dumps(entity)`` (default separators,
ASCII escapes), form-urlencoded with ``+`` for spaces.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError

from crm_sync.retailcrm.client import (
    RetailCrmAuthError,
    RetailCrmClient,
    RetailCrmError,
    RetailCrmNotFound,
    RetailCrmUnavailable,
)
from crm_sync.retailcrm.ratelimit import RateLimiter
from ctihub.lib.http_client import HttpClient


class ScriptedAdapter(HTTPAdapter):
    """Answers from a script and keeps every PreparedRequest it was given (and its send kwargs)."""

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.sent: list[requests.PreparedRequest] = []
        self.kwargs: list[dict] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        self.kwargs.append(kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = (answer + ({},))[:3] if len(answer) == 2 else answer
        response = requests.Response()
        response.status_code = status
        response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response.headers.update({"Content-Type": "application/json", **headers})
        response.request = request
        response.url = request.url
        return response


def client_with(*answers, **kwargs):
    adapter = ScriptedAdapter(answers)
    http = HttpClient("retailcrm-test", adapter=adapter, connect_timeout=1.5, read_timeout=4)
    limiter = RateLimiter(prefix=f"test:{uuid.uuid4().hex}")
    kwargs.setdefault("backoff_base", 0.01)
    return RetailCrmClient("https://shop.retailcrm.ru/", "secret-key", http=http, limiter=limiter, **kwargs), adapter


OK = (200, {"success": True})


def test_it_encodes_a_call_event_exactly_as_the_official_client():
    client, adapter = client_with(OK)
    client.call_event({"phone": "+33412345670", "type": "in", "codes": ["100"], "userIds": [7]})
    sent = adapter.sent[0]
    assert sent.method == "POST"
    assert sent.url == "https://shop.retailcrm.ru/api/v5/telephony/call/event"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    # event={"phone": "+33412345670", "type": "in", "codes": ["100"], "userIds": [7]}
    assert sent.body == (
        "event=%7B%22phone%22%3A+%22%2B33412345670%22%2C+%22type%22%3A+%22in%22%2C+"
        "%22codes%22%3A+%5B%22100%22%5D%2C+%22userIds%22%3A+%5B7%5D%7D"
    )


def test_it_encodes_an_upload_as_one_calls_field_holding_the_json_array():
    client, adapter = client_with((200, {"success": True, "processedCallsCount": 1, "duplicateCalls": []}))
    client.upload_calls([{"date": "2026-01-02 03:04:05", "type": "out", "externalId": "ctihub-9"}])
    sent = adapter.sent[0]
    assert sent.url == "https://shop.retailcrm.ru/api/v5/telephony/calls/upload"
    # calls=[{"date": "2026-01-02 03:04:05", "type": "out", "externalId": "ctihub-9"}]
    assert sent.body == (
        "calls=%5B%7B%22date%22%3A+%222026-01-02+03%3A04%3A05%22%2C+%22type%22%3A+%22out%22%2C+"
        "%22externalId%22%3A+%22ctihub-9%22%7D%5D"
    )


def test_it_encodes_the_module_edit_as_an_integration_module_field_and_escapes_non_ascii():
    client, adapter = client_with((201, {"success": True}))
    client.edit_module("ctihub", {"code": "ctihub", "name": "Téléphonie"})
    sent = adapter.sent[0]
    assert sent.url == "https://shop.retailcrm.ru/api/v5/integration-modules/ctihub/edit"
    # integrationModule={"code": "ctihub", "name": "T\u00e9l\u00e9phonie"} (json.dumps escapes non-ASCII)
    assert sent.body == (
        "integrationModule=%7B%22code%22%3A+%22ctihub%22%2C+%22name%22%3A+%22T%5Cu00e9l%5Cu00e9phonie%22%7D"
    )


def test_it_sends_the_api_key_in_the_header_and_never_in_the_url_or_body():
    client, adapter = client_with(OK, (200, {"success": True, "links": {}}))
    client.call_event({"phone": "1", "type": "in"})
    client.responsible_manager("+33412345670")
    for sent in adapter.sent:
        assert sent.headers["X-API-KEY"] == "secret-key"
        assert "secret-key" not in sent.url and "secret-key" not in (sent.body or "")
    assert adapter.sent[1].method == "GET"
    assert adapter.sent[1].url == "https://shop.retailcrm.ru/api/v5/telephony/manager?phone=%2B33412345670&details=true"


def test_it_gives_every_request_the_configured_timeouts():
    client, adapter = client_with(OK)
    client.call_event({"phone": "1", "type": "in"})
    assert adapter.kwargs[0]["timeout"] == (1.5, 4)


def test_it_backs_off_on_503_and_429_then_returns_the_answer():
    client, adapter = client_with(
        (503, {"success": False, "errorMsg": "Service temporarily unavailable"}),
        (429, {"success": False, "errorMsg": "Too many requests"}, {"Retry-After": "0"}),
        (200, {"success": True, "processedCallsCount": 1, "duplicateCalls": []}),
    )
    answer = client.upload_calls([{"externalId": "x"}])
    assert answer["processedCallsCount"] == 1
    assert len(adapter.sent) == 3
    assert adapter.sent[0].body == adapter.sent[2].body  # the same request, resent


def test_it_raises_a_retryable_error_quoting_retailcrm_after_the_retries():
    client, adapter = client_with(*[(503, {"success": False, "errorMsg": "Service temporarily unavailable"})] * 3)
    with pytest.raises(RetailCrmUnavailable) as caught:
        client.call_event({"phone": "1", "type": "in"})
    assert caught.value.retryable and caught.value.status == 503
    assert "Service temporarily unavailable" in str(caught.value)
    assert len(adapter.sent) == 3  # one try and two retries


def test_it_turns_an_error_answer_into_an_exception_with_errormsg_and_errors():
    client, _ = client_with((400, {"success": False, "errorMsg": "Errors in the entity format",
                                   "errors": {"phone": "This value should not be blank."}}))
    with pytest.raises(RetailCrmError) as caught:
        client.call_event({"type": "in"})
    error = caught.value
    assert not error.retryable and error.status == 400
    assert error.error_msg == "Errors in the entity format"
    assert error.errors == {"phone": "This value should not be blank."}
    assert str(error) == ("retailCRM refused POST /telephony/call/event (400): Errors in the entity format "
                          "[phone: This value should not be blank.]")


@pytest.mark.parametrize("status, cls", [(401, RetailCrmAuthError), (403, RetailCrmAuthError),
                                         (404, RetailCrmNotFound), (500, RetailCrmUnavailable)])
def test_it_picks_the_error_class_from_the_status(status, cls):
    client, _ = client_with(*[(status, {"success": False, "errorMsg": "no"})] * 3, slow_down_retries=0)
    with pytest.raises(cls):
        client.get_module("ctihub")


def test_it_treats_a_200_saying_success_false_as_an_error():
    client, _ = client_with((200, {"success": False, "errorMsg": "Calls are not loaded"}))
    with pytest.raises(RetailCrmError, match="Calls are not loaded"):
        client.upload_calls([{"externalId": "x"}])


def test_it_reports_a_non_json_answer_with_its_status():
    client, _ = client_with((502, b"<html>Bad gateway</html>"), slow_down_retries=0)
    with pytest.raises(RetailCrmUnavailable, match=r"\(502\): HTTP 502, not JSON"):
        client.call_event({"phone": "1", "type": "in"})


@pytest.mark.parametrize("status", [200, 400, 403, 404])
def test_it_takes_an_html_page_for_unavailable_whatever_its_status(status):
    # A maintenance page or a proxy's error page: retailCRM never saw the request, so it must be retried.
    page = b"<!DOCTYPE html><html><body>Maintenance</body></html>"
    client, _ = client_with((status, page, {"Content-Type": "text/html"}), slow_down_retries=0)
    with pytest.raises(RetailCrmUnavailable, match=rf"\({status}\): HTTP {status}, not JSON") as raised:
        client.upload_calls([{"externalId": "x"}])
    assert raised.value.retryable


def test_it_refuses_to_upload_more_than_50_calls_in_one_request():
    client, adapter = client_with()
    with pytest.raises(ValueError, match="at most 50"):
        client.upload_calls([{"externalId": str(n)} for n in range(51)])
    assert adapter.sent == []


def test_it_tells_a_lost_answer_from_a_request_that_never_left():
    read_timeout, _ = client_with(requests.ReadTimeout("read timed out"))
    with pytest.raises(RetailCrmUnavailable) as lost:
        read_timeout.call_event({"phone": "1", "type": "in"})
    assert lost.value.maybe_delivered is True

    refused = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))
    never_sent, _ = client_with(refused)
    with pytest.raises(RetailCrmUnavailable) as unsent:
        never_sent.call_event({"phone": "1", "type": "in"})
    assert unsent.value.maybe_delivered is False


def test_it_says_nothing_was_sent_when_the_shared_rate_limit_cannot_be_read(monkeypatch):
    # Redis restarting: taking a "maybe delivered" for this lost the call's hangup event for good.
    client, adapter = client_with(OK)

    def redis_down(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(client.limiter, "acquire", redis_down)
    with pytest.raises(RetailCrmUnavailable) as unavailable:
        client.call_event({"phone": "1", "type": "hangup"})
    assert unavailable.value.maybe_delivered is False and unavailable.value.retryable
    assert adapter.sent == []


def test_it_refuses_to_work_without_an_api_key():
    with pytest.raises(RetailCrmAuthError, match="no retailCRM API key"):
        RetailCrmClient("https://shop.retailcrm.ru", "")
