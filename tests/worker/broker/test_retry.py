"""republish: a retry the broker cannot take keeps its message (never ``Reject(requeue=False)``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from celery import Task
from celery.exceptions import Reject, Retry

from worker.broker.retry import republish


class FlakyBroker:
    """A task whose ``retry`` fails to publish ``failures`` times, as Celery's does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.request = SimpleNamespace(id="task-1")

    def retry(self, **options: Any) -> Retry:
        self.calls.append(options)
        if len(self.calls) <= self.failures:
            raise Reject(ConnectionError("broker down"), requeue=False)
        raise Retry("published", None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _republish(task: FlakyBroker, clock: Clock) -> None:
    republish(
        cast(Task[Any, Any], task),
        args=("payload",),
        kwargs={"failures": 2},
        countdown_s=1.5,
        wait_s=10,
        poll_s=2,
        sleep=clock.sleep,
        clock=clock,
    )


def test_a_publish_that_succeeds_again_within_the_wait_is_celerys_retry() -> None:
    task, clock = FlakyBroker(failures=3), Clock()
    with pytest.raises(Retry):
        _republish(task, clock)
    assert len(task.calls) == 4
    assert task.calls[-1] == {"args": ("payload",), "kwargs": {"failures": 2}, "countdown": 1.5}
    assert clock.now == 6


def test_a_broker_down_for_longer_than_the_wait_keeps_the_message_for_redelivery() -> None:
    task, clock = FlakyBroker(failures=100), Clock()
    with pytest.raises(Reject) as rejected:
        _republish(task, clock)
    assert rejected.value.requeue is True  # type: ignore[attr-defined]
    assert isinstance(rejected.value.reason, ConnectionError)  # type: ignore[attr-defined]
    # Polled every 2 s for 10 s, then given back: at most one redelivery per wait, no hot loop.
    assert len(task.calls) == 6
    assert clock.now == 10
