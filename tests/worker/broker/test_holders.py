"""Holders: a message held by a process whose liveness key expired is an orphan; a live holder's,
a young one's and one of an unknown holder are not."""

from __future__ import annotations

import redis

from worker.broker import holders

NOW = 10_000.0


def _held(r: redis.Redis, tag: str, by: str | None, at: float) -> None:
    r.zadd(holders.UNACKED_INDEX_KEY, {tag: at})
    if by is not None:
        r.hset(holders.HOLDERS_KEY, tag, by)


def test_only_messages_of_dead_holders_held_long_enough_are_orphans(r: redis.Redis) -> None:
    old = NOW - holders.ALIVE_TTL_S - 1
    r.set(holders.ALIVE_PREFIX + "alive", 1)
    _held(r, "of-the-dead", "dead", old)
    _held(r, "of-the-living", "alive", old)
    _held(r, "too-young", "dead", NOW - 1)
    _held(r, "unknown-holder", None, old)

    assert holders.orphans(r, now=NOW) == ["of-the-dead"]


def test_this_process_is_alive_after_its_beat(r: redis.Redis) -> None:
    holders.beat(r)
    _held(r, "mine", holders.PROCESS_ID, NOW - holders.ALIVE_TTL_S - 1)

    assert holders.orphans(r, now=NOW) == []
    assert 0 < r.ttl(holders.ALIVE_PREFIX + holders.PROCESS_ID) <= holders.ALIVE_TTL_S
