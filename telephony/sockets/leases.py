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

Handover (a listener moving between two live workers, make-before-break), on a second key per listener,
``offer_key``, beside the lease (which keeps naming the owner until the very end):

1. the owner offers it: ``offer`` sets the offer key to ``<owner>`` (only while it holds the lease) and adds the
   listener to ``OFFERS_KEY``, where workers short of their share look;
2. a taker takes it: ``take`` turns ``<owner>`` into ``<owner>|<taker>``, one compare-and-set, so of two takers
   only one wins; the taker starts its runner, which logs in and opens its own socket;
3. once that socket is connected, the taker's ``claim`` marks it ``<owner>|<taker>|ready``;
4. the owner's ``hand_off`` moves the lease to the taker (only from that ready state), then it closes its own
   socket. Both sockets were open for a moment: the frame dedupe (``telephony.domain``) stores each frame once.

Each side renews what it wrote with the lease TTL. If the taker dies, its state expires and the owner keeps
the listener (it never closed); if the owner dies, its lease expires and the taker's ``claim`` takes the lease
with its socket already open; an offer nobody takes is withdrawn (``withdraw``); a taker whose socket does not
come up in time gives it up (``call_off``).
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

# KEYS lease, offer, offers; ARGV owner, ttl, listener id
_OFFER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local offer = redis.call('GET', KEYS[2])
if offer and offer ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
return 1
"""
# KEYS lease, offer, offers; ARGV owner, listener id
_WITHDRAW = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return 1
end
return 0
"""
# KEYS lease, offer, offers; ARGV owner, taker, ttl, listener id
_TAKE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[4])
return 1
"""
# The taker, each cycle while its handover is under way. KEYS lease, offer; ARGV owner, taker, ready (0/1), ttl
# Returns 2: the lease is the taker's now; 1: under way; 0: lost (withdrawn, or expired while we were paused).
_CLAIM = """
local lease = redis.call('GET', KEYS[1])
if lease == ARGV[2] then return 2 end
local offer = redis.call('GET', KEYS[2])
local taken = ARGV[1] .. '|' .. ARGV[2]
if offer ~= taken and offer ~= taken .. '|ready' then return 0 end
local ready = offer == taken .. '|ready' or ARGV[3] == '1'
if not lease and ready then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
  return 2
end
if lease and lease ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 0
end
if ready then taken = taken .. '|ready' end
redis.call('SET', KEYS[2], taken, 'PX', ARGV[4])
return 1
"""
# The owner, once the taker's socket is up. KEYS lease, offer; ARGV owner, taker, ttl
_HAND_OFF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] .. '|' .. ARGV[2] .. '|ready' then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""

# The taker giving up before its socket came up (a login refused, too slow). KEYS offer; ARGV owner, taker
_CALL_OFF = """
local offer = redis.call('GET', KEYS[1])
if offer == ARGV[1] .. '|' .. ARGV[2] or offer == ARGV[1] .. '|' .. ARGV[2] .. '|ready' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

#: Listener ids offered and not taken yet (score: the listener id): where a worker short of its share looks.
OFFERS_KEY = "ctihub:lease:offers"
LEASE_PREFIX = "ctihub:lease:listener:"


def lease_key(listener_id: int) -> str:
    return f"{LEASE_PREFIX}{listener_id}"


def offer_key(listener_id: int) -> str:
    return f"ctihub:lease:offer:{listener_id}"


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def lease_owners(client: redis.Redis, listener_ids: list[int] | None = None) -> dict[int, str]:
    """Listener id -> the worker id holding its lease, for ``listener_ids`` (default: every lease key in Redis)."""
    if listener_ids is None:
        listener_ids = sorted(int(_text(key)[len(LEASE_PREFIX):])
                              for key in client.scan_iter(match=f"{LEASE_PREFIX}*", count=1000))
    if not listener_ids:
        return {}
    values = client.mget([lease_key(i) for i in listener_ids])
    return {i: _text(v) for i, v in zip(listener_ids, values) if v is not None}


def offers(client: redis.Redis, listener_ids: list[int] | None = None) -> dict[int, str]:
    """Listener id -> its handover state (``owner``, ``owner|taker``, ``owner|taker|ready``), for
    ``listener_ids`` (default: those in ``OFFERS_KEY``, offered and not taken yet)."""
    open_only = listener_ids is None
    if open_only:
        listener_ids = [int(_text(member)) for member in client.zrange(OFFERS_KEY, 0, -1)]
    if not listener_ids:
        return {}
    values = client.mget([offer_key(i) for i in listener_ids])
    states = {i: _text(v) for i, v in zip(listener_ids, values) if v is not None}
    if open_only:  # an offer whose owner died expired with its key: its entry goes too
        gone = [i for i in listener_ids if i not in states or "|" in states[i]]
        if gone:
            client.zrem(OFFERS_KEY, *gone)
        states = {i: state for i, state in states.items() if "|" not in state}
    return states


