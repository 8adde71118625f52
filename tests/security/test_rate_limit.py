"""The public endpoints answer 429 with a JSON reason past PUBLIC_RATE_LIMIT_PER_SECOND, per caller."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings

from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm import inbound_limit
from ctihub.lib import ratelimit

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_buckets():
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    for key in client.scan_iter(f"{ratelimit.PREFIX}:*"):
        client.delete(key)
    yield
    client.close()


@pytest.fixture
def slow_limit(settings):
    settings.PUBLIC_RATE_LIMIT_PER_SECOND = 1  # bursts of 3


def test_it_answers_429_with_a_reason_past_the_limit_of_one_client_id(client, slow_limit):
    RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.ru", api_key="k", client_id="cid-1")
    answers = [client.get("/api/retailcrm/user-status", {"clientId": "cid-1", "code": "1", "userId": "1",
                                                          "status": "free"}) for _ in range(5)]
    assert [a.status_code for a in answers[:3]] == [404, 404, 404]  # no such agent, but let through
    refused = answers[3]
    assert refused.status_code == 429
    assert refused.json()["success"] is False and "too many requests" in refused.json()["reason"]
    assert int(refused["Retry-After"]) >= 1
    # Another integration's clientId has its own bucket.
    RetailCrmIntegration.objects.create(name="shop 2", crm_url="https://two.retailcrm.ru", api_key="k", client_id="cid-2")
    other = client.get("/api/retailcrm/user-status", {"clientId": "cid-2", "code": "1", "userId": "1"})
    assert other.status_code == 400


def test_it_limits_guessed_client_ids_by_address_however_many_it_tries(client, slow_limit):
    codes = [client.get("/api/retailcrm/make-call", {"clientId": f"guess-{n}"}).status_code for n in range(5)]
    assert codes == [403, 403, 403, 429, 429]


def test_it_limits_make_call_and_record_links_by_address_without_a_client_id(client, slow_limit):
    codes = [client.get("/api/retailcrm/make-call").status_code for _ in range(4)]
    assert codes == [403, 403, 403, 429]
    codes = [client.get("/api/retailcrm/records/forged:token").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]


def test_it_lets_requests_through_when_redis_is_down(client, slow_limit, monkeypatch):
    def broken(*args):
        raise redis.ConnectionError("down")

    monkeypatch.setattr(ratelimit, "take", broken)
    assert [client.get("/api/retailcrm/make-call").status_code for _ in range(5)] == [403] * 5


def test_it_never_keeps_the_client_id_itself_in_redis(rf):
    RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.ru", api_key="k",
                                        client_id="secret-client-id")
    caller = inbound_limit.caller_of(rf.get("/api/retailcrm/make-call", {"clientId": "secret-client-id"}))
    assert "secret-client-id" not in caller and caller.startswith("client:")


def telepo_account(name: str, secret: str):
    from telephony.models import PbxAccount
    from tests.factories import make_account

    return make_account(name=name, kind=PbxAccount.Kind.TELEPO, base_url="http://127.0.0.1:9", enterprise=name,
                        login="", password="", api_token="t", webhook_secret=secret)


def test_it_limits_the_telepo_webhook_per_account_with_a_reason_and_retry_after(client, slow_limit):
    telepo_account("one.example", "hook-one-5d1c")
    telepo_account("two.example", "hook-two-9a7e")
    # A whole organisation's calls come through one webhook: ten times the budget (bursts of 30).
    answers = []
    while len(answers) < 300 and (not answers or answers[-1].status_code != 429):
        answers.append(client.post("/api/telepo/webhook/hook-one-5d1c", data="{", content_type="application/json"))
    refused = answers[-1]
    assert {a.status_code for a in answers[:-1]} == {400}  # a bad body, but let through to say so
    assert len(answers) - 1 >= 30
    assert refused.status_code == 429 and "too many requests" in refused.json()["reason"]
    assert int(refused["Retry-After"]) >= 1
    # The other organisation's webhook has its own bucket.
    other = client.post("/api/telepo/webhook/hook-two-9a7e", data="{", content_type="application/json")
    assert other.status_code == 400


def test_it_limits_guessed_telepo_secrets_by_address_whatever_they_send(client, slow_limit):
    telepo_account("one.example", "hook-one-5d1c")
    codes = [client.post(f"/api/telepo/webhook/guess-{n}?clientId=c{n}", data="{}", content_type="application/json")
             .status_code for n in range(4)]
    assert codes == [404, 404, 404, 429]
    # A known secret is not the guesser's address: it still gets through.
    known = client.post("/api/telepo/webhook/hook-one-5d1c", data="{", content_type="application/json")
    assert known.status_code == 400



def test_it_counts_with_eval_when_redis_does_not_know_its_script(slow_limit, monkeypatch):
    # As after a Redis restart: EVALSHA answers NOSCRIPT. (Not SCRIPT FLUSH: it would empty the whole
    # server's script cache, other processes' too.)
    monkeypatch.setattr(ratelimit, "TAKE_TOKEN_SHA", "0" * 40)
    waits = [ratelimit.take("script-test", "addr:1") for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0  # a burst of 3, then the bucket is empty
    monkeypatch.undo()
    assert ratelimit.take("script-test", "addr:1") > 0  # EVALSHA counts in the same bucket


def test_it_takes_a_token_without_redis_pys_client_layers(slow_limit, monkeypatch):
    # redis-py's client (pool, retries, observability) cost twice the round trip itself on every click
    # (issue 16): the rate limit sends its one command on its thread's own connection.
    def not_this_way(*args, **kwargs):
        raise AssertionError("the rate limit went through redis-py's client")

    monkeypatch.setattr(redis.Redis, "execute_command", not_this_way)
    waits = [ratelimit.take("layers-test", "addr:2") for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0


def test_it_takes_a_token_on_a_new_connection_when_redis_closed_the_idle_one(slow_limit):
    assert ratelimit.take("restart-test", "addr:3") == 0
    connection = ratelimit._connection()
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    own_id = int(connection.send_command("CLIENT", "ID") or connection.read_response())
    # Redis forgets the connection between two clicks (a restart, a timeout): the next click still counts.
    assert client.client_kill_filter(_id=own_id) == 1
    client.close()
    assert [ratelimit.take("restart-test", "addr:3") for _ in range(3)][:2] == [0, 0]
    assert ratelimit.take("restart-test", "addr:3") > 0  # the same bucket: 3 taken of a burst of 3


def test_it_packs_a_buckets_command_once_however_often_it_is_taken(slow_limit, monkeypatch):
    # redis-py's encoder and packer were a third of the rate limit's Python on every click (issue 16).
    from redis.connection import AbstractConnection

    packed = []
    pack = AbstractConnection.pack_command
    monkeypatch.setattr(AbstractConnection, "pack_command", lambda self, *args: packed.append(args) or pack(self, *args))
    waits = [ratelimit.take("packing-test", "addr:4") for _ in range(4)] + [ratelimit.take("packing-test", "addr:5")]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0 and waits[4] == 0  # each bucket counts as before
    assert [args[3] for args in packed] == [f"{ratelimit.PREFIX}:packing-test:addr:4",
                                            f"{ratelimit.PREFIX}:packing-test:addr:5"]
