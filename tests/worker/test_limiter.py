"""SharedRateLimiter: one sliding-window budget per OAuth client, shared through Redis.

Each SharedRateLimiter instance with its own Redis connection stands for one worker process.
Windows are shortened to about a second; grant times are read back from Redis (the provisional
stamp minus the provisional delay), i.e. on the server clock the limiter itself uses.
"""

from __future__ import annotations

import heapq
import threading
import time

import pytest
import redis

from tests.support.redis_db import commands_during
from worker import limiter as limiter_module
from worker.flow import steps
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
    first.flush()
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
    time.sleep(1.1)
    member, wait_s = other.try_acquire("other")
    assert member is None, "the slot is still taken a window after the grant"
    # The waiter's ticket counts on the call completing soon, not at its timeout.
    assert 0.9 < wait_s <= 1.0

    slow.release(in_flight)
    slow.flush()
    completed = stamp_ms(slow, in_flight)
    assert abs(completed - server_ms(slow)) < 500, "re-stamped with the completion time"
    assert other.try_acquire("other")[0] is None, "after completion it counts one more window"

    with limiter_module.waiting_as("other"):
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
    limiter.flush()

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
    limiter.flush()

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


def test_a_grant_is_one_script_of_three_commands_that_carries_the_last_calls_re_stamp(
    make_limiter, r
):
    limiter = make_limiter(limit=100)
    limiter.release(limiter.acquire(max_wait_s=0))  # the script loaded once
    earlier = limiter.acquire(max_wait_s=0)
    limiter.release(earlier)
    completed = earlier.granted_ms + 1  # at least: the re-stamp counts from before the grant

    counted = commands_during(r, lambda: limiter.acquire(max_wait_s=0))

    # The server clock, the window's count (a cool-down fills it), the reservation with the
    # earlier call's re-stamp.
    assert counted == {"evalsha": 1, "time": 1, "zcount": 1, "zadd": 1}
    assert completed <= stamp_ms(limiter, earlier) < earlier.granted_ms + 1000


def test_a_re_stamp_no_grant_carries_is_written_within_its_delay(make_limiter):
    limiter = make_limiter(limit=100, provisional_s=10)
    reservation = limiter.acquire(max_wait_s=0)
    limiter.release(reservation)
    assert stamp_ms(limiter, reservation) > server_ms(limiter) + 5000, "still provisional"

    time.sleep(limiter_module.RESTAMP_DELAY_S + 0.3)

    assert abs(stamp_ms(limiter, reservation) - server_ms(limiter)) < 1000


def test_a_refused_grant_writes_the_re_stamps_it_carries(make_limiter):
    limiter = make_limiter(limit=1, provisional_s=10)
    reservation = limiter.acquire(max_wait_s=0)
    limiter.release(reservation)

    assert limiter.try_acquire("late")[0] is None

    assert abs(stamp_ms(limiter, reservation) - server_ms(limiter)) < 1000


def test_keys_granted_with_a_call_are_set_exactly_when_it_is_let_through(make_limiter, r):
    limiter = make_limiter(limit=1)
    with limiter_module.granting_with({"mark:a": ("sent", 30)}):
        limiter.acquire(max_wait_s=0)
    with (
        limiter_module.granting_with({"mark:b": ("sent", 30)}),
        pytest.raises(BudgetExhausted),
    ):
        limiter.acquire(max_wait_s=0)

    assert r.get("mark:a") == b"sent"
    assert 25 < r.ttl("mark:a") <= 30
    assert r.get("mark:b") is None, "refused: never sent, never marked"


def fill(limiter: SharedRateLimiter) -> list[int]:
    """Use the whole window with completed calls; returns their completion stamps, oldest first."""
    stamps = []
    for _ in range(limiter.limit):
        reservation = limiter.acquire(max_wait_s=0)
        limiter.release(reservation)
        limiter.flush()
        stamps.append(stamp_ms(limiter, reservation))
    return sorted(stamps)


def ticket_ms(limiter: SharedRateLimiter, waiter: str) -> int:
    score = limiter.redis.zscore(limiter.line_key, waiter)
    assert score is not None, f"{waiter} holds no ticket"
    return int(score)