class LeaseStore:
    def __init__(self, client: redis.Redis, owner: str, ttl_ms: int):
        self.client = client
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._offer = client.register_script(_OFFER)
        self._withdraw = client.register_script(_WITHDRAW)
        self._take = client.register_script(_TAKE)
        self._claim = client.register_script(_CLAIM)
        self._hand_off = client.register_script(_HAND_OFF)
        self._call_off = client.register_script(_CALL_OFF)

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

    # --- handover (see the module's docstring) ---------------------------------------------
    # Each script's keys and arguments are made in one place, for one listener and for many in one round trip.
    def _offer_call(self, listener_id: int) -> tuple[list, list]:
        return [lease_key(listener_id), offer_key(listener_id), OFFERS_KEY], [self.owner, self.ttl_ms, listener_id]

    def _take_call(self, listener_id: int, owner: str) -> tuple[list, list]:
        return ([lease_key(listener_id), offer_key(listener_id), OFFERS_KEY],
                [owner, self.owner, self.ttl_ms, listener_id])

    def _claim_call(self, listener_id: int, owner: str, ready: bool) -> tuple[list, list]:
        return [lease_key(listener_id), offer_key(listener_id)], [owner, self.owner, "1" if ready else "0", self.ttl_ms]

    def _hand_off_call(self, listener_id: int, taker: str) -> tuple[list, list]:
        return [lease_key(listener_id), offer_key(listener_id)], [self.owner, taker, self.ttl_ms]

    def _in_one_round_trip(self, script, calls: list[tuple[list, list]]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute()

    def offer(self, listener_id: int) -> bool:
        """Offer a listener this worker holds (again: an untaken offer is renewed)."""
        keys, args = self._offer_call(listener_id)
        return bool(self._offer(keys=keys, args=args))

    def withdraw(self, listener_id: int) -> bool:
        """Take back an offer nobody took (a taken one is the taker's to finish or let expire)."""
        keys = [lease_key(listener_id), offer_key(listener_id), OFFERS_KEY]
        return bool(self._withdraw(keys=keys, args=[self.owner, listener_id]))

    def take(self, listener_id: int, owner: str) -> bool:
        """Take ``owner``'s offer of a listener; False if another taker was first or the offer is gone."""
        keys, args = self._take_call(listener_id, owner)
        return bool(self._take(keys=keys, args=args))

    def offer_many(self, listener_ids: list[int]) -> dict[int, bool]:
        """``offer`` for many in one round trip: a worker leaving offers all it holds, and renews the offers."""
        if not listener_ids:
            return {}
        done = self._in_one_round_trip(self._offer, [self._offer_call(listener_id) for listener_id in listener_ids])
        return {listener_id: bool(result) for listener_id, result in zip(listener_ids, done)}

    def claim(self, listener_id: int, owner: str, ready: bool) -> int:
        """The taker's renewal of a handover: 2 the lease is ours now, 1 still under way, 0 lost."""
        keys, args = self._claim_call(listener_id, owner, ready)
        return int(self._claim(keys=keys, args=args))

    def claim_many(self, claims: list[tuple[int, str, bool]]) -> dict[int, int]:
        """``claim`` for many (listener id, owner, ready) in one round trip: a worker takes hundreds at a join."""
        if not claims:
            return {}
        done = self._in_one_round_trip(self._claim, [self._claim_call(*claim) for claim in claims])
        return {claim[0]: int(result) for claim, result in zip(claims, done)}

    def take_many(self, takes: list[tuple[int, str]]) -> dict[int, bool]:
        """``take`` for many (listener id, owner) in one round trip: a worker joining takes dozens a tick."""
        if not takes:
            return {}
        done = self._in_one_round_trip(self._take, [self._take_call(*take) for take in takes])
        return {take[0]: bool(result) for take, result in zip(takes, done)}

    def hand_off_many(self, hand_offs: list[tuple[int, str]]) -> dict[int, bool]:
        """``hand_off`` for many (listener id, taker) in one round trip: an owner hands dozens off a tick."""
        if not hand_offs:
            return {}
        done = self._in_one_round_trip(self._hand_off, [self._hand_off_call(*hand_off) for hand_off in hand_offs])
        return {hand_off[0]: bool(result) for hand_off, result in zip(hand_offs, done)}

    def call_off(self, listener_id: int, owner: str) -> bool:
        """The taker gives a handover up: the state goes at once, so the owner (which never closed) sees it
        kept and may offer it again, rather than wait for the state to expire (the lease TTL) meanwhile
        counted as the taker's."""
        return bool(self._call_off(keys=[offer_key(listener_id)], args=[owner, self.owner]))

    def hand_off(self, listener_id: int, taker: str) -> bool:
        """The owner's last step: the lease becomes the taker's, whose socket is up."""
        keys, args = self._hand_off_call(listener_id, taker)
        return bool(self._hand_off(keys=keys, args=args))
