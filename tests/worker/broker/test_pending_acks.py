"""An acknowledgement Redis cannot take (it is away when the task ends) is not left to the
visibility timeout: the worker keeps it and its mover settles it once Redis is back."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.support.processes import DurableRedis, durable_redis
from worker.broker import ledger
from worker.broker.mover import Mover

QUEUE = Queue("presence", Exchange("presence"), "presence")


@pytest.fixture
def server() -> Iterator[DurableRedis]:
    with durable_redis() as started:
        yield started


def test_an_ack_lost_to_a_redis_outage_is_settled_when_redis_returns(server: DurableRedis) -> None:
    with Connection(server.url) as producer:
        producer.Producer().publish(
            {"n": 1}, exchange=QUEUE.exchange, routing_key="presence", declare=[QUEUE]
        )
    connection = Connection(server.url, transport=ledger.Transport)
    channel = connection.channel()
    message = channel.basic_get("presence", no_ack=False)
    assert message is not None
    time.sleep(1.2)  # AOF everysec: the unacked entry is on disk before the kill
    server.kill(signal.SIGKILL)

    message.ack()  # the task ended while Redis is away: nothing raises

    assert len(ledger.PENDING_ACKS) == 1
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 1, "Redis still holds the finished message"
    Mover(client, lambda _entry: None, poll_s=0.1).run_once()
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert len(ledger.PENDING_ACKS) == 0
    with contextlib.suppress(Exception):  # the connection died with the server
        connection.collect(socket_timeout=1)
