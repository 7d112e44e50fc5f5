"""Write intents in a real Redis: marked before a write, found by a later delivery, expiring."""

from __future__ import annotations

import redis

from worker.intents import WriteIntents


def test_marked_requests_are_found_with_their_target(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    intents = WriteIntents(client, ttl_s=60)

    intents.mark({"req-1": "def-break", "req-2": "def-meal"})

    assert intents.marked(["req-1", "req-2", "req-3"]) == {
        "req-1": "def-break",
        "req-2": "def-meal",
    }
    assert intents.marked([]) == {}
    assert 0 < client.ttl(WriteIntents.key("req-1")) <= 60
