"""Which worker process holds each unacknowledged message, so that a dead worker's messages come
back within seconds instead of after the visibility timeout.

Kombu's Redis transport restores a held (``unacked``) message only once the visibility timeout
has passed, because it cannot tell a dead holder from a slow one. Here every hold names its
process: a ledger hold carries :data:`PROCESS_ID` in its member (:mod:`worker.broker.ledger`),
and a message in kombu's ``unacked`` has it beside it in :data:`HOLDERS_KEY` (written in the
same script). Each consuming process keeps a liveness key alive from its mover (:func:`beat`).
A message whose holder's liveness key has expired is an orphan (:func:`orphans` for
``unacked``, :func:`worker.broker.ledger.orphaned_holds` for the ledger): any live worker's
mover restores it (kombu's own atomic ``restore_by_tag``, or the ledger's). A holder that is
merely cut off from Redis for longer than :data:`ALIVE_TTL_S` may see its message delivered
twice; the per-request idempotency (audit row, write intents, the agent's lock) makes that
harmless.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import redis

HOLDERS_KEY: Final = "presence:ledger:holders"
ALIVE_PREFIX: Final = "presence:ledger:alive:"
UNACKED_INDEX_KEY: Final = "unacked_index"  # kombu's default ``unacked_index_key``
ALIVE_TTL_S: Final = 15
"""A consuming process is taken for dead this long after its last heartbeat."""
ORPHAN_LIMIT: Final = 200

PROCESS_ID: Final = uuid.uuid4().hex
"""This process's holder id (a forked pool child inherits it, but only the consumer holds)."""


def release(pipe: Any, delivery_tag: str) -> None:
    """Queue, on ``pipe``, the removal of ``delivery_tag``'s holder (acked or restored)."""
    pipe.hdel(HOLDERS_KEY, delivery_tag)


def beat(client: redis.Redis) -> None:
    """Keep this process alive as a holder for :data:`ALIVE_TTL_S` more. Raises what Redis
    raises."""
    client.set(ALIVE_PREFIX + PROCESS_ID, 1, ex=ALIVE_TTL_S)


def orphans(client: redis.Redis, *, now: float, limit: int = ORPHAN_LIMIT) -> list[str]:
    """Delivery tags held longer than :data:`ALIVE_TTL_S` by a process that is no longer
    alive; messages whose holder is unknown are left to the visibility timeout."""
    tags = [
        t.decode() if isinstance(t, bytes) else str(t)
        for t in client.zrangebyscore(
            UNACKED_INDEX_KEY, "-inf", now - ALIVE_TTL_S, start=0, num=limit
        )
    ]
    if not tags:
        return []
    holders = [h.decode() if isinstance(h, bytes) else h for h in client.hmget(HOLDERS_KEY, tags)]
    known = sorted({h for h in holders if h})
    if not known:
        return []
    alive = dict(zip(known, client.mget([ALIVE_PREFIX + h for h in known]), strict=True))
    return [t for t, h in zip(tags, holders, strict=True) if h and alive[h] is None]
