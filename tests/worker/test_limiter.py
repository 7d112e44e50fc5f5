"""SharedRateLimiter: one sliding-window budget per OAuth client, shared through Redis.

Each SharedRateLimiter instance with its own Redis connection stands for one worker process.
Windows are shortened to about a second; grant times are read back from Redis (the provisional
stamp minus the provisional delay), i.e. on the server clock the limiter itself uses.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.support.redis_db import commands_during
from worker import limiter as limiter_module
from worker.limiter import TRIM_EVERY, BudgetExhausted, Reservation, SharedRateLimiter

PROVISIONAL_S = 5.0


@pytest.fixture
def make_limiter(redis_url: str):
    """Build limiters that each hold their own Redis connection (one per "process")."""
    connections: list[redis.Redis] = []

    def make(
        *, key: str = "org", limit: int, window_s: float = 1.0, provisional_s=PROVISIONAL_S, **kw
    ) -> SharedRateLimiter:
        connection = redis.Redis.from_url(redis_url)
        connections.append(connection)
        return SharedRateLimiter(
            connection,
            key=key,
            limit_per_minute=limit,
            provisional_s=provisional_s,
            window_s=window_s,
            **kw,
        )

    yield make
    for connection in connections:
        connection.close()


def server_ms(limiter: SharedRateLimiter) -> int:
    seconds, micros = limiter.redis.time()
    return seconds * 1000 + micros // 1000


def stamp_ms(limiter: SharedRateLimiter, reservation: Reservation) -> int:
    score = limiter.redis.zscore(limiter.log_key, reservation.member)
    assert score is not None, "the reservation is not in the log"
    return int(score)


def grant_ms(limiter: SharedRateLimiter, reservation: Reservation) -> int:
    """Server time of the grant: the provisional stamp is grant time + provisional delay."""
    return stamp_ms(limiter, reservation) - limiter.provisional_ms


class SleepLog:
    """An injected sleep that really sleeps and records what it was asked to."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        threading.Event().wait(seconds)


def test_processes_and_threads_together_never_exceed_the_limit_in_any_window(make_limiter):
    limit, window_ms = 4, 1000
    limiters = [make_limiter(limit=limit) for _ in range(3)]  # three "processes"
    grants: list[int] = []
    waited: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(limiter: SharedRateLimiter) -> None:
        try:
            start.wait()
            for _ in range(2):
                reservation = limiter.acquire(max_wait_s=10)
                granted = grant_ms(limiter, reservation)
                limiter.release(reservation)
                with lock:
                    grants.append(granted)
                    waited.append(reservation.waited_s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(lim,)) for lim in limiters for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not errors
    assert len(grants) == 12

    grants.sort()
    for i, at in enumerate(grants):
        # Grants in the sliding window (at - window, at]; the limiter drops stamps <= now - window.
        in_window = sum(1 for other in grants[: i + 1] if other > at - window_ms)
        assert in_window <= limit, f"{in_window} grants within {window_ms} ms ending at {at}"
    # Only `limit` requests fit the first window: every other one waited, and says so.
    assert sum(1 for w in waited if w > 0) >= len(grants) - limit


def test_a_wait_is_slept_through_and_reported_on_the_reservation(make_limiter):
    sleep = SleepLog()
    first = make_limiter(limit=1)
    second = make_limiter(limit=1, sleep=sleep)
    earlier = first.acquire(max_wait_s=0)
    first.release(earlier)
    completed = stamp_ms(first, earlier)

    reservation = second.acquire(max_wait_s=3)

    assert sleep.calls, "the second process had to wait for the slot"
    assert 0 < sleep.calls[0] <= 1.05
    assert reservation.waited_s >= sum(sleep.calls) - 0.05
    # The slot frees exactly one window after the first call completed (server clock).
    assert grant_ms(second, reservation) >= completed + 1000


