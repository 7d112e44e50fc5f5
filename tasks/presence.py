"""``presence.update`` and ``presence.wave``: thin Celery wrappers around
:func:`worker.updates.handle_update` and :func:`worker.waves.handle_wave`."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task

from producer.schema import QUEUE, TASK_NAME, WAVE_TASK_NAME
from worker.app import app
from worker.runtime import Runtime
from worker.updates import Attempt, RetryLater, backoff_s, handle_update, record_dead_letter
from worker.waves import handle_wave, record_wave_dead_letter

log = logging.getLogger(__name__)
T = TypeVar("T")
WAVE_LOCK_WAIT_S = 1.0


def _message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, int]:
    """(payload, earlier failures) of a message. The task signatures are open on purpose: a
    message with the wrong arguments is recorded ``invalid`` instead of failing inside Celery,
    where it would vanish without an audit row."""
    payload = (
        args[0]
        if len(args) == 1 and not kwargs.keys() - {"failures"}
        else {"args": list(args), **kwargs}
    )
    failures = kwargs.get("failures", 0)
    return payload, failures if isinstance(failures, int) else 0


def _run(
    task: Task[Any, Any],
    runtime: Runtime,
    payload: Any,
    attempt: Attempt,
    work: Callable[[], T],
    dead_letter: Callable[[RetryLater], T],
) -> T:
    """Run ``work``; map RetryLater onto Celery's retry (countdown, failures counted) and give up
    with ``dead_letter`` after ``MAX_RETRIES`` real failures or when the request is too old."""
    try:
        try:
            return work()
        except RetryLater:
            raise
        except Exception as exc:
            # An unexpected error must not lose the request: retry it, then dead-letter it.
            log.exception("request %s failed unexpectedly", attempt.request_id)
            raise RetryLater(
                backoff_s(runtime, attempt.failures, None),
                f"internal error: {type(exc).__name__}",
                failed=True,
                code="internal.error",
            ) from None
    except RetryLater as later:
        failures = attempt.failures + 1 if later.failed else attempt.failures
        if (later.failed and failures > runtime.settings.max_retries) or later.code == "too.old":
            return dead_letter(later)
        raise task.retry(
            args=(payload,), kwargs={"failures": failures}, countdown=later.countdown_s
        ) from None


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def update(self: Task[Any, str], *args: Any, **kwargs: Any) -> str:
    """Apply one presence update (``args == [payload]``); returns its terminal outcome.

    Real failures are retried with backoff up to ``MAX_RETRIES`` and then dead-lettered;
    waits for budget or for another worker's lock re-schedule without counting as failures.
    """
    payload, failures = _message(args, kwargs)
    runtime = Runtime.current()
    attempt = Attempt(request_id=str(self.request.id), failures=failures, worker=runtime.name)
    return _run(
        self,
        runtime,
        payload,
        attempt,
        lambda: handle_update(runtime, payload, attempt).value,
        lambda later: record_dead_letter(runtime, payload, attempt, later).value,
    )


@app.task(name=WAVE_TASK_NAME, bind=True, max_retries=None)
def wave(self: Task[Any, dict[str, int]], *args: Any, **kwargs: Any) -> dict[str, int]:
    """Apply a wave (``args == [[{"request_id": …, "update": {…}}, …]]``) with bulk PUTs;
    returns the count of each outcome. Retries as ``presence.update`` does; elements already
    audited are skipped on a retry."""
    payload, failures = _message(args, kwargs)
    elements: list[Any] = payload if isinstance(payload, list) else [payload]
    runtime = Runtime.current()
    attempt = Attempt(request_id=str(self.request.id), failures=failures, worker=runtime.name)

    def requeue(request_id: str, update_payload: dict[str, Any], countdown_s: float) -> None:
        app.send_task(
            TASK_NAME,
            args=(update_payload,),
            task_id=request_id,
            queue=QUEUE,
            countdown=countdown_s,
        )

    def apply() -> dict[str, int]:
        # One wave per process (it fills the process's channel). A busy process hands the wave
        # back instead of parking a pool thread, so single updates and dispatch keep flowing.
        if not runtime.wave_lock.acquire(timeout=WAVE_LOCK_WAIT_S):
            raise RetryLater(
                WAVE_LOCK_WAIT_S + random.uniform(0, WAVE_LOCK_WAIT_S),
                "this process is applying another wave",
                failed=False,
            )
        try:
            return dict(handle_wave(runtime, elements, attempt, requeue))
        finally:
            runtime.wave_lock.release()

    return _run(
        self,
        runtime,
        elements,
        attempt,
        apply,
        lambda later: dict(record_wave_dead_letter(runtime, elements, attempt, later)),
    )
