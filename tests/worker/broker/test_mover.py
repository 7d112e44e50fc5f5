"""The mover: each pass publishes what is due, and in a consuming process writes its taken times
and restores dead workers' holds; a Redis it cannot reach is logged once per outage and never
ends the thread."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker import names
from worker.broker import holders, ledger
from worker.broker.mover import Mover
from worker.embedded_redis import _free_port

RETRY = ledger.Scheduled("t-1", names.WFM_SYNC_TASK, [1], {}, names.WFM_QUEUE)


def test_a_pass_publishes_the_due_retries_at_the_injected_time(r: redis.Redis) -> None:
    sent: list[ledger.Scheduled] = []
    clock = [100.0]
    mover = Mover(r, sent.append, poll_s=0.1, now=lambda: clock[0])
    ledger.schedule(r, RETRY, due=105.0)

    assert mover.run_once() == ledger.Moved()
    clock[0] = 105.0
    assert mover.run_once() == ledger.Moved(published=1)
    assert sent == [RETRY]


def test_an_unreachable_redis_is_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    down = redis.Redis(port=_free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    mover = Mover(down, lambda _entry: None, poll_s=0.1)
    with caplog.at_level(logging.WARNING, logger="worker.broker.mover"):
        assert mover.run_once() is None
        assert mover.run_once() is None
    assert len([r for r in caplog.records if "cannot reach Redis" in r.message]) == 1


def test_the_thread_moves_entries_until_stopped(r: redis.Redis) -> None:
    sent: list[ledger.Scheduled] = []
    mover = Mover(r, sent.append, poll_s=0.05)
    mover.start()
    try:
        ledger.schedule(r, RETRY, due=time.time())
        deadline = time.monotonic() + 5
        while not sent:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        mover.stop()
    assert sent == [RETRY]


def test_a_consuming_pass_writes_its_taken_times_and_restores_dead_holds(r: redis.Redis) -> None:
    """The pass of a process that consumes: what it took goes to the taken times, and a hold of a
    process whose liveness key is gone goes back to its list."""
    tag, now = "tag-1", time.time()
    message = '{"headers": {"id": "req-1"}, "properties": {}}'
    with r.pipeline() as pipe:
        ledger.record_queued(pipe, "req-1", names.PRESENCE_QUEUE, tag, message, now - 60)
        pipe.execute()
    held_at = now - holders.ALIVE_TTL_S - 1
    r.zadd(ledger.QUEUED_KEY, {f"{tag}|a-dead-process": ledger.hold_score(held_at)})
    ledger.TAKEN.note(names.PRESENCE_QUEUE, now - 60)
    restored: list[list[str]] = []
    mover = Mover(r, lambda _e: None, poll_s=0.1, restore=restored.append, now=lambda: now)

    mover.run_once()

    assert r.zscore(ledger.TAKEN_KEY, names.PRESENCE_QUEUE) == pytest.approx(now - 60)
    assert ledger.holds(r) == []
    [back] = r.lrange(names.PRESENCE_QUEUE, 0, -1)
    assert json.loads(back)["headers"]["redelivered"] is True
    assert restored == []  # nothing in kombu's ``unacked``
