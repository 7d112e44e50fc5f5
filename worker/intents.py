"""Write intents: which requests may already have reached the platform.

A flow marks a request just before its write is sent. A later delivery of the same request that
finds the mark (the worker died, the database refused the terminal row, the write timed out)
cannot know whether the platform applied it, so it reads the agent back instead of writing
again: a change is sent at most once per request, and an applied one is recorded as applied.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from worker.limiter import granting_with
from worker.state_cache import AgentState, StateCache


@dataclass(frozen=True, slots=True)
class Intent:
    """A write about to be sent: its target, the agent's ``modifiedDate`` known before it (0:
    unknown) and when it was marked (ms since the epoch). ``accepted``: the platform answered
    the write with success (``correlation_id`` its answer's), so it took effect whatever the
    agent shows now."""

    target_id: str
    before_ms: int
    at_ms: int
    accepted: bool = False
    correlation_id: str | None = None

    def to_json(self) -> str:
        """The stored form (``Intent(**json.loads(text))`` reads it back); its fields by name,
        without ``dataclasses.asdict``'s deep copy (written on every update)."""
        return json.dumps({name: getattr(self, name) for name in self.__slots__})


class WriteIntents:
    """Marks in Redis, kept ``ttl_s`` (longer than any redelivery can take). ``cache``: the
    state cache read with a mark by :meth:`marked_with_state` (one ``MGET`` when it shares
    this client). Marks sit under ``{prefix}:intent:<request id>`` (``prefix``: the org's key
    prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        cache: StateCache | None = None,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.cache = cache
        self.prefix = prefix

    def key(self, request_id: str) -> str:
        return f"{self.prefix}:intent:{request_id}"

    def mark(
        self, writes: dict[str, Intent], *, state: tuple[str, AgentState] | None = None
    ) -> None:
        """Record that each request (request id → its intent) is about to be sent (a mark made
        before sending is better made by :meth:`marking`), or, marked again with ``accepted``,
        that the platform applied it. With ``state`` (user id, what
        the write's answer says), also store that in the shared cache (as
        :meth:`StateCache.put`), in the same round trip when the cache shares this client."""
        values = self._values(writes)
        if state is not None and self.cache is not None:
            if self.cache.redis is self.redis:
                self.cache.put(*state, also_set=values)
                return
            self.cache.put(*state)
        if len(values) == 1:  # a single update's mark: no pipeline to build
            ((key, (value, ttl_s)),) = values.items()
            self.redis.set(key, value, ex=ttl_s)
        elif values:
            pipe = self.redis.pipeline(transaction=False)
            for key, (value, ttl_s) in values.items():
                pipe.set(key, value, ex=ttl_s)
            pipe.execute()

    def marking(self, writes: dict[str, Intent]) -> AbstractContextManager[None]:
        """Inside, the marks of ``writes`` are stored with the budget grant of the call that
        sends them (:func:`~worker.limiter.granting_with`): before it leaves, in the grant's
        script, and never for a call the budget refused."""
        return granting_with(self._values(writes))

    def _values(self, writes: dict[str, Intent]) -> dict[str, tuple[str, int]]:
        return {self.key(r): (i.to_json(), self.ttl_s) for r, i in writes.items()}

    def clear(self, request_ids: list[str]) -> None:
        """Drop the marks of requests whose write was certainly never sent (no budget)."""
        if request_ids:
            self.redis.delete(*[self.key(r) for r in request_ids])

    def marked(self, request_ids: list[str]) -> dict[str, Intent]:
        """The requests among ``request_ids`` that were marked, with their intents."""
        if not request_ids:
            return {}
        values = self.redis.mget([self.key(r) for r in request_ids])
        return {
            r: Intent(**json.loads(v))
            for r, v in zip(request_ids, values, strict=True)
            if v is not None
        }

    def marked_with_state(
        self, request_id: str, user_id: str
    ) -> tuple[Intent | None, AgentState | None]:
        """The request's intent (None: not marked) and the agent's cached state (None: not
        cached, or no cache given)."""
        keys = self.first_reads(request_id, user_id)
        return self.from_first_reads(user_id, list(self.redis.mget(keys)))

    def first_reads(self, request_id: str, user_id: str) -> list[str]:
        """The keys :meth:`marked_with_state` reads on this client: the request's mark, and the
        agent's cached state when the cache shares the client. For a caller that reads them in
        a round trip it makes anyway (:meth:`AgentOrdering.register_lock_and_read`, on the same
        Redis); their values go to :meth:`from_first_reads`."""
        keys = [self.key(request_id)]
        if self.cache is not None and self.cache.redis is self.redis:
            keys.append(self.cache.key(user_id))
        return keys

    def from_first_reads(
        self, user_id: str, values: list[bytes | str | None]
    ) -> tuple[Intent | None, AgentState | None]:
        """:meth:`marked_with_state` from the values of :meth:`first_reads` (a cache on another
        client is read here)."""
        mark = values[0]
        intent = Intent(**json.loads(mark)) if mark is not None else None
        if self.cache is None:
            return intent, None
        if len(values) < 2:
            return intent, self.cache.get(user_id)
        state = values[1]
        return intent, AgentState(**json.loads(state)) if state is not None else None
