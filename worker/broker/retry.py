"""Retries kept out of worker memory, and never deleted when Redis cannot take them.

Celery's ``Task.retry`` publishes an ETA message that waits unacknowledged in a worker's memory
until it is due (so a dead worker's retries waited for the visibility timeout), and turns a
failed publish into ``Reject(requeue=False)``, which deletes the message being retried.
:func:`republish` is the one place the tasks retry through: it writes the retry to the broker
ledger's schedule (:func:`worker.broker.ledger.schedule`), published when due by a worker's
mover (:mod:`worker.broker.mover`), and only then lets Celery acknowledge the message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn, cast

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from worker.broker import ledger

log = logging.getLogger(__name__)
BROKER_POLL_S = 2.0
CLIENT_TIMEOUT_S = 5.0

Store = Callable[[ledger.Scheduled, float], None]
"""Writes a scheduled entry due at the given epoch time; raises when the broker cannot take it."""


def republish(
    task: Task[Any, Any],
    *,
    countdown_s: float,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    wait_s: float | None = None,
    poll_s: float = BROKER_POLL_S,
    store: Store | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
) -> NoReturn:
    """Retry ``task`` after ``countdown_s`` with ``args``/``kwargs`` (default: the current
    ones): raises Celery's ``Retry`` once the retry is in the schedule (Celery then acknowledges
    the message), never the ``Reject(requeue=False)`` that deletes it.

    A failed write is tried again every ``poll_s`` for up to ``wait_s`` (``BROKER_WAIT_S``).
    If it still fails the message is rejected *with* requeue: back at the head of its queue when
    the broker takes the reject, otherwise left in the broker's unacknowledged set, from which
    kombu restores it. Waiting first means a broker that takes the reject but refuses the write
    redelivers the message at most once per ``wait_s``, never in a tight loop.
    """
    entry = ledger.Scheduled(
        id=str(task.request.id),
        task=str(task.name),
        args=list(task.request.args or ()) if args is None else list(args),
        kwargs=dict(task.request.kwargs or {}) if kwargs is None else dict(kwargs),
        queue=queue_of(task),
        expires=_expires(task),
        retries=(task.request.retries or 0) + 1,
    )
    write = store or broker_store(str(task.app.conf.broker_url))
    wait_s = broker_wait_s() if wait_s is None else wait_s
    deadline = clock() + wait_s
    while True:
        try:
            write(entry, now() + countdown_s)
        except (redis.RedisError, OSError) as exc:
            failure: Exception = exc
        else:
            raise Retry(f"scheduled in {countdown_s:.1f} s", when=cast(Any, countdown_s))
        if clock() >= deadline:
            break
        log.warning(
            "task %s: cannot schedule its retry (%s); trying again in %.0f s",
            entry.id,
            failure,
            poll_s,
        )
        sleep(poll_s)
    log.error(
        "task %s: cannot schedule its retry for %.0f s (%s); the message is kept for redelivery",
        entry.id,
        wait_s,
        failure,
    )
    raise Reject(failure, requeue=True) from None


def queue_of(task: Task[Any, Any]) -> str:
    """The queue ``task``'s message came from (its routing key), else the one it is routed to."""
    delivery = getattr(task.request, "delivery_info", None) or {}
    routing_key = delivery.get("routing_key") if isinstance(delivery, dict) else None
    if isinstance(routing_key, str) and routing_key:
        return routing_key
    route = (task.app.conf.task_routes or {}).get(task.name) or {}
    queue = route.get("queue") if isinstance(route, dict) else None
    return str(queue or task.app.conf.task_default_queue)


def _expires(task: Task[Any, Any]) -> str | None:
    """The current message's ``expires`` as ISO-8601 text (Celery keeps it across a retry)."""
    expires = getattr(task.request, "expires", None)
    if isinstance(expires, datetime):
        return expires.isoformat()
    return expires if isinstance(expires, str) else None


def broker_wait_s() -> float:
    from worker.settings import get_settings

    return get_settings().broker_wait_s


_clients: dict[tuple[int, str], redis.Redis] = {}


def broker_client(url: str) -> redis.Redis:
    """A Redis client of the broker at ``url`` with bounded waits, one per process."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_timeout=CLIENT_TIMEOUT_S, socket_connect_timeout=CLIENT_TIMEOUT_S
        )
        _clients[key] = client
    return client


def broker_store(url: str) -> Store:
    """Schedule entries in the ledger of the broker at ``url``."""

    def write(entry: ledger.Scheduled, due: float) -> None:
        ledger.schedule(broker_client(url), entry, due)

    return write
