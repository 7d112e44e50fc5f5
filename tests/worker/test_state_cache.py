"""StateCache: each agent's last known presence in Redis; a newer entry is never rolled back."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.redis_db import commands_during
from worker.state_cache import AgentState, StateCache

AGENT = "2c9e5d7e-0000-4000-8000-000000000001"
OTHER = "2c9e5d7e-0000-4000-8000-000000000002"


@pytest.fixture
def cache(r) -> StateCache:
    return StateCache(r, ttl_s=60)


def state(definition_id: str, modified_ms: int, seen_via: str = "event") -> AgentState:
    return AgentState(definition_id, "AVAILABLE", modified_ms, seen_via)


def test_an_unknown_agent_has_no_state(cache):
    assert cache.get(AGENT) is None


def test_a_newer_state_replaces_the_stored_one(cache):
    assert cache.put(AGENT, state("available", 1_000))
    assert cache.put(AGENT, state("break", 2_000, "patch"))

    assert cache.get(AGENT) == state("break", 2_000, "patch")


def test_an_older_state_is_ignored(cache):
    cache.put(AGENT, state("break", 2_000))

    assert cache.put(AGENT, state("available", 1_999)) is False
    assert cache.get(AGENT) == state("break", 2_000)


def test_a_state_as_new_as_the_stored_one_replaces_it(cache, r):
    StateCache(r, ttl_s=60).put(AGENT, state("break", 2_000, "event"))  # another process

    assert cache.put(AGENT, state("break", 2_000, "read"))
    assert cache.get(AGENT).seen_via == "read"


def test_entries_expire_after_the_ttl(cache, r):
    cache.put(AGENT, state("break", 2_000))

    assert 0 < r.ttl(cache.key(AGENT)) <= 60


def test_forget_drops_the_named_agents_only(cache):
    cache.put(AGENT, state("break", 2_000))
    cache.put(OTHER, state("available", 2_000))

    cache.forget([AGENT])
    cache.forget([])  # nothing to drop is fine

    assert cache.get(AGENT) is None
    assert cache.get(OTHER) == state("available", 2_000)
    assert cache.put(AGENT, state("available", 1_000)), "a forgotten agent takes any state"


def test_a_newer_change_is_one_command_and_an_older_one_leaves_the_entry_as_it_was(r):
    cache, other = StateCache(r, ttl_s=60), StateCache(r, ttl_s=60)  # two processes
    other.put(OTHER, state("break", 1_000))  # the script loaded once
    other.put(AGENT, state("break", 2_000, "event"))
    r.expire(cache.key(AGENT), 30)

    newer = commands_during(r, lambda: cache.put(AGENT, state("available", 3_000, "patch")))
    assert newer == {"evalsha": 1, "set": 1}
    assert r.ttl(cache.key(AGENT)) > 30

    assert other.put(AGENT, state("break", 2_500)) is False
    assert cache.get(AGENT) == state("available", 3_000, "patch")
    assert r.ttl(cache.key(AGENT)) > 30


def test_a_change_this_process_stored_is_not_stored_again(cache, r):
    cache.put(AGENT, state("break", 2_000, "event"))  # the socket event of a write

    counted = commands_during(r, lambda: cache.put(AGENT, state("break", 2_000, "patch")))

    assert counted == {}, "the PATCH answer of the same change costs no command"
    assert cache.get(AGENT) == state("break", 2_000, "event")
    assert cache.put(AGENT, state("available", 3_000, "patch"))  # a new change is written
    assert cache.get(AGENT) == state("available", 3_000, "patch")


def test_a_change_stored_longer_ago_than_half_the_ttl_is_stored_again(r, monkeypatch):
    cache = StateCache(r, ttl_s=60)
    cache.put(AGENT, state("break", 2_000, "event"))
    r.delete(cache.key(AGENT))  # expired meanwhile
    later = time.monotonic() + 31
    monkeypatch.setattr(time, "monotonic", lambda: later)

    assert cache.put(AGENT, state("break", 2_000, "patch"))
    assert cache.get(AGENT) == state("break", 2_000, "patch")


def test_the_same_change_put_twice_at_once_is_written_once(r):
    cache = StateCache(r, ttl_s=60)
    cache.put(OTHER, state("break", 1_000))  # the script loaded once
    started, release = threading.Event(), threading.Event()
    real = cache._set_if_newer

    def slow_write(**kwargs: object) -> object:
        started.set()
        release.wait(5)
        return real(**kwargs)

    cache._set_if_newer = slow_write  # type: ignore[assignment]
    event = threading.Thread(target=cache.put, args=(AGENT, state("break", 2_000, "event")))
    event.start()
    assert started.wait(5)

    counted = commands_during(r, lambda: cache.put(AGENT, state("break", 2_000, "patch")))
    release.set()
    event.join(5)

    assert counted == {}, "the PATCH answer's twin is being written already"
    assert cache.get(AGENT) == state("break", 2_000, "event")


def test_a_put_refused_for_a_newer_entry_leaves_the_change_unclaimed(cache, r):
    StateCache(r, ttl_s=60).put(AGENT, state("available", 3_000))  # another process, newer

    assert cache.put(AGENT, state("break", 2_000)) is False
    assert not cache.stored_here(AGENT, "break", 2_000)


def test_two_orgs_keep_their_own_entry_for_the_same_agent_id(r):
    default, acme = StateCache(r, ttl_s=60), StateCache(r, ttl_s=60, prefix="presence:org:acme")
    default.put(AGENT, state("break", 2_000))

    assert acme.get(AGENT) is None
    assert acme.put(AGENT, state("available", 1_000)), "another org's newer entry does not count"
    assert acme.get_many([AGENT]) == {AGENT: state("available", 1_000)}

    acme.forget([AGENT])
    assert default.get(AGENT) == state("break", 2_000)
    assert acme.get(AGENT) is None


def test_a_state_reads_back_as_it_was_stored() -> None:
    state = AgentState("definition", "ON_QUEUE", 123, "event")

    assert AgentState(**json.loads(state.to_json())) == state
