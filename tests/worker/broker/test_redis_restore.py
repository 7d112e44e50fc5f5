"""worker.broker.redis_restore against a real ``redis-server`` (AOF, ``everysec``) that is
SIGKILLed while two channels of one connection hold unacknowledged messages, as a worker's
consumer does when Redis dies under it.

Closing the lost connection (Celery's ``connection.collect()``) restores the first channel's
messages, which fails with Redis gone and abandons the close; the connection is then detached and
closing the channel left over raised AttributeError (celery/kombu#970) — the worker process's
``Unrecoverable error``. With the guard, nothing raises and the messages wait in Redis's
``unacked`` hash, where kombu restores them from.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from tests.support.processes import DurableRedis, durable_redis
from worker.broker import redis_restore

QUEUE = Queue("presence", Exchange("presence"), "presence")


@pytest.fixture
def server() -> Iterator[DurableRedis]:
    with durable_redis() as started:
        yield started


def _hold_two_and_lose_redis(server: DurableRedis, transport: type) -> list[BaseException]:
    """Two channels each take one message unacknowledged; Redis is SIGKILLed; the connection is
    collected and each channel closed as Celery's consumer does. Returns what the closes raised."""
    with Connection(server.url) as producer:
        for number in range(2):
            producer.Producer().publish(
                {"n": number}, exchange=QUEUE.exchange, routing_key="presence", declare=[QUEUE]
            )
    time.sleep(1.2)  # AOF everysec: on disk before the kill
    connection = Connection(server.url, transport=transport)
    channels = [connection.channel() for _ in range(2)]
    held = [channel.basic_get("presence", no_ack=False) for channel in channels]
    assert all(message is not None for message in held)
    time.sleep(1.2)
    server.kill(signal.SIGKILL)
    raised: list[BaseException] = []
    try:
        connection.collect(socket_timeout=1)
    except Exception as exc:
        raised.append(exc)
    for channel in channels:
        try:
            channel.close()
        except Exception as exc:
            raised.append(exc)
    server.start()
    return raised


def _broker(server: DurableRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_kombus_own_transport_still_raises_attribute_error(server: DurableRedis) -> None:
    """The upstream failure this module works around; when a kombu release fixes it, this test
    fails: then drop the workaround."""
    raised = _hold_two_and_lose_redis(server, kombu_redis.Transport)
    assert [type(exc) for exc in raised] == [AttributeError]
    assert "hostname" in str(raised[0])


def test_losing_redis_with_messages_held_raises_nothing_and_keeps_them(
    server: DurableRedis,
) -> None:
    assert _hold_two_and_lose_redis(server, redis_restore.Transport) == []
    client = _broker(server)
    assert client.hlen("unacked") == 2  # kept, for kombu to restore
    assert client.llen("presence") == 0


def test_a_channel_of_a_closed_connection_raises_a_connection_error(server: DurableRedis) -> None:
    connection = Connection(server.url, transport=redis_restore.Transport)
    channel = connection.channel()
    connection.close()
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
