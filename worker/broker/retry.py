"""Celery's retry, made to keep its message when the broker cannot take the retry.

``Task.retry`` publishes the retry and, when that publish fails (Redis unreachable), raises
``Reject(requeue=False)``: Celery then deletes the message it was retrying, and the request is
lost without an audit row. :func:`republish` is the one place the tasks retry through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject

log = logging.getLogger(__name__)
# A broker restart takes seconds: wait that long for it before giving the message back.
BROKER_WAIT_S = 30.0
BROKER_POLL_S = 2.0


def republish(
    task: Task[Any, Any],
    *,
    countdown_s: float,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    wait_s: float = BROKER_WAIT_S,
    poll_s: float = BROKER_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> NoReturn:
    """Retry ``task`` after ``countdown_s``: raises Celery's ``Retry`` once the retry is published
    (Celery then acknowledges the message), never the ``Reject(requeue=False)`` that deletes it.

    A failed publish is tried again every ``poll_s`` for up to ``wait_s``. If it still fails the
    message is rejected *with* requeue: back at the head of its queue when the broker takes the
    reject, otherwise left in the broker's unacknowledged set, from which kombu restores it.
    Waiting first means a broker that takes the reject but refuses the publish redelivers the
    message at most once per ``wait_s``, never in a tight loop.
    """
    deadline = clock() + wait_s
    while True:
        try:
            raise task.retry(args=args, kwargs=kwargs, countdown=countdown_s)
        except Reject as rejected:  # only raised by a failed publish
            reason = getattr(rejected, "reason", None)
            failure: Exception | str = reason if isinstance(reason, Exception | str) else rejected
        if clock() >= deadline:
            break
        log.warning(
            "task %s: cannot publish its retry (%s); trying again in %.0f s",
            task.request.id,
            failure,
            poll_s,
        )
        sleep(poll_s)
    log.error(
        "task %s: cannot publish its retry for %.0f s (%s); the message is kept for redelivery",
        task.request.id,
        wait_s,
        failure,
    )
    raise Reject(failure, requeue=True) from None