def test_refused_waiters_get_tickets_spaced_as_the_window_frees(make_limiter):
    limit, window_ms = 10, 10_000
    limiter = make_limiter(limit=limit, window_s=window_ms / 1000, provisional_s=0.01)
    stamps = fill(limiter)

    for w in range(1000):
        member, _ = limiter.try_acquire(f"waiter-{w}")
        assert member is None
    tickets = [ticket_ms(limiter, f"waiter-{w}") for w in range(1000)]

    # Waiter w: the (w mod limit)-th oldest call leaves the window, plus (w div limit) windows.
    assert tickets == [stamps[w % limit] + window_ms * (1 + w // limit) for w in range(1000)]
    assert tickets == sorted(tickets), "the line is served in the order it was joined"
    for at in tickets:  # no slot promised twice: at most the limit per rolling window
        assert sum(1 for other in tickets if at - window_ms < other <= at) <= limit


def test_the_first_waiters_tickets_are_when_the_window_frees_so_the_next_one_starts_on_time(
    make_limiter,
):
    limiter = make_limiter(limit=3, provisional_s=0.01)
    stamps = fill(limiter)

    for w in range(3):
        limiter.try_acquire(f"waiter-{w}")

    assert [ticket_ms(limiter, f"waiter-{w}") for w in range(3)] == [s + 1000 for s in stamps]


def test_a_waiter_asking_again_before_its_ticket_keeps_it_and_is_not_counted_again(make_limiter):
    limiter = make_limiter(limit=2, window_s=5.0, provisional_s=0.01)
    stamps = fill(limiter)
    _, first_wait = limiter.try_acquire("early")
    ticket = ticket_ms(limiter, "early")

    for _ in range(3):
        member, wait_s = limiter.try_acquire("early")
        assert member is None
        assert wait_s <= first_wait
    limiter.try_acquire("next")

    assert ticket_ms(limiter, "early") == ticket == stamps[0] + 5000
    assert ticket_ms(limiter, "next") == stamps[1] + 5000, "the second in line, not the third"
    assert limiter.redis.zcard(limiter.line_key) == 2
    assert 0 < limiter.redis.pttl(limiter.line_key) <= 2 * 5000 + 100, "the line expires"


def test_a_waiter_whose_ticket_passed_and_who_is_still_refused_gets_a_new_one_at_the_front(
    make_limiter,
):
    limiter = make_limiter(limit=1, window_s=0.5, provisional_s=0.01)
    fill(limiter)
    limiter.try_acquire("unlucky")
    for w in range(5):
        limiter.try_acquire(f"behind-{w}")
    passed = ticket_ms(limiter, "unlucky")
    time.sleep(max(0.0, (passed - server_ms(limiter)) / 1000) + 0.01)
    limiter.release(limiter.acquire(max_wait_s=0))  # someone not in line takes the slot

    member, wait_s = limiter.try_acquire("unlucky")

    assert member is None
    reissued = ticket_ms(limiter, "unlucky")
    assert reissued > passed
    assert wait_s <= 0.55, "the slot after the one it lost, not the back of the line"
    assert reissued < ticket_ms(limiter, "behind-4")


def test_the_lines_of_different_clients_are_independent(make_limiter):
    org_a = make_limiter(key="client-a", limit=2, window_s=5.0, provisional_s=0.01)
    org_b = make_limiter(key="client-b", limit=2, window_s=5.0, provisional_s=0.01)
    fill(org_a)
    stamps_b = fill(org_b)
    for w in range(50):
        org_a.try_acquire(f"a-{w}")

    org_b.try_acquire("b-0")

    assert ticket_ms(org_b, "b-0") == stamps_b[0] + 5000, "first in its own line"
    assert org_b.redis.zcard(org_b.line_key) == 1


def test_without_a_waiter_id_each_acquire_is_one_waiter_through_its_inline_waits(make_limiter):
    limiter = make_limiter(limit=1, provisional_s=0.01, sleep=SleepLog())
    fill(limiter)

    limiter.release(limiter.acquire(max_wait_s=2))

    assert limiter.redis.zcard(limiter.line_key) == 1, "ticketed once, however often it asked"


def test_waiting_as_names_the_waiter_of_every_acquire_inside(make_limiter):
    limiter = make_limiter(limit=1, window_s=5.0, provisional_s=0.01)
    fill(limiter)

    for _ in range(2):
        with limiter_module.waiting_as("request-1"), pytest.raises(BudgetExhausted) as caught:
            limiter.acquire(max_wait_s=0.05)
        assert caught.value.inline_wait_s == 0.05

    assert limiter.redis.zrange(limiter.line_key, 0, -1) == [b"request-1"]


def test_a_backlog_far_above_the_budget_is_refused_about_once_per_request_not_once_per_window(
    make_limiter,
):
    """400 requests, 20 per window: re-scheduled as the flow does (to come back its inline wait
    before the ticket, and wait the rest inline), most are refused once instead of up to
    400 / 20 times. The inline wait is a fifth of the window, as the flow's is a small share of
    a minute: it absorbs the few milliseconds a line drifts per window on a real Redis (tickets
    further than a window away assume each call completes as it is granted), which a window
    shortened to 0.3 s would otherwise turn into refusals."""
    requests, limit, window_s = 400, 20, 0.3
    inline_wait_s = window_s / 5
    limiter = make_limiter(limit=limit, window_s=window_s, provisional_s=0.01)
    attempts = dict.fromkeys(range(requests), 0)
    due: list[tuple[float, int]] = [(0.0, n) for n in range(requests)]
    heapq.heapify(due)
    started = time.monotonic()
    while due:
        at, n = heapq.heappop(due)
        time.sleep(max(0.0, at - (time.monotonic() - started)))
        attempts[n] += 1
        try:
            with limiter_module.waiting_as(f"request-{n}"):
                limiter.release(limiter.acquire(max_wait_s=inline_wait_s))
        except BudgetExhausted as exc:
            later = steps.budget_wait(exc)
            heapq.heappush(due, (time.monotonic() - started + later.countdown_s, n))
    elapsed = time.monotonic() - started

    counts = sorted(attempts.values())
    # Told one shared next slot, the last would be refused once per window: 400 / 20 = 20.
    assert sum(counts) / requests < 2.5, counts[-20:]
    assert counts[requests // 2] <= 2, "most come back once, at their ticket"
    assert counts[-1] < requests // limit // 2, counts[-20:]
    # The budget stays used: about one window per `limit` requests after the first.
    assert elapsed < (requests / limit - 1) * window_s * 1.25


def test_waiting_in_line_costs_nothing_while_the_budget_was_not_exhausted(make_limiter, r):
    limiter = make_limiter(limit=5, window_s=60)
    limiter.release(limiter.acquire(max_wait_s=0))

    assert commands_during(r, lambda: limiter.wait_in_line(0.05)) == {}


def test_after_an_exhaustion_a_request_waits_in_line_before_its_work_reserving_nothing(
    make_limiter,
):
    limiter = make_limiter(limit=2, window_s=1.0)
    for _ in range(2):
        limiter.release(limiter.acquire(max_wait_s=0))
    with pytest.raises(BudgetExhausted):
        limiter.acquire(max_wait_s=0)  # this process has now seen the budget exhausted

    with limiter_module.waiting_as("request-1"), pytest.raises(BudgetExhausted) as refused:
        limiter.wait_in_line(0.0)
    ticket = refused.value.retry_in_s
    assert 0 < ticket <= 1.1  # second in line: the second entry leaves the window
    assert limiter.in_window() == 2, "a wait in line reserves no slot"

    with limiter_module.waiting_as("request-1"):
        limiter.wait_in_line(ticket + 0.5)  # its turn: returns with a free slot, still free
    assert limiter.in_window() < 2
    with limiter_module.waiting_as("request-1"):
        limiter.release(limiter.acquire(max_wait_s=0))  # the slot it waited for


def test_a_refusal_tells_when_the_refused_callers_slot_frees(make_limiter):
    limiter = make_limiter(limit=1, window_s=1.0)
    told: list[float] = []
    limiter.on_exhausted = told.append
    limiter.release(limiter.acquire(max_wait_s=0))
    assert told == []

    before = time.monotonic()
    with pytest.raises(BudgetExhausted) as refused:
        limiter.acquire(max_wait_s=0)

    assert len(told) == 1
    assert told[0] == pytest.approx(before + refused.value.retry_in_s, abs=0.05)


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
