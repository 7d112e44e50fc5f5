"""The broker ledger against a real Redis: a ledgered push writes its entry in the same round
trip, the consumer's hold is one command and the entry its held copy until the ack,
:func:`move_due` (with an injected clock) pushes again a message popped by a worker that died
before holding it, leaves waiting and held ones alone, and publishes scheduled retries once when
due; a dead or stuck worker's holds are put back on their list."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from producer.api import PresenceProducer
from producer.schema import PresenceUpdate
from tests.support.redis_db import commands_during
from worker import names
from worker.broker import holders, ledger


@pytest.fixture
def producer(redis_url: str) -> Iterator[PresenceProducer]:
    sender = PresenceProducer(redis_url)
    yield sender
    sender.close()


@pytest.fixture
def consumer(redis_url: str) -> Iterator[Any]:
    """A channel of the worker's kind, taking messages as Celery's consumer does."""
    with Connection(redis_url, transport=ledger.Transport) as connection:
        yield connection.default_channel


def _update(user: int = 1) -> PresenceUpdate:
    return PresenceUpdate(
        user_id=str(uuid.UUID(int=user)),
        state="Available",
        source="test",
        requested_at=datetime.now(UTC),
    )


def _entries(r: redis.Redis) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in ledger.pending(r)}


def _later(seconds: float = ledger.CHECK_AFTER_S + 1) -> float:
    return time.time() + seconds


def test_a_published_update_has_an_entry_that_is_its_held_copy_until_the_ack(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    request_id = producer.send(_update())

    entry = _entries(r)[request_id]
    assert (entry["state"], entry["holder"]) == ("queued", None)
    assert entry["list"] == names.PRESENCE_QUEUE
    assert [m.decode() for m in r.lrange(names.PRESENCE_QUEUE, 0, -1)] == [entry["message"]]
    marked = json.loads(entry["message"])["properties"][ledger.MARK]
    assert marked == {"list": names.PRESENCE_QUEUE, "pushed": entry["pushed"]}

    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None
    assert message.headers["id"] == request_id
    assert not r.hexists(ledger.UNACKED_KEY, message.delivery_tag)  # no second copy
    assert _entries(r)[request_id]["holder"] == holders.PROCESS_ID

    message.ack()
    assert _entries(r) == {}
    assert len(ledger.holds(r)) == 0


def test_a_message_popped_by_a_worker_that_died_is_pushed_again_once(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    request_id = producer.send(_update())
    assert r.brpop([names.PRESENCE_QUEUE], timeout=1) is not None  # popped, never held

    assert ledger.move_due(r, _never, now=time.time()) == ledger.Moved()  # not due yet
    now = _later()
    moved = ledger.move_due(r, _never, now=now)
    assert moved.requeued == 1
    assert r.llen(names.PRESENCE_QUEUE) == 1
    assert _entries(r)[request_id]["pushed"] == pytest.approx(now)  # at the back again
    again = ledger.move_due(r, _never, now=_later())  # looked at again later: still waiting
    assert (again.requeued, r.llen(names.PRESENCE_QUEUE)) == (0, 1)

    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None
    assert message.headers["id"] == request_id
    message.ack()
    assert _entries(r) == {}


def test_a_long_queue_is_searched_only_once_a_newer_message_was_taken(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    ids = [producer.send(_update(n + 1)) for n in range(5)]
    assert r.brpop([names.PRESENCE_QUEUE], timeout=1) is not None  # the oldest, lost

    # Four still queued, more than scan_max, none newer taken: the lost one is not found yet.
    first = ledger.move_due(r, _never, now=_later(), scan_max=2)
    assert (first.requeued, first.waiting) == (0, 5)

    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)  # a newer one is taken
    assert message is not None
    assert message.headers["id"] == ids[1]
    ledger.TAKEN.write(r)  # as the consumer's mover does on its next pass
    second = ledger.move_due(r, _never, now=_later(2 * ledger.CHECK_AFTER_S + 2), scan_max=2)

    assert (second.requeued, second.waiting) == (1, 4)  # the held one waits too
    assert r.llen(names.PRESENCE_QUEUE) == 4
    assert set(_entries(r)) == set(ids)


def test_a_message_still_waiting_in_its_queue_is_not_duplicated(
    r: redis.Redis, producer: PresenceProducer
) -> None:
    ids = [producer.send(_update(n + 1)) for n in range(3)]

    moved = ledger.move_due(r, _never, now=_later())

    assert (moved.waiting, moved.requeued) == (3, 0)
    assert r.llen(names.PRESENCE_QUEUE) == 3
    assert set(_entries(r)) == set(ids)
    assert all(e["at"] > time.time() + ledger.CHECK_AFTER_S for e in _entries(r).values())


def test_a_held_message_is_never_pushed_again_while_its_holder_lives(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    request_id = producer.send(_update())
    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None
    holders.beat(r)

    moved = ledger.move_due(r, _never, now=_later())
    holds = ledger.orphaned_holds(r, now=_later(), visibility_s=3600)

    assert (moved.waiting, moved.requeued, holds) == (1, 0, [])
    assert r.llen(names.PRESENCE_QUEUE) == 0
    assert set(_entries(r)) == {request_id}


def test_the_hold_of_a_dead_worker_goes_back_to_the_front_of_its_list(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    first = producer.send(_update(1))
    producer.send(_update(2))
    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None
    assert message.headers["id"] == first  # no beat: this process counts as dead

    assert ledger.orphaned_holds(r, now=time.time(), visibility_s=3600) == []  # too young
    later = time.time() + holders.ALIVE_TTL_S + 1
    [hold] = ledger.orphaned_holds(r, now=later, visibility_s=3600)
    assert ledger.restore_held(r, hold, now=later)
    assert not ledger.restore_held(r, hold, now=later)  # a second mover's restore: nothing

    entry = _entries(r)[first]
    assert (entry["holder"], entry["pushed"]) == (None, 0)  # taken next
    again = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert again is not None
    assert again.headers["id"] == first
    assert again.headers["redelivered"] is True
    assert r.llen(names.PRESENCE_QUEUE) == 1


def test_a_live_holder_stuck_past_the_visibility_timeout_loses_its_hold(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    producer.send(_update())
    assert consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False) is not None
    holders.beat(r)

    assert ledger.orphaned_holds(r, now=time.time() + 100, visibility_s=300) == []
    assert len(ledger.orphaned_holds(r, now=time.time() + 301, visibility_s=300)) == 1


def test_many_live_holds_never_hide_a_dead_one(r: redis.Redis) -> None:
    now = time.time()
    holders.beat(r)
    live = {f"t{n}|{holders.PROCESS_ID}": ledger.hold_score(now - 100 + n / 100) for n in range(30)}
    r.zadd(ledger.QUEUED_KEY, {**live, "dead-tag|gone": ledger.hold_score(now - 50)})

    assert ledger.orphaned_holds(r, now=now, visibility_s=3600, page=7) == ["dead-tag|gone"]


def test_an_acknowledged_hold_is_never_restored(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    producer.send(_update())
    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None
    hold = ledger.hold_member(message.delivery_tag)
    r.hdel(ledger.ENTRIES_KEY, message.delivery_tag)  # an ack cut off after its first command

    assert not ledger.restore_held(r, hold, now=time.time())
    assert (r.llen(names.PRESENCE_QUEUE), len(ledger.holds(r))) == (0, 0)


def test_a_message_an_older_producer_ledgered_under_its_task_id_drops_that_entry_when_held(
    r: redis.Redis, consumer: Any
) -> None:
    raw = _raw_message("old-1", "tag-old-1")
    text = json.dumps(raw)
    old_entry = {"state": "queued", "list": names.PRESENCE_QUEUE, "tag": "tag-old-1"}
    r.hset(ledger.ENTRIES_KEY, "old-1", json.dumps({**old_entry, "message": text, "pushed": 1.0}))
    r.zadd(ledger.QUEUED_KEY, {"old-1": 1.0})
    r.lpush(names.PRESENCE_QUEUE, text)

    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)

    assert message is not None
    assert r.hexists(ledger.UNACKED_KEY, "tag-old-1")
    assert ledger.pending(r) == []  # the mover will not push it again
    assert ledger.move_due(r, _never, now=_later()) == ledger.Moved()


def _raw_message(task_id: str, tag: str) -> dict[str, Any]:
    """A ``presence.update`` message as a client writing the list itself would push it."""
    return {
        "body": "W1tdLCB7fSwge31d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": names.UPDATE_TASK, "id": task_id},
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": names.PRESENCE_QUEUE},
            "body_encoding": "base64",
            "priority": 0,
        },
    }


def test_a_message_pushed_without_the_ledger_is_held_in_kombus_unacked(
    r: redis.Redis, consumer: Any
) -> None:
    r.lpush(names.PRESENCE_QUEUE, json.dumps(_raw_message("raw-1", "tag-raw-1")))

    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)

    assert message is not None
    assert r.hexists(ledger.UNACKED_KEY, "tag-raw-1")
    assert r.hget(holders.HOLDERS_KEY, "tag-raw-1") == holders.PROCESS_ID.encode()
    assert len(ledger.holds(r)) == 0
    message.reject(requeue=True)  # kombu's restore: back on the list, now with an entry
    assert _entries(r)["raw-1"]["state"] == "queued"
    assert r.hlen(ledger.UNACKED_KEY) == 0


def test_a_restored_message_is_ledgered_again(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    request_id = producer.send(_update())
    message = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert message is not None

    message.reject(requeue=True)  # back on the list, at its back, out of the held set

    entry = _entries(r)[request_id]
    assert json.loads(entry["message"])["headers"]["redelivered"] is True
    assert [m.decode() for m in r.lrange(names.PRESENCE_QUEUE, 0, -1)] == [entry["message"]]
    assert (entry["holder"], len(ledger.holds(r))) == (None, 0)
    assert ledger.move_due(r, _never, now=_later()).waiting == 1


def test_other_tasks_are_not_ledgered(redis_url: str, r: redis.Redis) -> None:
    app = Celery(broker=redis_url, broker_transport=ledger.TRANSPORT, set_as_current=False)
    app.send_task(names.WFM_SYNC_TASK, args=(1,), queue=names.WFM_QUEUE)
    app.close()
    assert r.llen(names.WFM_QUEUE) == 1
    assert _entries(r) == {}


# -- scheduled retries ------------------------------------------------------------------------
RETRY = ledger.Scheduled("wfm-1", names.WFM_SYNC_TASK, [7], {}, names.WFM_QUEUE)


def test_a_scheduled_retry_is_published_once_when_due(r: redis.Redis) -> None:
    sent: list[ledger.Scheduled] = []
    ledger.schedule(r, RETRY, due=1000.0)

    assert ledger.move_due(r, sent.append, now=999.0) == ledger.Moved()
    assert ledger.move_due(r, sent.append, now=1000.0).published == 1
    assert ledger.move_due(r, sent.append, now=5000.0) == ledger.Moved()

    assert sent == [RETRY]
    assert _entries(r) == {}


def test_a_publish_that_fails_is_tried_again_after_the_claim(r: redis.Redis) -> None:
    sent: list[ledger.Scheduled] = []

    def broker_down(_entry: ledger.Scheduled) -> None:
        raise ConnectionError("broker down")

    ledger.schedule(r, RETRY, due=1000.0)
    assert ledger.move_due(r, broker_down, now=1000.0).failed == 1
    assert ledger.move_due(r, sent.append, now=1000.0 + ledger.CLAIM_S - 1) == ledger.Moved()
    assert ledger.move_due(r, sent.append, now=1000.0 + ledger.CLAIM_S).published == 1
    assert sent == [RETRY]


def test_two_movers_never_publish_the_same_entry_twice(r: redis.Redis) -> None:
    sent: list[ledger.Scheduled] = []
    for n in range(50):
        ledger.schedule(r, ledger.Scheduled(f"t-{n}", RETRY.task, [n], {}, RETRY.queue), 10.0)

    first = ledger.move_due(r, sent.append, now=10.0, limit=30)
    second = ledger.move_due(r, sent.append, now=10.0, limit=30)

    assert (first.published, second.published) == (30, 20)
    assert sorted(e.id for e in sent) == sorted(f"t-{n}" for n in range(50))


def test_a_retry_rescheduled_while_it_was_published_keeps_the_newer_entry(
    r: redis.Redis,
) -> None:
    newer = ledger.Scheduled(RETRY.id, RETRY.task, [8], {}, RETRY.queue)

    def publish_and_reschedule(_entry: ledger.Scheduled) -> None:
        ledger.schedule(r, newer, due=2000.0)  # the published task ran and retried already

    ledger.schedule(r, RETRY, due=1000.0)
    ledger.move_due(r, publish_and_reschedule, now=1000.0)

    assert _entries(r)[RETRY.id]["args"] == [8]
    assert _entries(r)[RETRY.id]["at"] == 2000.0


def test_a_retry_waiting_again_before_its_publish_was_settled_is_kept(r: redis.Redis) -> None:
    """The budget-wait case: the published task ran at once, found the budget still spent and
    scheduled the very same retry (a wait is no failure: same arguments, same counter) before
    this mover settled the entry it had published."""
    first = ledger.Scheduled(RETRY.id, RETRY.task, [7], {"failures": 0}, RETRY.queue)

    def publish_and_wait_again(_entry: ledger.Scheduled) -> None:
        again = ledger.Scheduled(RETRY.id, RETRY.task, [7], {"failures": 0}, RETRY.queue)
        ledger.schedule(r, again, due=2000.0)

    ledger.schedule(r, first, due=1000.0)
    ledger.move_due(r, publish_and_wait_again, now=1000.0)

    assert RETRY.id in _entries(r), "the new retry survives the old entry's settle"
    assert _entries(r)[RETRY.id]["at"] == 2000.0
    sent: list[ledger.Scheduled] = []
    assert ledger.move_due(r, sent.append, now=2000.0).published == 1
    assert [e.args for e in sent] == [[7]]


def test_a_scheduled_update_published_through_the_ledger_becomes_queued(
    redis_url: str, r: redis.Redis
) -> None:
    app = Celery(broker=redis_url, broker_transport=ledger.TRANSPORT, set_as_current=False)
    entry = ledger.Scheduled("req-1", names.UPDATE_TASK, [{"x": 1}], {"failures": 2}, "presence")

    def send(scheduled: ledger.Scheduled) -> None:
        app.send_task(
            scheduled.task,
            args=scheduled.args,
            kwargs=scheduled.kwargs,
            task_id=scheduled.id,
            queue=scheduled.queue,
        )

    ledger.schedule(r, entry, due=1000.0)
    assert ledger.move_due(r, send, now=1000.0).published == 1
    app.close()

    queued = _entries(r)["req-1"]
    assert queued["state"] == "queued"
    assert json.loads(queued["message"])["headers"]["id"] == "req-1"
    assert r.llen(names.PRESENCE_QUEUE) == 1


def _never(entry: ledger.Scheduled) -> None:
    raise AssertionError(f"nothing was scheduled, yet {entry} was published")


# -- what custody costs -----------------------------------------------------------------------
def test_a_push_is_its_entry_and_the_message_without_a_transaction(
    r: redis.Redis, producer: PresenceProducer
) -> None:
    update = _update()
    producer.send(update)  # the connection and its bindings are set up once

    assert commands_during(r, lambda: producer.send(update)) == {
        "zadd": 1,  # when the entry was pushed
        "hset": 1,  # the entry
        "lpush": 1,  # the message
    }


def test_holding_a_message_is_one_command_and_its_ack_one_pipeline(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    producer.send(_update(1))
    producer.send(_update(2))
    consumer.basic_get(names.PRESENCE_QUEUE).ack()  # connection and script set up once
    held: list[Any] = []

    taking = commands_during(r, lambda: held.append(consumer.basic_get(names.PRESENCE_QUEUE)))
    assert held[0] is not None
    acking = commands_during(r, held[0].ack)

    assert taking == {
        "rpop": 1,  # kombu's get (a worker's BRPOP)
        "zadd": 1,  # the hold: its entry is the held copy
    }
    assert acking == {
        "hdel": 1,  # the entry
        "zrem": 1,  # its time and the hold
    }
    assert r.hlen(ledger.UNACKED_KEY) == 0
    assert len(ledger.holds(r)) == 0
    assert _entries(r) == {}


def test_a_message_taken_again_from_the_front_keeps_the_newest_taken_time(
    r: redis.Redis, producer: PresenceProducer, consumer: Any
) -> None:
    first, second = producer.send(_update(1)), producer.send(_update(2))
    newest = _entries(r)[second]["pushed"]
    held = consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False)
    assert held is not None
    assert held.headers["id"] == first
    assert consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False) is not None
    assert r.zscore(ledger.TAKEN_KEY, names.PRESENCE_QUEUE) is None  # kept in memory
    ledger.TAKEN.write(r)  # the mover's pass
    assert r.zscore(ledger.TAKEN_KEY, names.PRESENCE_QUEUE) == newest

    consumer.qos.restore_by_tag(held.delivery_tag)  # to the front: its entry's push time is 0
    assert _entries(r)[first]["pushed"] == 0
    assert consumer.basic_get(names.PRESENCE_QUEUE, no_ack=False) is not None
    ledger.TAKEN.write(r)

    assert r.zscore(ledger.TAKEN_KEY, names.PRESENCE_QUEUE) == newest


def test_a_push_of_a_task_id_with_a_scheduled_retry_keeps_both(
    redis_url: str, r: redis.Redis
) -> None:
    """Entries of pushes are a delivery's, a retry's its task id's: neither replaces the other
    (the second run of the request finds its row)."""
    app = Celery(broker=redis_url, broker_transport=ledger.TRANSPORT, set_as_current=False)
    retry = ledger.Scheduled("req-2", names.UPDATE_TASK, [{"x": 1}], {}, names.PRESENCE_QUEUE)
    ledger.schedule(r, retry, due=1000.0)

    app.send_task(retry.task, args=retry.args, task_id=retry.id, queue=retry.queue)
    app.close()

    states = sorted(e["state"] for e in ledger.pending(r))
    assert states == ["queued", "scheduled"]
    assert r.llen(names.PRESENCE_QUEUE) == 1


def test_a_channel_uses_one_client_for_its_pushes_holds_and_acks(consumer: Any) -> None:
    with consumer.conn_or_acquire() as first, consumer.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is consumer.pool
