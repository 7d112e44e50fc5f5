"""Write intents in a real Redis: marked before a write, found by a later delivery, expiring."""

from __future__ import annotations

import json

import pytest
import redis

from tests.support.redis_db import commands_during
from worker.intents import Intent, WriteIntents
from worker.limiter import BudgetExhausted, SharedRateLimiter
from worker.state_cache import AgentState, StateCache


def test_marked_requests_are_found_with_their_target(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    intents = WriteIntents(client, ttl_s=60)

    first, second = Intent("def-break", 0, 1000), Intent("def-meal", 500, 2000)
    intents.mark({"req-1": first, "req-2": second})

    assert intents.marked(["req-1", "req-2", "req-3"]) == {"req-1": first, "req-2": second}
    assert intents.marked([]) == {}
    assert 0 < client.ttl(intents.key("req-1")) <= 60


def test_a_mark_made_again_as_accepted_keeps_the_answer(redis_url: str) -> None:
    intents = WriteIntents(redis.Redis.from_url(redis_url), ttl_s=60)
    intents.mark({"req-1": Intent("def-break", 0, 1000)})

    accepted = Intent("def-break", 0, 1000, accepted=True, correlation_id="corr-1")
    intents.mark({"req-1": accepted})

    assert intents.marked(["req-1"]) == {"req-1": accepted}


def test_a_mark_and_the_agents_cached_state_are_one_read(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = StateCache(client, ttl_s=60)
    intents = WriteIntents(client, ttl_s=60, cache=cache)
    mark, state = Intent("def-break", 0, 1000), AgentState("def-meal", "BUSY", 900, "event")
    intents.mark({"req-1": mark})
    cache.put("agent-1", state)

    read: list[object] = []
    counted = commands_during(
        client, lambda: read.append(intents.marked_with_state("req-1", "agent-1"))
    )

    assert read == [(mark, state)]
    assert counted == {"mget": 1}
    assert intents.marked_with_state("req-2", "agent-2") == (None, None)


def test_a_mark_is_read_with_the_state_of_a_cache_elsewhere_or_alone(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    elsewhere = StateCache(redis.Redis.from_url(redis_url), ttl_s=60)
    state = AgentState("def-meal", "BUSY", 900, "event")
    elsewhere.put("agent-1", state)
    WriteIntents(client, ttl_s=60).mark({"req-1": Intent("def-break", 0, 1000)})

    with_cache = WriteIntents(client, ttl_s=60, cache=elsewhere)
    alone = WriteIntents(client, ttl_s=60)

    assert with_cache.marked_with_state("req-1", "agent-1")[1] == state
    assert alone.marked_with_state("req-1", "agent-1") == (Intent("def-break", 0, 1000), None)


def test_an_accepted_mark_and_the_written_state_are_one_script_call(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = StateCache(client, ttl_s=60)
    intents = WriteIntents(client, ttl_s=90, cache=cache)
    intents.mark(
        {"warm-up": Intent("def-break", 0, 1)},
        state=("agent-0", AgentState("d", "BUSY", 1, "patch")),
    )
    accepted = Intent("def-break", 0, 1000, accepted=True, correlation_id="corr-1")
    written = AgentState("def-break", "BREAK", 1_500, "patch")

    counted = commands_during(
        client, lambda: intents.mark({"req-1": accepted}, state=("agent-1", written))
    )

    assert counted == {"evalsha": 1, "set": 2}  # the mark, and the entry with the old read back
    assert intents.marked_with_state("req-1", "agent-1") == (accepted, written)
    assert 60 < client.ttl(intents.key("req-1")) <= 90, "the mark keeps its own expiry"


def test_the_mark_is_written_when_the_state_is_older_or_already_stored(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = StateCache(client, ttl_s=60)
    intents = WriteIntents(client, ttl_s=60, cache=cache)
    newer = AgentState("def-meal", "MEAL", 2_000, "event")
    cache.put("agent-1", newer)
    older, twin = AgentState("def-break", "BREAK", 1_000, "patch"), newer

    intents.mark({"req-1": Intent("def-break", 0, 1)}, state=("agent-1", older))
    intents.mark({"req-2": Intent("def-meal", 0, 2)}, state=("agent-1", twin))  # stored here

    assert cache.get("agent-1") == newer
    assert set(intents.marked(["req-1", "req-2"])) == {"req-1", "req-2"}


def test_two_orgs_keep_their_own_marks_for_the_same_request_id(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    acme_cache = StateCache(client, ttl_s=60, prefix="presence:org:acme")
    default = WriteIntents(client, ttl_s=60, cache=StateCache(client, ttl_s=60))
    acme = WriteIntents(client, ttl_s=60, cache=acme_cache, prefix="presence:org:acme")
    mark = Intent("def-break", 0, 1000)
    default.mark({"req-1": mark})
    StateCache(client, ttl_s=60).put("agent-1", AgentState("def-meal", "BUSY", 900, "event"))

    assert acme.marked(["req-1"]) == {}
    assert acme.marked_with_state("req-1", "agent-1") == (None, None)
    acme_state = AgentState("def-away", "AWAY", 800, "read")
    acme_cache.put("agent-1", acme_state)
    acme.mark({"req-1": Intent("def-meal", 0, 2000)})
    acme.clear(["req-1"])

    assert default.marked(["req-1"]) == {"req-1": mark}
    assert acme.marked_with_state("req-1", "agent-1") == (None, acme_state)


def test_a_mark_made_while_sending_is_stored_by_the_calls_budget_grant_only(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    intents = WriteIntents(client, ttl_s=60)
    limiter = SharedRateLimiter(client, key="marks", limit_per_minute=1, provisional_s=5)
    sent, refused = Intent("def-break", 0, 1000), Intent("def-meal", 0, 2000)

    with intents.marking({"req-1": sent}):
        assert intents.marked(["req-1"]) == {}, "nothing before the call is let through"
        counted = commands_during(client, lambda: limiter.acquire(max_wait_s=0))
    with intents.marking({"req-2": refused}), pytest.raises(BudgetExhausted):
        limiter.acquire(max_wait_s=0)

    assert intents.marked(["req-1", "req-2"]) == {"req-1": sent}
    assert (counted["evalsha"], counted["set"]) == (1, 1), "in the grant's own script"
    assert 0 < client.ttl(intents.key("req-1")) <= 60


def test_an_intent_reads_back_as_it_was_stored() -> None:
    intent = Intent("target", 1, 2, accepted=True, correlation_id="c-1")

    assert Intent(**json.loads(intent.to_json())) == intent
