"""Queues this process leaves alone for a while: an org whose budget is spent until its next slot.

A fleet serving several orgs consumes one queue per org. When one org's budget is spent, popping
its backlog only to re-schedule each message would cost every other org CPU and threads; its
queue is paused instead until its next slot frees (:func:`pause`, called by the org's limiter),
and the channel's queue cycle leaves paused queues out of its blocking pop
(:class:`PausingCycle`). Its backlog waits in the queue, in order, where it costs nothing.

Process-local: with the threads pool the consumer and the tasks share the process (prefork
children cannot pause their parent's consumer; there a spent budget only re-schedules).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# An org whose queue holds more than this many minutes of its budget runs one task at a time in
# a process beside other orgs (:func:`task_share`).
DEEP_BACKLOG_MINUTES = 2

_until: dict[str, float] = {}
_busy: dict[str, int] = {}  # queue -> its tasks running in this process
_full: set[str] = set()  # queues whose tasks fill their share of this process's threads
_lock = threading.Lock()


def pause(queue: str, until: float) -> None:
    """Leave ``queue`` out of this process's pops until ``until`` (``time.monotonic()``); an
    earlier end than one already set does not shorten it."""
    with _lock:
        if until > _until.get(queue, 0.0):
            _until[queue] = until


def paused(now: float | None = None) -> frozenset[str]:
    """The queues paused at ``now`` (monotonic; default: now), and those whose tasks fill their
    share of this process (:func:`occupying`)."""
    now = time.monotonic() if now is None else now
    with _lock:
        for queue in [q for q, until in _until.items() if until <= now]:
            del _until[queue]
        return frozenset(_until) | _full


def task_share(backlog: int, budget_per_minute: int, share: int) -> int:
    """How many of an org's tasks may run at once in a process beside other orgs: ``share``, or
    1 while its queue holds more than :data:`DEEP_BACKLOG_MINUTES` of its budget
    (``backlog`` messages). Such a backlog drains at the budget's pace however fast each
    minute's allowance is spent (one minute's burst more or less, out of several), so spending
    the allowance in a burst would only take the CPU from the other orgs' updates."""
    if budget_per_minute > 0 and backlog > DEEP_BACKLOG_MINUTES * budget_per_minute:
        return 1
    return share


@contextmanager
def occupying(queue: str, share: int) -> Iterator[None]:
    """Run one task of ``queue``; while ``share`` of them run in this process the queue is left
    out of the pop, so that one org's burst never takes every thread (and the GIL) from the
    other orgs' updates."""
    with _lock:
        _busy[queue] = running = _busy.get(queue, 0) + 1
        if running >= share:
            _full.add(queue)
    try:
        yield
    finally:
        with _lock:
            _busy[queue] = running = _busy[queue] - 1
            if running < share:
                _full.discard(queue)


def resume_all() -> None:
    """Forget every pause (tests; a process that stops serving)."""
    with _lock:
        _until.clear()
        _busy.clear()
        _full.clear()


class PausingCycle:
    """Kombu's queue cycle (round robin by default) without the paused queues. When every queue
    it would pop is paused it pops them all: the blocking pop then still returns within its
    timeout, so the consumer's loop comes back to see a pause end."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def consume(self, n: int) -> list[str]:
        queues: list[str] = self.inner.consume(n)
        stopped = paused()
        if not stopped:
            return queues
        return [q for q in queues if q not in stopped] or queues

    def update(self, queues: Any) -> None:
        self.inner.update(queues)

    def rotate(self, last_used: str) -> Any:
        return self.inner.rotate(last_used)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
