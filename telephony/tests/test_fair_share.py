"""The fair-share decision (``telephony.sockets.fair_share``): pure, and simulated here scan by scan."""

from __future__ import annotations

from collections import Counter

import pytest

from telephony.sockets.fair_share import balanced, decide, targets

IDS = list(range(1, 101))


def test_it_splits_the_listeners_evenly_the_first_workers_by_id_holding_one_more():
    assert targets(10, ["b", "a", "c"]) == {"a": 4, "b": 3, "c": 3}
    assert targets(9, ["a", "b", "c"]) == {"a": 3, "b": 3, "c": 3}
    assert sum(targets(2000, [f"w{n}" for n in range(7)]).values()) == 2000


def test_it_takes_every_free_listener_when_it_is_the_only_worker():
    decision = decide(IDS, ["a"], {}, "a")
    assert (decision.target, decision.acquire, decision.take_offers, decision.offer) == (100, 100, 0, [])


def test_it_takes_only_its_target_of_free_listeners_when_another_live_worker_is_short():
    decision = decide(IDS, ["a", "b"], {}, "a")
    assert decision.acquire == 50 and decision.cap == 51


def test_it_takes_free_listeners_beyond_its_target_up_to_its_cap_when_nobody_short_will():
    holders = {i: "b" for i in IDS[:50]}  # b at its target, 50 free
    decision = decide(IDS[:50] + [i + 100 for i in range(60)], ["a", "b"], holders, "a", slack=1)
    # 110 listeners: targets 55/55, cap 56; b is short 5, so a leaves 5 of the 60 free ones
    assert decision.target == 55 and decision.acquire == 55


def test_it_starts_its_free_listeners_elsewhere_than_the_other_workers_do():
    first = decide(IDS, ["a", "b"], {}, "a").free
    second = decide(IDS, ["a", "b"], {}, "b").free
    assert sorted(first) == sorted(second) == IDS and first[0] != second[0]


def test_it_offers_its_surplus_to_a_worker_that_joined_with_nothing():
    holders = {i: "a" for i in IDS}
    decision = decide(IDS, ["a", "b"], holders, "a")
    assert len(decision.offer) == 50 and set(decision.offer) <= set(IDS)
    joiner = decide(IDS, ["a", "b"], holders, "b")
    assert (joiner.acquire, joiner.take_offers, joiner.offer) == (0, 50, [])


def test_it_offers_no_more_than_the_others_are_short_after_the_free_listeners():
    holders = {i: "a" for i in IDS[:80]}  # 20 free; b short 50: 30 must come from a
    assert len(decide(IDS, ["a", "b"], holders, "a").offer) == 30


def test_it_counts_its_untaken_offers_and_listeners_moving_away_when_offering_again():
    holders = {i: "a" for i in IDS}
    moving = {i: "b" for i in IDS[:20]}
    offered = IDS[20:40]
    decision = decide(IDS, ["a", "b"], holders, "a", moving=moving, offered=offered)
    assert len(decision.offer) == 10 and not set(decision.offer) & set(IDS[:40])
    joiner = decide(IDS, ["a", "b"], holders, "b", moving=moving, offered=offered)
    assert joiner.take_offers == 30, "the listeners coming to it count as its own"


def test_it_keeps_on_offer_only_what_the_others_are_still_short():
    holders = {i: "a" for i in IDS}
    assert decide(IDS, ["a", "b"], holders, "a", offered=IDS[:50]).on_offer == 50
    moving = {i: "b" for i in IDS[:40]}
    assert decide(IDS, ["a", "b"], holders, "a", moving=moving, offered=IDS[40:50]).on_offer == 10
    assert decide(IDS, ["a"], holders, "a", offered=IDS[40:50]).on_offer == 0, "the short worker died"


def test_it_offers_nothing_within_its_target_nor_when_nobody_is_short():
    holders = {i: ("a" if i <= 50 else "b") for i in IDS}
    assert decide(IDS, ["a", "b"], holders, "a").offer == []
    # b dead (not live) but its leases not yet expired: a is at its cap and nobody live is short
    assert decide(IDS, ["a"], holders, "a").offer == []


def test_it_offers_what_is_over_its_cap_even_when_nobody_is_short():
    holders = {i: "a" for i in IDS}  # then LISTENER_MAX_PER_WORKER lowered to 60
    decision = decide(IDS, ["a"], holders, "a", max_held=60)
    assert decision.cap == 60 and len(decision.offer) == 40


def test_it_keeps_to_the_per_worker_cap_setting():
    decision = decide(IDS[:3], ["first"], {}, "first", max_held=2)
    assert (decision.target, decision.acquire) == (2, 2)


def test_it_leaves_a_dead_workers_listeners_alone_until_their_leases_expire():
    holders = {i: "dead" for i in IDS[:50]}
    decision = decide(IDS, ["a"], holders, "a")
    assert decision.acquire == 50 and sorted(decision.free) == IDS[50:]


