"""A worker SIGKILLed while it has a request, with real processes: the request still ends in one
terminal row, without manual steps and long before the visibility timeout (production's 600 s).

* Killed between the pop and the hold (the worker's app with a hook that SIGKILLs it right
  there): the broker ledger's entry, written with the producer's push, is pushed again by the
  next worker's mover. Before: the message was gone (one request per killed worker).
* Killed while it holds a message (mid-PATCH): its liveness key expires, and the next worker's
  mover puts the message it held back on its list within seconds. Before: it waited in
  ``unacked`` for the visibility timeout.
* Killed while a retry waits: the retry is in the ledger's schedule, not in the dead worker's
  memory, and the next worker publishes it when due. Before: it sat in ``unacked`` until the
  visibility timeout (an hour) had passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.api import PresenceProducer
from producer.schema import PresenceUpdate
from tests.support.pipeline import Pipeline
from tests.support.processes import tail
from worker import names
from worker.broker import ledger

pytestmark = pytest.mark.timeout(240)
VISIBILITY_TIMEOUT_S = 600  # production's: far beyond any wait of these tests
CHECK_AFTER_S = 3  # a queued message is looked up after 3 s (production: 120 s)
BOUND_S = 60  # a request of a killed worker ends within this, ten times below the timeout


@pytest.fixture
def producer(pipeline: Pipeline) -> Iterator[PresenceProducer]:
    sender = PresenceProducer(pipeline.redis_url)
    yield sender
    sender.close()


def _wait(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_message_popped_by_a_worker_killed_before_holding_it_still_ends(
    pipeline: Pipeline, producer: PresenceProducer, tmp_path: Path
) -> None:
    env = pipeline.env(
        BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S, LEDGER_CHECK_AFTER_S=CHECK_AFTER_S
    )
    log = tmp_path / "dying.log"
    with log.open("wb") as out:
        dying = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.support.dying_worker", "worker",
             "--pool", "threads", "--concurrency", "1", "-Q", names.PRESENCE_QUEUE,
             "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    [agent] = pipeline.agents(1, online=True)
    update = PresenceUpdate.model_validate(pipeline.update(agent["id"], "Break", reason="Coffee"))
    request_id = producer.send(update)

    dying.wait(timeout=60)
    assert dying.returncode == -9, tail(log)
    # The kill hit the window: the message is neither queued nor held, only the ledger has it.
    assert pipeline.redis.llen(names.PRESENCE_QUEUE) == 0
    assert pipeline.unacked(pipeline.redis) == []
    assert [e["id"] for e in ledger.pending(pipeline.redis)] == [request_id]
    killed_at = time.monotonic()

    pipeline.start(
        1,
        warm_up=False,
        BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S,
        LEDGER_CHECK_AFTER_S=CHECK_AFTER_S,
    )
    rows = pipeline.wait_rows(1, request_ids=[request_id], timeout_s=BOUND_S)

    assert [(r.request_id, r.outcome) for r in rows] == [(request_id, "confirmed")]
    assert time.monotonic() - killed_at < BOUND_S
    pipeline.wait_idle(timeout_s=30)
    assert len(pipeline.rows([request_id])) == 1
    assert "re-enqueued 1 message(s)" in pipeline.full_logs()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_message_held_by_a_killed_worker_is_restored_long_before_the_visibility_timeout(
    pipeline: Pipeline, pool: str
) -> None:
    fleet = pipeline.start(
        1, pool=pool, warm_up=False, BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S
    )
    [agent] = pipeline.agents(1, online=True)
    pipeline.admin("POST", "/faults/latency", {"endpoint": "presence.patch", "latency_ms": 30_000})
    request_id = pipeline.send(pipeline.update(agent["id"], "Break", reason="Coffee"))
    _wait(lambda: pipeline.unacked(pipeline.redis) != [], 60, f"never held\n{fleet.logs()}")
    time.sleep(1.0)  # inside the slow PATCH
    fleet.kill(0)
    killed_at = time.monotonic()
    pipeline.admin("DELETE", "/faults")

    pipeline.start(1, pool=pool, warm_up=False, BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S)
    rows = pipeline.wait_rows(1, request_ids=[request_id], timeout_s=BOUND_S)

    assert [r.request_id for r in rows] == [request_id]
    assert rows[0].outcome in {"confirmed", "applied_unconfirmed"}
    assert time.monotonic() - killed_at < BOUND_S
    pipeline.wait_idle(timeout_s=30)
    assert len(pipeline.rows([request_id])) == 1
    assert pipeline.unacked(pipeline.redis) == []
    assert "held by a dead worker" in pipeline.full_logs()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_retry_held_by_a_killed_worker_is_run_by_the_next_one(
    pipeline: Pipeline, pool: str
) -> None:
    # Each attempt fails (503) and is retried after 3-6 s: long enough to kill the worker while
    # the retry waits.
    waits = {"RETRY_BACKOFF_S": 6, "RETRY_BACKOFF_MAX_S": 6}
    fleet = pipeline.start(
        1, pool=pool, warm_up=False, BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S, **waits
    )
    [agent] = pipeline.agents(1, online=True)
    pipeline.admin("POST", "/faults/errors", {"endpoint": "presence.patch", "status": 503})
    request_id = pipeline.send(pipeline.update(agent["id"], "Break", reason="Coffee"))

    # The retry is written and the message acknowledged: only the ledger has the request.
    _wait(
        lambda: (
            any(e["state"] == "scheduled" for e in ledger.pending(pipeline.redis))
            and pipeline.unacked(pipeline.redis) == []
        ),
        60,
        f"no retry was scheduled\n{fleet.logs()}",
    )
    fleet.kill(0)
    killed_at = time.monotonic()
    pipeline.admin("DELETE", "/faults")

    pipeline.start(
        1, pool=pool, warm_up=False, BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S, **waits
    )
    rows = pipeline.wait_rows(1, request_ids=[request_id], timeout_s=BOUND_S)

    assert [(r.request_id, r.outcome) for r in rows] == [(request_id, "confirmed")]
    assert time.monotonic() - killed_at < BOUND_S
    pipeline.wait_idle(timeout_s=30)
    assert len(pipeline.rows([request_id])) == 1


def test_a_message_pushed_again_after_it_was_applied_changes_nothing(
    pipeline: Pipeline, producer: PresenceProducer
) -> None:
    """The ledger may push a message again that was applied (its clear never reached Redis, or
    a pop raced the check): the duplicate finds the request's row — one row, one PATCH."""
    [agent] = pipeline.agents(1, online=True)
    update = PresenceUpdate.model_validate(pipeline.update(agent["id"], "Break", reason="Coffee"))
    request_id = producer.send(update)
    [written] = ledger.pending(pipeline.redis)  # before any worker takes it
    fleet = pipeline.start(
        1,
        warm_up=False,
        BROKER_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S,
        LEDGER_CHECK_AFTER_S=CHECK_AFTER_S,
    )
    assert [r.outcome for r in pipeline.wait_rows(1, request_ids=[request_id])] == ["confirmed"]
    patches = pipeline.route_count("presence.patch")

    # As if the clear had been lost: the queued entry is back, its message long done.
    pipeline.redis.hset(ledger.ENTRIES_KEY, written["key"], json.dumps(
        {k: written[k] for k in ("state", "id", "list", "tag", "message")}))  # fmt: skip
    pipeline.redis.zadd(ledger.QUEUED_KEY, {written["key"]: time.time() - CHECK_AFTER_S})
    _wait(lambda: "re-enqueued 1 message(s)" in fleet.logs(), 30, fleet.logs())
    _wait(lambda: pipeline.queue_length() == 0 and ledger.pending(pipeline.redis) == [], 30, "")

    assert [r.outcome for r in pipeline.rows([request_id])] == ["confirmed"]
    assert pipeline.route_count("presence.patch") == patches
