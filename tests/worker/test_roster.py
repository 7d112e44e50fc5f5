"""Roster: processes priming together list the org once. Real Redis, a fake listing, an
injected clock."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.clock import ManualClock
from worker.notifications.roster import FirstPage, Roster, seed_first_page


class Listing:
    def __init__(self, ids: list[str], fail: bool = False) -> None:
        self.ids, self.fail, self.calls = ids, fail, 0
        self.given: list[FirstPage | None] = []

    def __call__(self, limit: int, first: FirstPage | None = None) -> list[str]:
        self.calls += 1
        self.given.append(first)
        if self.fail:
            raise RuntimeError("listing refused")
        return self.ids[:limit]


@pytest.fixture
def client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def roster(client: redis.Redis, clock: ManualClock | None = None, **kwargs) -> Roster:
    clock = clock or ManualClock()
    return Roster(client, key="org", sleep=clock.sleep, clock=clock, **kwargs)


def test_a_second_process_uses_the_first_ones_listing(client):
    listing = Listing([f"a{i}" for i in range(10)])

    first = roster(client).active(8, listing)
    second = roster(client).active(8, listing)

    assert first == second == [f"a{i}" for i in range(8)]
    assert listing.calls == 1


def test_a_first_page_read_at_the_start_checks_is_passed_to_the_listing(client):
    listing = Listing([f"a{i}" for i in range(10)])
    seed_first_page(client, "org", FirstPage(["a0", "a1"], more=True))

    assert roster(client).active(8, listing) == [f"a{i}" for i in range(8)]
    assert listing.given == [FirstPage(["a0", "a1"], more=True)]


def test_a_first_page_covering_the_org_or_the_limit_spares_the_listing(client):
    listing = Listing([])
    seed_first_page(client, "org", FirstPage(["a0", "a1", "a2"], more=True))
    assert roster(client).active(2, listing) == ["a0", "a1"]
    client.delete("presence:roster:{org}")
    seed_first_page(client, "org", FirstPage(["a0", "a1", "a2"], more=False))
    assert roster(client).active(3000, listing) == ["a0", "a1", "a2"], "the whole org"
    assert roster(client).active(3000, listing) == ["a0", "a1", "a2"], "stored for the others"
    assert listing.calls == 0


def test_a_first_page_no_longer_fresh_or_unreadable_is_not_used(client):
    listing = Listing(["a0"])
    seed_first_page(client, "org", FirstPage(["old"], more=False), ttl_s=0.05)
    time.sleep(0.1)
    assert roster(client).active(5, listing) == ["a0"]
    client.delete("presence:roster:{org}")
    client.set("presence:roster:{org}:first", b"\xff not json")
    assert roster(client).active(5, listing) == ["a0"]
    assert listing.given == [None, None]


def test_a_listing_for_fewer_agents_is_not_reused_for_more_unless_it_was_complete(client):
    many = Listing([f"a{i}" for i in range(10)])
    roster(client).active(4, many)

    assert roster(client).active(8, many) == [f"a{i}" for i in range(8)]
    assert many.calls == 2
    client.delete("presence:roster:{org}")
    few = Listing(["a0", "a1"])
    roster(client).active(2000, few)
    assert roster(client).active(3000, few) == ["a0", "a1"], "the org has only two"
    assert few.calls == 1


def test_a_process_finding_another_listing_waits_for_its_answer(client):
    listing = Listing(["a0", "a1", "a2"])
    assert client.set("presence:roster:{org}:listing", 1, nx=True, px=5000)  # another lists
    clock = ManualClock()
    waiting = roster(client, clock)

    def answer_later(seconds: float) -> None:
        clock.now += seconds
        if clock.now >= 1.0 and not client.exists("presence:roster:{org}"):
            roster(client).active(3, Listing(["a0", "a1", "a2"]))

    waiting.sleep = answer_later

    assert waiting.active(3, listing) == ["a0", "a1", "a2"]
    assert listing.calls == 0


def test_a_lister_that_never_answers_is_not_waited_for_beyond_the_bound(client):
    assert client.set("presence:roster:{org}:listing", 1, nx=True, px=60_000)
    listing = Listing(["a0"])

    assert roster(client, wait_s=2.0).active(1, listing) == ["a0"]
    assert listing.calls == 1


def test_a_failed_listing_stores_nothing_and_lets_the_next_process_list(client):
    with pytest.raises(RuntimeError):
        roster(client).active(3, Listing(["a0"], fail=True))

    assert not client.exists("presence:roster:{org}")
    retry = Listing(["a0"])
    assert roster(client, wait_s=0.5).active(3, retry) == ["a0"]
    assert retry.calls == 1


def test_without_redis_each_process_lists(redis_url):
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    listing = Listing(["a0"])

    assert roster(dead).active(1, listing) == ["a0"]
    assert roster(dead).active(1, listing) == ["a0"]
    assert listing.calls == 2


def test_processes_starting_together_list_once(client):
    listing = Listing([f"a{i}" for i in range(5)])
    results: list[list[str]] = []

    def prime() -> None:
        results.append(Roster(client, key="org").active(5, listing))

    threads = [threading.Thread(target=prime) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == [[f"a{i}" for i in range(5)]] * 4
    assert listing.calls == 1


# -- the presence read after subscribing ---------------------------------------------------------
def test_processes_subscribing_together_read_once_after_the_last_subscribed(client):
    early, late = Roster(client, key="org"), Roster(client, key="org")
    reads: list[tuple[str, float]] = []
    answers: dict[str, bool] = {}

    with late.subscribing():
        with early.subscribing():
            pass
        waiting = threading.Thread(
            target=lambda: answers.update(
                early=early.fill_once(lambda: reads.append(("early", time.monotonic())))
            )
        )
        waiting.start()
        time.sleep(1.5)  # past early's grace
        assert reads == [], "no read while a fleet-mate is still subscribing"
    subscribed = time.monotonic()
    answers["late"] = late.fill_once(lambda: reads.append(("late", time.monotonic())))
    waiting.join(10)

    assert len(reads) == 1
    assert reads[0][1] > subscribed
    assert sorted(answers.values()) == [False, True]


def test_a_fleet_mate_starting_within_the_grace_is_read_for(client):
    first, second = Roster(client, key="org"), Roster(client, key="org")
    reads: list[str] = []
    with first.subscribing():
        pass
    thread = threading.Thread(target=lambda: first.fill_once(lambda: reads.append("first")))
    thread.start()
    time.sleep(0.3)
    with second.subscribing():
        time.sleep(0.2)
    second.fill_once(lambda: reads.append("second"))
    thread.join(10)

    assert len(reads) == 1


def test_a_read_started_before_this_process_subscribed_does_not_count(client):
    first, second = Roster(client, key="org", grace_s=0), Roster(client, key="org", grace_s=0)
    reads: list[str] = []
    with first.subscribing():
        pass
    first.fill_once(lambda: reads.append("first"))

    with second.subscribing():
        pass
    second.fill_once(lambda: reads.append("second"))

    assert reads == ["first", "second"]


def test_a_failed_read_lets_the_waiting_process_read_at_once(client):
    waiting = Roster(client, key="org", wait_s=30, grace_s=0.5)
    failing = Roster(client, key="org", grace_s=0)
    reads: list[str] = []
    answers: dict[str, bool] = {}
    with waiting.subscribing(), failing.subscribing():
        pass

    def refuse() -> None:
        reads.append("refused")
        time.sleep(0.3)
        raise RuntimeError("listing refused")

    started = time.monotonic()
    thread = threading.Thread(
        target=lambda: answers.update(waiting=waiting.fill_once(lambda: reads.append("waiting")))
    )
    thread.start()
    time.sleep(0.05)  # the waiting process subscribed before the failing read began
    with pytest.raises(RuntimeError):
        failing.fill_once(refuse)
    thread.join(10)

    assert reads == ["refused", "waiting"]
    assert answers == {"waiting": True}
    assert time.monotonic() - started < 5, "not held for the whole bound"


def test_a_reader_that_never_finishes_is_waited_for_only_up_to_the_bound(client):
    client.set(
        "presence:roster:{org}:snapshot",
        json.dumps({"started": 10**14, "done": False, "by": "gone"}),
        px=60_000,
    )
    clock = ManualClock()
    reads: list[str] = []

    assert roster(client, clock, wait_s=2.0).fill_once(lambda: reads.append("me"))
    assert reads == ["me"]
    assert clock.now >= 2.0


def test_two_orgs_list_and_read_their_own_agents_under_the_same_client_key(client):
    assert client.set("presence:roster:{org}:listing", 1, nx=True, px=60_000)  # default lists
    roster(client).active(2, Listing(["d0", "d1"]))
    acme_listing = Listing(["a0", "a1"])

    acme = roster(client, prefix="presence:org:acme")
    assert acme.active(2, acme_listing) == ["a0", "a1"], "not the other org's listing"
    assert acme_listing.calls == 1
    assert roster(client).active(2, Listing(["x"])) == ["d0", "d1"]

    reads: list[str] = []
    default = Roster(client, key="org", grace_s=0)
    acme_reader = Roster(client, key="org", grace_s=0, wait_s=5, prefix="presence:org:acme")
    with default.subscribing():
        with acme_reader.subscribing():
            pass
        started = time.monotonic()
        assert acme_reader.fill_once(lambda: reads.append("acme"))
        assert time.monotonic() - started < 2, "the other org still subscribing held no read"
    assert reads == ["acme"]