def test_acquire_raises_budget_exhausted_when_the_next_slot_is_beyond_max_wait(make_limiter):
    sleep = SleepLog()
    limiter = make_limiter(limit=2, window_s=2.0, sleep=sleep)
    for _ in range(2):
        limiter.release(limiter.acquire(max_wait_s=0))

    with pytest.raises(BudgetExhausted) as caught:
        limiter.acquire(max_wait_s=0.5)

    # The first slot frees one window after its call finished, a few milliseconds after its grant.
    assert 0.5 < caught.value.retry_in_s <= 2.0 + 0.05
    assert "budget exhausted" in str(caught.value)
    assert sleep.calls == [], "a wait longer than max_wait_s is not slept"
    assert limiter.in_window() == 2, "the refused attempt reserved nothing"


def test_cool_down_blocks_every_process_until_it_passes(make_limiter):
    seen_429 = make_limiter(limit=100)
    other = make_limiter(limit=100)
    before = server_ms(other)

    seen_429.cool_down(1)

    member, wait_s = other.try_acquire()
    assert member is None
    assert 0.5 < wait_s <= 1.0
    with pytest.raises(BudgetExhausted):
        other.acquire(max_wait_s=0.2)
    reservation = other.acquire(max_wait_s=3)
    assert grant_ms(other, reservation) >= before + 1000
    assert reservation.waited_s > 0


def test_cool_down_never_shortens_a_longer_one_and_rounds_retry_after_up(make_limiter):
    first = make_limiter(limit=100)
    second = make_limiter(limit=100)

    first.cool_down(3)
    second.cool_down(1)  # a shorter Retry-After seen elsewhere
    _, wait_s = second.try_acquire()
    assert wait_s > 2.5, "the longer cool-down still holds"

    third = make_limiter(key="other-org", limit=100)
    third.cool_down(1.2)
    _, wait_s = third.try_acquire()
    assert wait_s > 1.2, "Retry-After is rounded up to whole seconds"


def test_a_cool_down_holds_with_calls_of_its_own_in_the_window(make_limiter):
    busy = make_limiter(limit=3, provisional_s=0.01)
    for _ in range(2):
        busy.release(busy.acquire(max_wait_s=0))

    busy.cool_down(2)  # longer than the window: its entries leave it after the calls' do

    _, wait_s = busy.try_acquire()
    assert 1.5 < wait_s <= 2.0, "the wait is the cool-down's, not the oldest call's"
    time.sleep(1.1)  # the two calls have left the window, the cool-down has not
    member, wait_s = busy.try_acquire()
    assert member is None
    assert 0.5 < wait_s <= 1.0
    assert busy.acquire(max_wait_s=1.5).waited_s > 0.5


def test_a_budget_too_large_to_fill_reads_the_cool_down_instead(make_limiter, monkeypatch):
    monkeypatch.setattr(limiter_module, "COOL_DOWN_FILL_MAX", 10)
    seen_429, other = make_limiter(limit=11), make_limiter(limit=11)

    seen_429.cool_down(1)

    assert other.in_window() == 0, "the window is not filled"
    member, wait_s = other.try_acquire()
    assert member is None
    assert 0.5 < wait_s <= 1.0
    assert other.acquire(max_wait_s=2).waited_s > 0.5


def test_a_call_in_flight_counts_until_it_completes_plus_one_window(make_limiter):
    slow = make_limiter(limit=1, provisional_s=10)
    other = make_limiter(limit=1, provisional_s=10)
    in_flight = slow.acquire(max_wait_s=0)

    # Provisionally stamped at grant + timeout: the slot stays taken while the call runs.
    _, wait_s = other.try_acquire()
    assert wait_s > 10.0

    slow.release(in_flight)
    completed = stamp_ms(slow, in_flight)
    assert abs(completed - server_ms(slow)) < 500, "re-stamped with the completion time"
    _, wait_s = other.try_acquire()
    # One more window after completion (plus at most the grant's own round trip, by which the
    # completion stamp errs on the late side).
    assert 0 < wait_s <= 1.05, "after completion the slot counts for one more window"

    reservation = other.acquire(max_wait_s=2)
    assert grant_ms(other, reservation) >= completed + 1000