def test_it_takes_offers_only_while_fewer_than_max_taking_handovers_are_under_way():
    holders = {i: "a" for i in IDS}
    offered = IDS[:50]
    assert decide(IDS, ["a", "b"], holders, "b", offered=offered).take_offers == 50, "no bound by default"
    decision = decide(IDS, ["a", "b"], holders, "b", offered=offered, max_taking=32)
    assert (decision.take_offers, decision.take_room) == (32, 32)
    # 30 taken, their sockets not up yet: 2 more now, though b is short of 20 more than that
    moving = {i: "b" for i in IDS[50:80]}
    decision = decide(IDS, ["a", "b"], holders, "b", moving=moving, offered=offered, max_taking=32)
    assert (decision.take_offers, decision.take_room) == (2, 2)
    moving = {i: "b" for i in IDS[50:82]}
    assert decide(IDS, ["a", "b"], holders, "b", moving=moving, offered=offered, max_taking=32).take_offers == 0
    # those whose socket is up wait for their owner's hand-off, logging in no more: they leave room
    decision = decide(IDS, ["a", "b"], holders, "b", moving=moving, offered=offered, max_taking=32,
                      ready=IDS[50:60])
    assert (decision.take_offers, decision.take_room) == (10, 10)
    # another worker's handovers under way do not count against b's
    moving = {i: "c" for i in IDS[50:82]}
    assert decide(IDS, ["a", "b", "c"], holders, "b", moving=moving, offered=offered,
                  max_taking=32).take_room == 32


def test_it_lists_the_offers_to_take_without_its_own_or_taken_ones_each_taker_starting_elsewhere():
    holders = {i: "a" for i in IDS}
    offered = IDS[:60]
    moving = {IDS[0]: "c"}  # offered, then taken by c
    b = decide(IDS, ["a", "b", "c"], holders, "b", moving=moving, offered=offered)
    c = decide(IDS, ["a", "b", "c"], holders, "c", moving=moving, offered=offered)
    assert sorted(b.take_order) == sorted(c.take_order) == IDS[1:60]
    assert b.take_order[0] != c.take_order[0], "two takers racing for the same offers would each lose half"
    assert decide(IDS, ["a", "b"], holders, "a", offered=offered).take_order == [], "a takes none of its own"


def _simulate(listeners: list[int], workers: list[str], holders: dict[int, str], rounds: int) -> dict[int, str]:
    """Every worker decides in turn and its moves happen at once (offers taken by the short workers)."""
    offered: dict[int, str] = {}
    for _ in range(rounds):
        for me in workers:
            decision = decide(listeners, workers, holders, me, offered=offered)
            got = 0
            for listener_id in decision.free:
                if got == decision.acquire:
                    break
                if listener_id not in holders:
                    holders[listener_id] = me
                    got += 1
            take = decision.take_offers
            for listener_id in list(offered):
                if take and offered[listener_id] != me:
                    holders[listener_id] = me
                    offered.pop(listener_id)
                    take -= 1
            for listener_id in decision.offer:
                offered[listener_id] = me
    return holders


@pytest.mark.parametrize("count,workers", [(100, 2), (100, 3), (7, 3), (2000, 4), (3, 5)])
def test_it_balances_from_any_start_within_two_rounds_and_holds_each_listener_once(count, workers):
    listeners = list(range(count))
    names = [f"w{n}" for n in range(workers)]
    for start in ({}, {i: names[0] for i in listeners}, {i: names[-1] for i in listeners[: count // 2]}):
        holders = _simulate(listeners, names, dict(start), rounds=2)
        assert sorted(holders) == listeners, "every listener held"
        counts = Counter(holders.values())
        assert balanced({name: counts[name] for name in names}, count), counts


def test_it_rebalances_after_a_worker_leaves_and_one_joins():
    listeners = list(range(300))
    holders = _simulate(listeners, ["a", "b", "c"], {}, rounds=2)
    holders = {i: w for i, w in holders.items() if w != "b"}  # b died, its leases expired
    holders = _simulate(listeners, ["a", "c"], holders, rounds=2)
    assert Counter(holders.values()) == {"a": 150, "c": 150}
    holders = _simulate(listeners, ["a", "c", "d"], holders, rounds=2)
    assert Counter(holders.values()) == {"a": 100, "c": 100, "d": 100}


def test_it_calls_a_split_balanced_within_ten_percent_or_one_listener_where_ten_percent_is_less():
    assert balanced({"a": 100, "b": 109}, 209) and not balanced({"a": 90, "b": 119}, 209)
    assert balanced({"a": 3, "b": 2, "c": 2}, 7) and not balanced({"a": 4, "b": 2, "c": 1}, 7)
    assert balanced({"a": 5, "b": 5}, 10) and not balanced({"a": 6, "b": 4}, 10)
