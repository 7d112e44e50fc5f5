"""The one retry policy: backoff, Retry-After floor, retry limit, request age."""

from __future__ import annotations

import pytest

from worker.retry import (
    MAX_EXPONENT,
    Delay,
    GiveUp,
    PendingDeadLetter,
    Retry,
    RetryLater,
    RetryPolicy,
)

TOP = RetryPolicy(first_s=2, max_s=300, max_failures=3, max_age_s=900, uniform=lambda a, b: b)


@pytest.mark.parametrize(("failures", "delay"), [(0, 2), (1, 4), (4, 32), (8, 300), (10**6, 300)])
def test_backoff_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    assert TOP.backoff_s(failures) == delay


def test_backoff_is_jittered_over_its_upper_half() -> None:
    low = RetryPolicy(first_s=2, max_s=300, max_failures=3, uniform=lambda a, b: a)
    assert low.backoff_s(3) == 8


def test_backoff_never_comes_before_retry_after() -> None:
    assert TOP.backoff_s(0, retry_after_s=45) == 45


def test_a_failure_is_retried_until_the_limit() -> None:
    failure = RetryLater(Delay.FAILURE, "503", countdown_s=0, code="service.unavailable")
    assert TOP.decide(failure, failures=2, age_s=0) == Retry(8, 3)
    assert TOP.decide(failure, failures=3, age_s=0) == GiveUp(
        "service.unavailable", "Gave up after 4 attempts: 503"
    )


def test_a_failure_without_a_code_gives_up_with_one() -> None:
    decision = TOP.decide(RetryLater(Delay.FAILURE, "boom"), failures=3, age_s=None)
    assert isinstance(decision, GiveUp)
    assert decision.code == "retries.exhausted"


def test_waits_do_not_count_as_failures_but_end_with_the_request_age() -> None:
    wait = RetryLater(Delay.WAIT, "budget", countdown_s=10)
    assert TOP.decide(wait, failures=1, age_s=100) == Retry(10.5, 1)
    decision = TOP.decide(wait, failures=1, age_s=901)
    assert isinstance(decision, GiveUp)
    assert decision.code == "too.old"
    assert TOP.decide(wait, failures=1, age_s=None) == Retry(10.5, 1)  # no age: a wave


def test_a_deferral_follows_its_own_deadline_not_the_age() -> None:
    defer = RetryLater(Delay.DEFER, "no room", countdown_s=10)
    assert TOP.decide(defer, failures=0, age_s=10_000) == Retry(10, 0)


# -- a dead-letter that could not be written yet --------------------------------------------------
def test_a_pending_dead_letter_round_trips_through_its_message() -> None:
    pending = PendingDeadLetter(GiveUp("retries.exhausted", "Gave up after 4 attempts"), 0)
    carried = pending.next_try().to_message()
    assert carried == {
        "code": "retries.exhausted",
        "message": "Gave up after 4 attempts",
        "tries": 1,
    }
    assert PendingDeadLetter.parse(carried) == PendingDeadLetter(pending.give_up, 1)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "dead",
        {"code": "x", "message": "y"},
        {"code": 1, "message": "y", "tries": 0},
        {"code": "x", "message": "y", "tries": True},
        {"code": "x", "message": "y", "tries": "1"},
        {"code": "x", "message": "y", "tries": 0, "extra": 1},
    ],
)
def test_anything_but_a_pending_dead_letter_is_none(value: object) -> None:
    assert PendingDeadLetter.parse(value) is None


def test_a_pending_dead_letters_tries_are_kept_within_the_backoffs_range() -> None:
    parsed = PendingDeadLetter.parse({"code": "x", "message": "y", "tries": 10**9})
    assert parsed is not None
    assert parsed.tries == MAX_EXPONENT
    assert PendingDeadLetter.parse({"code": "x", "message": "y", "tries": -5}) == PendingDeadLetter(
        GiveUp("x", "y"), 0
    )