def test_in_window_counts_reservations_in_flight_and_completed(make_limiter):
    limiter = make_limiter(limit=10)
    done = limiter.acquire(max_wait_s=0)
    limiter.release(done)
    limiter.acquire(max_wait_s=0)  # still in flight

    assert limiter.in_window() == 2


def test_budgets_of_different_clients_are_independent(make_limiter):
    org_a = make_limiter(key="client-a", limit=1)
    org_b = make_limiter(key="client-b", limit=1)
    org_a.acquire(max_wait_s=0)
    org_a.cool_down(5)

    reservation = org_b.acquire(max_wait_s=0)  # neither a's full window nor its cool-down

    assert reservation.waited_s < 0.5
    assert org_a.in_window() == 1 + 1, "its call and its cool-down's fill of its limit"
    assert org_b.in_window() == 1


def test_the_completion_stamp_is_never_earlier_than_the_completion_on_the_server_clock(
    make_limiter,
):
    limiter = make_limiter(limit=5, provisional_s=10)
    reservation = limiter.acquire(max_wait_s=0)
    time.sleep(0.3)  # the call runs
    before_release = server_ms(limiter)

    limiter.release(reservation)

    completed = stamp_ms(limiter, reservation)
    assert before_release <= completed < before_release + 200
    assert completed >= reservation.granted_ms + 300


def test_a_release_after_the_window_trimmed_the_reservation_adds_nothing(make_limiter, monkeypatch):
    monkeypatch.setattr(limiter_module, "TRIM_EVERY", 1)
    limiter = make_limiter(limit=5, provisional_s=0.01, window_s=0.2)
    late = limiter.acquire(max_wait_s=0)
    time.sleep(0.3)
    limiter.acquire(max_wait_s=0)  # trims the first, long expired

    limiter.release(late)

    assert limiter.redis.zscore(limiter.log_key, late.member) is None


def test_the_log_stays_bounded_without_an_expiry(make_limiter):
    """At most the limit in the window plus what left it since a process last trimmed."""
    limiter = make_limiter(limit=3, provisional_s=0.01, window_s=0.2)
    for _ in range(3 * TRIM_EVERY // 3 + 2):
        for _ in range(3):
            limiter.release(limiter.acquire(max_wait_s=1))
        time.sleep(0.25)

    assert limiter.redis.zcard(limiter.log_key) <= 3 + TRIM_EVERY
    assert limiter.redis.ttl(limiter.log_key) == -1


def test_entries_that_left_the_window_never_count_trimmed_or_not(make_limiter):
    limiter = make_limiter(limit=3, provisional_s=0.01, window_s=0.2)
    for _ in range(3):
        limiter.release(limiter.acquire(max_wait_s=0))
    with pytest.raises(BudgetExhausted):
        limiter.acquire(max_wait_s=0)
    time.sleep(0.25)

    limiter.acquire(max_wait_s=0)  # the three are older than the window, still in the log

    assert limiter.in_window() == 1


def test_a_grant_is_one_script_of_four_commands_and_its_release_one(make_limiter, r):
    limiter = make_limiter(limit=100)
    limiter.release(limiter.acquire(max_wait_s=0))  # the script loaded once

    counted = commands_during(r, lambda: limiter.release(limiter.acquire(max_wait_s=0)))

    # The server clock, the window's count (a cool-down fills it), the reservation; its re-stamp.
    assert counted == {"evalsha": 1, "time": 1, "zcount": 1, "zadd": 2}


def test_one_orgs_spent_budget_leaves_another_orgs_untouched(make_limiter):
    default = make_limiter(limit=2, window_s=60)
    acme = make_limiter(limit=2, window_s=60, prefix="presence:org:acme")  # same client key
    for _ in range(2):
        default.release(default.acquire(max_wait_s=0))
    with pytest.raises(BudgetExhausted):
        default.acquire(max_wait_s=0)
    default.cool_down(30)

    granted = [acme.acquire(max_wait_s=0) for _ in range(2)]

    assert all(stamp_ms(acme, g) > 0 for g in granted)
    with pytest.raises(BudgetExhausted):
        acme.acquire(max_wait_s=0)
