"""Write intents in a real Redis: marked before a write, found by a later delivery, expiring."""

from __future__ import annotations

import redis

from worker.intents import Intent, WriteIntents


def test_marked_requests_are_found_with_their_target(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    intents = WriteIntents(client, ttl_s=60)

    first, second = Intent("def-break", 0, 1000), Intent("def-meal", 500, 2000)
    intents.mark({"req-1": first, "req-2": second})

    assert intents.marked(["req-1", "req-2", "req-3"]) == {"req-1": first, "req-2": second}
    assert intents.marked([]) == {}
    assert 0 < client.ttl(WriteIntents.key("req-1")) <= 60


def test_a_mark_made_again_as_accepted_keeps_the_answer(redis_url: str) -> None:
    intents = WriteIntents(redis.Redis.from_url(redis_url), ttl_s=60)
    intents.mark({"req-1": Intent("def-break", 0, 1000)})

    accepted = Intent("def-break", 0, 1000, accepted=True, correlation_id="corr-1")
    intents.mark({"req-1": accepted})

    assert intents.marked(["req-1"]) == {"req-1": accepted}
