"""``PresenceProducer`` against a real Redis broker: what lands in the ``presence`` queue."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from producer import WAVE_TASK_NAME, PresenceProducer, PresenceUpdate


def queued(redis_url: str) -> list[dict[str, Any]]:
    """The ``presence`` queue's messages, oldest first, as (headers, decoded body)."""
    client = redis.Redis.from_url(redis_url)
    raws = client.lrange("presence", 0, -1)
    client.close()
    out = []
    for raw in reversed(raws):  # kombu pushes on the left
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": body[0]})
    return out


def test_send_wave_splits_many_agents_into_waves_of_a_channels_worth(redis_url: str) -> None:
    now = datetime.now(UTC)
    updates = [
        PresenceUpdate(user_id=str(uuid.uuid4()), state="On Queue", requested_at=now)
        for _ in range(1500)
    ]
    producer = PresenceProducer(redis_url)

    request_ids = producer.send_wave(updates)
    producer.close()

    messages = queued(redis_url)
    assert [m["task"] for m in messages] == [WAVE_TASK_NAME, WAVE_TASK_NAME]
    elements = [e for m in messages for e in m["args"][0]]
    assert [len(m["args"][0]) for m in messages] == [1000, 500]
    assert [e["request_id"] for e in elements] == request_ids
    assert len(set(request_ids)) == 1500
    assert [e["update"] for e in elements] == [u.to_message() for u in updates]
