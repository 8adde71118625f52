"""How many listeners each worker should hold, and what one worker does about it: a pure function.

Every live worker computes the same targets from the same inputs: the listeners, sorted, split as evenly as
integers allow over the live workers, sorted by id (the first ``listeners % workers`` of them hold one more).
Each worker then moves towards its own target:

* under it, it leases free listeners first, then takes listeners other workers offer;
* over it, while another live worker is short and no free listener will fill that, it offers its surplus
  (the supervisor hands an offered listener over make-before-break: ``telephony.sockets.leases``);
* free listeners nobody short will take (a worker died, views of the live set differ for a scan) are taken by
  any worker up to its cap, ``ceil(listeners / workers) + slack``, so none stays unheld; a worker over its cap
  offers the excess even when nobody is short.

The supervisor (``telephony.sockets.supervisor``) gathers the inputs from the database and Redis each scan and
acts on the ``Decision``; this module reads and writes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    target: int  # listeners this worker should hold
    cap: int  # listeners it may hold at most (free ones beyond its target, while nobody short takes them)
    acquire: int = 0  # how many free listeners to lease now ...
    free: list[int] = field(default_factory=list)  # ... tried in this order (each worker starts elsewhere)
    take_offers: int = 0  # how many offered listeners to take after that ...
    take_order: list[int] = field(default_factory=list)  # ... tried in this order (each taker starts elsewhere)
    take_room: int | None = None  # handovers it may start now, whatever it is short of (None: no bound)
    offer: list[int] = field(default_factory=list)  # own listeners to offer now
    on_offer: int = 0  # how many of its listeners should be on offer, untaken: withdraw those beyond it


def targets(listener_count: int, live_workers: Iterable[str]) -> dict[str, int]:
    """Worker id -> listeners it should hold: an even split, the first ``listener_count % workers`` ids one more."""
    workers = sorted(set(live_workers))
    if not workers:
        return {}
    base, extra = divmod(listener_count, len(workers))
    return {worker: base + (n < extra) for n, worker in enumerate(workers)}


def cap_of(listener_count: int, workers: int, slack: int) -> int:
    return math.ceil(listener_count / max(workers, 1)) + slack


def decide(listener_ids: Iterable[int], live_workers: Iterable[str], holders: Mapping[int, str], me: str, *,
           slack: int = 1, moving: Mapping[int, str] | None = None, offered: Iterable[int] = (),
           max_held: int = 0, max_taking: int = 0, ready: Iterable[int] = ()) -> Decision:
    """What worker ``me`` should do about its share of ``listener_ids``.

    ``holders``: listener -> the worker whose lease it is (listeners without a lease are free). ``moving``:
    listener -> the worker taking it over (an offer taken, the handover under way): it counts as the taker's.
    ``offered``: listeners offered and not taken yet. ``max_held`` (``LISTENER_MAX_PER_WORKER``, 0: none)
    caps target and cap alike. Holders that are not live workers keep their listeners until their leases
    expire: those listeners are neither free nor anyone's share. ``max_taking`` (0: none): handovers this
    worker may have logging in at once (taken, its socket not up yet: those in ``moving`` but not in ``ready``,
    whose taker's socket is up and which wait for their owner's hand-off). A taker that took every offer
    at once would queue hundreds of logins behind its connect slots and give up those still waiting after
    ``LISTENER_HANDOVER_SECONDS``; taking a few slots' worth and the rest as they finish keeps them all moving.
    """
    ids = sorted(set(listener_ids))
    moving = moving or {}
    offered = set(offered)
    workers = sorted(set(live_workers) | {me})
    share = targets(len(ids), workers)
    cap = cap_of(len(ids), len(workers), slack)
    if max_held:
        share = {worker: min(count, max_held) for worker, count in share.items()}
        cap = min(cap, max_held)
    target = share[me]
    owner = {i: moving.get(i) or holders.get(i) for i in ids if i in moving or i in holders}
    counts = Counter(owner.values())
    mine = sorted(i for i in ids if owner.get(i) == me)
    free = [i for i in ids if i not in owner]
    others_short = sum(max(0, share[w] - counts[w]) for w in workers if w != me)

    # Free listeners: up to the target; beyond it (up to the cap) only those nobody short will take.
    want = max(0, target - len(mine))
    spare = len(free) - others_short - want
    if spare > 0:
        want += min(spare, max(0, cap - len(mine) - want))
    want = min(want, len(free))
    start = (workers.index(me) * len(free)) // len(workers) if free else 0  # workers racing for the same keys
    free_order = free[start:] + free[:start]  # would each win some and lose the rest

    take = max(0, target - len(mine) - want)
    take_room = None
    if max_taking:
        ready = set(ready)
        under_way = sum(1 for i, taker in moving.items() if taker == me and i in owner and i not in ready)
        take_room = max(0, max_taking - under_way)
        take = min(take, take_room)
    takeable = [i for i in ids if i in offered and holders.get(i) not in (None, me) and i not in moving]
    first = (workers.index(me) * len(takeable)) // len(workers) if takeable else 0  # as for the free ones
    take_order = takeable[first:] + takeable[:first] if take or want else []

    offer: list[int] = []
    count = 0
    surplus = len(mine) - target
    if surplus > 0:
        short_after_free = max(0, others_short - len(free))
        count = min(surplus, short_after_free)
        if len(mine) > cap:
            count = max(count, len(mine) - cap)
        already = [i for i in mine if i in offered]
        fresh = [i for i in reversed(mine) if i not in offered and moving.get(i) is None]
        offer = fresh[:max(0, count - len(already))]
    return Decision(target=target, cap=cap, acquire=want, free=free_order, take_offers=take,
                    take_order=take_order, take_room=take_room, offer=offer, on_offer=count)


def balanced(counts: Mapping[str, int], listener_count: int, tolerance: float = 0.10) -> bool:
    """Every live worker within ``tolerance`` of its share (``listener_count / workers``), or within one
    listener of it where that tolerance is less than one: what issue 19 asks of a rebalance."""
    if not counts:
        return listener_count == 0
    share = listener_count / len(counts)
    allowed = tolerance * share
    fraction = share % 1
    if fraction:  # an uneven split: floor and ceiling are the best integers can do
        allowed = max(allowed, fraction, 1 - fraction)
    return all(abs(count - share) <= allowed + 1e-9 for count in counts.values())
