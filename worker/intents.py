"""Write intents: which requests may already have reached the platform.

A flow marks a request just before its write is sent. A later delivery of the same request that
finds the mark (the worker died, the database refused the terminal row, the write timed out)
cannot know whether the platform applied it, so it reads the agent back instead of writing
again: a change is sent at most once per request, and an applied one is recorded as applied.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis


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


class WriteIntents:
    """Marks in Redis, kept ``ttl_s`` (longer than any redelivery can take)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    @staticmethod
    def key(request_id: str) -> str:
        return f"presence:intent:{request_id}"

    def mark(self, writes: dict[str, Intent]) -> None:
        """Record that each request (request id → its intent) is about to be sent, or, marked
        again with ``accepted``, that the platform applied it."""
        if not writes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for request_id, intent in writes.items():
            pipe.set(self.key(request_id), json.dumps(asdict(intent)), ex=self.ttl_s)
        pipe.execute()

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
