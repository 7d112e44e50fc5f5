"""republish: a retry goes to the ledger's schedule before Celery acknowledges the message, and a
schedule the broker cannot take keeps its message (never ``Reject(requeue=False)``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from celery import Task
from celery.exceptions import Reject, Retry

from tests.support.clock import ManualClock
from worker import names
from worker.broker import ledger
from worker.broker.retry import republish


class FlakyBroker:
    """A schedule store that fails ``failures`` times, as an unreachable Redis does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[ledger.Scheduled, float]] = []

    def __call__(self, entry: ledger.Scheduled, due: float) -> None:
        self.calls.append((entry, due))
        if len(self.calls) <= self.failures:
            raise redis.ConnectionError("broker down")


TASK = SimpleNamespace(
    name=names.UPDATE_TASK,
    request=SimpleNamespace(
        id="task-1",
        args=["original"],
        kwargs={},
        retries=0,
        delivery_info={"routing_key": "presence"},
    ),
    app=SimpleNamespace(conf=SimpleNamespace(broker_url="redis://unused", task_routes={})),
)


def _republish(store: FlakyBroker, clock: ManualClock, **options: Any) -> None:
    republish(
        cast(Task[Any, Any], TASK),
        countdown_s=1.5,
        wait_s=10,
        poll_s=2,
        store=store,
        sleep=clock.sleep,
        clock=clock,
        now=lambda: 1000.0 + clock.now,
        **options,
    )


def test_a_retry_is_scheduled_then_acknowledged_through_celerys_retry() -> None:
    store, clock = FlakyBroker(failures=0), ManualClock()
    with pytest.raises(Retry) as retried:
        _republish(store, clock, args=("payload",), kwargs={"failures": 2})
    assert retried.value.when == 1.5
    assert store.calls == [
        (ledger.Scheduled("task-1", names.UPDATE_TASK, ["payload"], {"failures": 2}, "presence",
                          retries=1),
         1001.5),
    ]  # fmt: skip


def test_the_retry_counts_one_more_attempt_than_the_message_being_retried() -> None:
    store = FlakyBroker(failures=0)
    task = SimpleNamespace(
        name=TASK.name,
        request=SimpleNamespace(**{**vars(TASK.request), "retries": 2}),
        app=TASK.app,
    )
    with pytest.raises(Retry):
        republish(cast(Task[Any, Any], task), countdown_s=1, wait_s=0, store=store, now=lambda: 0.0)
    [(entry, _due)] = store.calls
    assert entry.retries == 3
    assert ledger.Scheduled.from_json(entry.to_json()).retries == 3


def test_without_arguments_the_current_message_is_retried() -> None:
    store, clock = FlakyBroker(failures=0), ManualClock()
    with pytest.raises(Retry):
        _republish(store, clock)
    assert store.calls[0][0].args == ["original"]


def test_a_schedule_written_again_within_the_wait_is_celerys_retry() -> None:
    store, clock = FlakyBroker(failures=3), ManualClock()
    with pytest.raises(Retry):
        _republish(store, clock)
    assert len(store.calls) == 4
    assert store.calls[-1][1] == 1000.0 + 6 + 1.5  # due counted from the write that succeeded
    assert clock.now == 6


def test_a_broker_down_for_longer_than_the_wait_keeps_the_message_for_redelivery() -> None:
    store, clock = FlakyBroker(failures=100), ManualClock()
    with pytest.raises(Reject) as rejected:
        _republish(store, clock)
    assert rejected.value.requeue is True  # type: ignore[attr-defined]
    assert isinstance(rejected.value.reason, redis.ConnectionError)  # type: ignore[attr-defined]
    # Polled every 2 s for 10 s, then given back: at most one redelivery per wait, no hot loop.
    assert len(store.calls) == 6
    assert clock.now == 10


def test_a_retry_lands_in_the_real_ledger(r: redis.Redis, redis_url: str) -> None:
    task = SimpleNamespace(
        name=TASK.name, request=TASK.request, app=SimpleNamespace(conf=SimpleNamespace(
            broker_url=redis_url, task_routes={}))
    )  # fmt: skip
    with pytest.raises(Retry):
        republish(cast(Task[Any, Any], task), countdown_s=60, wait_s=1, now=lambda: 1000.0)
    [entry] = ledger.pending(r)
    assert (entry["state"], entry["id"], entry["at"]) == ("scheduled", "task-1", 1060.0)


def test_the_messages_expires_is_kept_across_the_retry() -> None:
    store = FlakyBroker(failures=0)
    task = SimpleNamespace(
        name=TASK.name,
        request=SimpleNamespace(**{**vars(TASK.request), "expires": "2030-01-01T00:00:00+00:00"}),
        app=TASK.app,
    )
    with pytest.raises(Retry):
        republish(cast(Task[Any, Any], task), countdown_s=1, wait_s=0, store=store, now=lambda: 0.0)
    [(entry, _due)] = store.calls
    assert entry.expires == "2030-01-01T00:00:00+00:00"
    assert ledger.Scheduled.from_json(entry.to_json()) == entry
