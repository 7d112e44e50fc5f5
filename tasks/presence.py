"""``presence.update``: the thin Celery wrapper around :func:`worker.updates.handle_update`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from producer.schema import TASK_NAME
from worker.app import app
from worker.runtime import Runtime
from worker.updates import Attempt, RetryLater, backoff_s, handle_update, record_dead_letter

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def update(self: Task[Any, str], *args: Any, **kwargs: Any) -> str:
    """Apply one presence update (``args == [payload]``); returns its terminal outcome.

    Real failures are retried with backoff up to ``MAX_RETRIES`` and then dead-lettered;
    waits for budget or for another worker's lock re-schedule without counting as failures.
    The signature is open on purpose: a message with the wrong arguments is recorded
    ``invalid`` instead of failing inside Celery, where it would vanish without an audit row.
    """
    payload = (
        args[0]
        if len(args) == 1 and not kwargs.keys() - {"failures"}
        else {"args": list(args), **kwargs}
    )
    failures = kwargs.get("failures", 0) if isinstance(kwargs.get("failures", 0), int) else 0
    runtime = Runtime.current()
    attempt = Attempt(request_id=str(self.request.id), failures=failures, worker=runtime.name)
    try:
        try:
            return handle_update(runtime, payload, attempt).value
        except RetryLater:
            raise
        except Exception as exc:
            # An unexpected error must not lose the request: retry it, then dead-letter it.
            log.exception("request %s failed unexpectedly", attempt.request_id)
            raise RetryLater(
                backoff_s(runtime, failures, None),
                f"internal error: {type(exc).__name__}",
                failed=True,
                code="internal.error",
            ) from None
    except RetryLater as later:
        next_failures = failures + 1 if later.failed else failures
        if (
            later.failed and next_failures > runtime.settings.max_retries
        ) or later.code == "too.old":
            return record_dead_letter(runtime, payload, attempt, later).value
        raise self.retry(
            args=(payload,), kwargs={"failures": next_failures}, countdown=later.countdown_s
        ) from None
