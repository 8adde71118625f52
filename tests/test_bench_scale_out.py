"""bench/scale_out.py's own reading of who holds what: the leases in Redis, and the 10% rule of a fair share."""

from types import SimpleNamespace

import redis
from django.conf import settings

from bench import scale_out
from telephony.sockets.leases import LeaseStore, lease_key


def test_it_reads_every_lease_holder_from_redis():
    client = redis.Redis.from_url(settings.REDIS_URL)
    first, second = LeaseStore(client, "host:101:aa", 60000), LeaseStore(client, "host:202:bb", 60000)
    try:
        assert first.acquire(7001) and first.acquire(7002) and second.acquire(7003)
        client.set("ctihub:lease:other:1", "not a listener")
        owners = scale_out.lease_owners(client)
        assert {k: v for k, v in owners.items() if k in (7001, 7002, 7003)} == {
            7001: "host:101:aa", 7002: "host:101:aa", 7003: "host:202:bb"}
        workers = [SimpleNamespace(process=SimpleNamespace(pid=101), number=0),
                   SimpleNamespace(process=SimpleNamespace(pid=303), number=1)]
        counts, held = scale_out._counts(client, workers)
        assert (counts["worker_0"], counts["worker_1"], counts["other:host:202:bb"], held) == (2, 0, 1, 3)
    finally:
        client.delete(lease_key(7001), lease_key(7002), lease_key(7003), "ctihub:lease:other:1")


def test_it_calls_a_share_balanced_within_ten_percent_with_every_listener_held():
    workers = [SimpleNamespace(number=0), SimpleNamespace(number=1)]
    assert scale_out._balanced({"worker_0": 110, "worker_1": 90}, 200, workers, 200)
    assert not scale_out._balanced({"worker_0": 111, "worker_1": 89}, 200, workers, 200)
    assert not scale_out._balanced({"worker_0": 100, "worker_1": 95}, 195, workers, 200)  # five held by nobody
    assert not scale_out._balanced({"worker_0": 200, "worker_1": 0}, 200, workers, 200)  # today's first worker
