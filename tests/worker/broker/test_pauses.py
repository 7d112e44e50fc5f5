"""Paused queues: an org whose budget is spent is left out of the blocking pop until its slot.

The pop must leave a paused queue alone until its pause ends, keep kombu's rotation for the
others, and never be left with nothing to pop (its timeout is how the consumer comes back).
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from kombu.utils.scheduling import round_robin_cycle

from worker.broker import ledger, pauses
from worker.orgs import Org
from worker.runtime import Runtime


@pytest.fixture(autouse=True)
def no_pauses() -> Iterator[None]:
    pauses.resume_all()
    yield
    pauses.resume_all()


def cycle(*queues: str) -> pauses.PausingCycle:
    return pauses.PausingCycle(round_robin_cycle(list(queues)))


def test_a_paused_queue_is_left_out_of_the_pop_until_its_pause_ends() -> None:
    queues = cycle("presence", "presence.acme", "wfm")
    pauses.pause("presence.acme", time.monotonic() + 0.2)

    assert queues.consume(3) == ["presence", "wfm"]
    time.sleep(0.25)
    assert queues.consume(3) == ["presence", "presence.acme", "wfm"]
    assert pauses.paused() == frozenset()


def test_a_pause_is_only_ever_extended() -> None:
    now = time.monotonic()
    pauses.pause("presence.acme", now + 10)
    pauses.pause("presence.acme", now + 1)

    assert pauses.paused(now + 5) == {"presence.acme"}
    assert pauses.paused(now + 11) == frozenset()


def test_with_every_queue_paused_all_are_popped_so_the_pop_still_returns() -> None:
    queues = cycle("presence.a", "presence.b")
    for queue in ("presence.a", "presence.b"):
        pauses.pause(queue, time.monotonic() + 60)

    assert queues.consume(2) == ["presence.a", "presence.b"]


def test_the_rotation_of_the_queues_left_is_kombus() -> None:
    queues = cycle("presence", "presence.acme", "presence.globex")
    queues.rotate("presence")
    pauses.pause("presence.globex", time.monotonic() + 60)

    assert queues.consume(3) == ["presence.acme", "presence"]
    queues.update(["wfm", "presence.globex"])
    assert queues.consume(2) == ["wfm"]


def test_a_consumer_on_the_workers_transport_leaves_a_paused_queue_in_redis(
    redis_url: str,
) -> None:
    names = [f"presence.pause-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    spent, other = (Queue(n, Exchange(n, type="direct"), routing_key=n) for n in names)
    got: list[str] = []
    with Connection(redis_url, transport=ledger.Transport) as connection:
        try:
            with connection.Producer() as producer:
                for queue in (spent, other):
                    producer.publish(queue.name, exchange=queue.exchange, routing_key=queue.name,
                                     declare=[queue], serializer="json")  # fmt: skip
            pauses.pause(spent.name, time.monotonic() + 60)

            def take(body: str, message: Any) -> None:
                got.append(body)
                message.ack()

            with connection.Consumer([spent, other], callbacks=[take]):
                drain(connection, until=lambda: len(got) >= 1, seconds=3)
                drain(connection, until=lambda: len(got) >= 2, seconds=1.5)
                assert got == [other.name], "the paused queue's message stays queued"
                pauses.resume_all()
                drain(connection, until=lambda: len(got) >= 2, seconds=3)
            assert got == [other.name, spent.name]
        finally:
            channel: Any = connection.default_channel
            channel.client.delete(*names)


def drain(connection: Connection, *, until: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, socket.timeout):
            connection.drain_events(timeout=0.3)


def test_an_org_whose_tasks_fill_their_share_is_left_out_until_one_ends() -> None:
    queues = cycle("presence.acme", "presence.globex")
    with pauses.occupying("presence.acme", 2):
        assert queues.consume(2) == ["presence.acme", "presence.globex"]
        with pauses.occupying("presence.acme", 2):
            assert queues.consume(2) == ["presence.globex"]
        assert queues.consume(2) == ["presence.acme", "presence.globex"]
    assert pauses.paused() == frozenset()


def test_a_failing_task_still_gives_its_share_back() -> None:
    seen: list[frozenset[str]] = []

    def failing_task() -> None:
        with pauses.occupying("presence.acme", 1):
            seen.append(pauses.paused())
            raise RuntimeError("the task failed")

    with pytest.raises(RuntimeError):
        failing_task()
    assert seen == [{"presence.acme"}]
    assert pauses.paused() == frozenset()


# -- an org with a deep backlog --------------------------------------------------------------------
def test_the_share_is_one_only_while_the_backlog_is_over_two_minutes_of_budget() -> None:
    assert pauses.task_share(backlog=600, budget_per_minute=300, share=4) == 4
    assert pauses.task_share(backlog=601, budget_per_minute=300, share=4) == 1
    assert pauses.task_share(backlog=0, budget_per_minute=300, share=4) == 4
    assert pauses.task_share(backlog=10**6, budget_per_minute=0, share=4) == 4  # no budget set


def test_an_org_with_a_deep_backlog_runs_one_task_at_a_time_beside_other_orgs(settings) -> None:
    acme_settings = settings.model_copy(update={"rate_limit_per_minute": 5})
    runtime = Runtime.build(acme_settings, org=Org("acme", acme_settings))
    runtime.shares_process = True
    queue = runtime.org.queue
    runtime.redis.delete(queue)
    try:
        with runtime.occupying():
            shallow = pauses.paused()
        runtime.redis.rpush(queue, *[b"waiting"] * 11)  # over 2 minutes of 5 per minute
        with runtime.occupying():
            cached = pauses.paused()  # the length is read at most once a second
        runtime._backlog = (float("-inf"), 0)
        with runtime.occupying():
            deep = pauses.paused()
    finally:
        runtime.redis.delete(queue)
        runtime.http.close()
        runtime.redis.close()
    assert shallow == frozenset()
    assert cached == frozenset()
    assert deep == {queue}
    assert pauses.paused() == frozenset()
