"""One owner per listener, across any number of workers on any number of machines.

A lease is a Redis key holding the owner's id with a TTL. The owner renews it
well before it expires; if the owner dies, the key expires and another worker's
supervisor takes the listener over within one TTL. Renew and release are
compare-and-set scripts, so a worker that lost its lease (paused too long) can
never extend or delete the new owner's lease.

Renewing a lease whose key is gone takes it back: the key vanishes when Redis
restarts empty, and the owner still holding the socket must keep it rather than
stop and leave a gap in which calls come and go unseen. (Supervisors wait one TTL
after a Redis outage before taking listeners they did not hold, so the owners
reclaim first; see ``Supervisor``.)
"""

from __future__ import annotations

import redis

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(listener_id: int) -> str:
    return f"ctihub:lease:listener:{listener_id}"


class LeaseStore:
    def __init__(self, client: redis.Redis, owner: str, ttl_ms: int):
        self.client = client
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, listener_id: int) -> bool:
        return bool(self.client.set(lease_key(listener_id), self.owner, nx=True, px=self.ttl_ms))

    def renew(self, listener_id: int) -> bool:
        return bool(self._renew(keys=[lease_key(listener_id)], args=[self.owner, self.ttl_ms]))

    def renew_many(self, listener_ids: list[int]) -> dict[int, bool]:
        """Renew every lease in one round trip: a worker holds thousands."""
        if not listener_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for listener_id in listener_ids:
            self._renew(keys=[lease_key(listener_id)], args=[self.owner, self.ttl_ms], client=pipe)
        return {listener_id: bool(held) for listener_id, held in zip(listener_ids, pipe.execute())}

    def release(self, listener_id: int) -> None:
        self._release(keys=[lease_key(listener_id)], args=[self.owner])

    def holder(self, listener_id: int) -> str | None:
        value = self.client.get(lease_key(listener_id))
        return value.decode() if value else None
