"""The mover: a thread in each worker's main process running :func:`worker.broker.ledger.move_due`
every ``SCHEDULE_POLL_S``, so retries are published when due, messages lost between a pop and
their hold are pushed again and the holds of dead workers restored, with no beat process needed
(any live worker moves them; the Lua scripts make concurrent movers safe)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.broker import holders, ledger

log = logging.getLogger(__name__)


class Mover:
    """Settles acknowledgements Redis could not take (:data:`ledger.PENDING_ACKS`); in a
    consuming process (given ``restore``) keeps it alive as a holder, writes its taken times
    (:data:`ledger.TAKEN`) and restores the messages of dead holders (kombu's ``unacked`` ones
    with ``restore``, ledger holds with :func:`ledger.restore_held`; ledger holds older than
    ``visibility_s`` whatever their holder); and runs :func:`ledger.move_due` on ``client``
    every ``poll_s`` until stopped. A Redis that cannot be reached is logged once per outage
    and tried again on the next pass."""

    def __init__(
        self,
        client: redis.Redis,
        send: Callable[[ledger.Scheduled], None],
        *,
        poll_s: float,
        check_after_s: float = ledger.CHECK_AFTER_S,
        now: Callable[[], float] = time.time,
        restore: Callable[[list[str]], None] | None = None,
        visibility_s: float = 3600.0,
    ) -> None:
        self.client = client
        self.send = send
        self.restore = restore
        self.visibility_s = visibility_s
        self.poll_s = poll_s
        self.check_after_s = check_after_s
        self.now = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False

    def run_once(self) -> ledger.Moved | None:
        """One pass; None when Redis could not be reached."""
        try:
            ledger.PENDING_ACKS.settle(self.client)
            if self.restore is not None:  # a consuming process: a holder, and a restorer
                holders.beat(self.client)
                ledger.TAKEN.write(self.client)
                orphaned = holders.orphans(self.client, now=self.now())
                if orphaned:
                    log.warning("restoring %d message(s) held by a dead worker", len(orphaned))
                    self.restore(orphaned)
                now = self.now()
                holds = ledger.orphaned_holds(self.client, now=now, visibility_s=self.visibility_s)
                if holds:
                    log.warning(
                        "restoring %d message(s) held by a dead or stuck worker", len(holds)
                    )
                    for member in holds:
                        ledger.restore_held(self.client, member, now=now)
            moved = ledger.move_due(
                self.client, self.send, now=self.now(), check_after_s=self.check_after_s
            )
        except redis.RedisError as exc:
            if not self._down:
                log.warning("the ledger mover cannot reach Redis (%s); trying again", exc)
            self._down = True
            return None
        if self._down:
            log.info("the ledger mover reaches Redis again")
        self._down = False
        return moved

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-mover", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.run_once()
            except Exception:  # the thread must outlive any one pass
                log.exception("the ledger mover's pass failed")
                moved = None
            busy = moved is not None and moved.published + moved.requeued >= ledger.MOVE_LIMIT
            self._stop.wait(0 if busy else self.poll_s)


_current: Mover | None = None


def start(
    app: Any, redis_url: str, poll_s: float, check_after_s: float, visibility_s: float
) -> Mover:
    """Start this process's mover, publishing through ``app`` (a Celery app)."""
    global _current

    def send(entry: ledger.Scheduled) -> None:
        app.send_task(
            entry.task,
            args=entry.args,
            kwargs=entry.kwargs,
            task_id=entry.id,
            queue=entry.queue,
            expires=entry.expires,
            retries=entry.retries,
        )

    def restore(tags: list[str]) -> None:
        # Kombu's own restore: in one transaction, out of ``unacked`` and back on its queue.
        with app.connection_for_write() as connection:
            qos = connection.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    _current = Mover(
        client,
        send,
        poll_s=poll_s,
        check_after_s=check_after_s,
        restore=restore,
        visibility_s=visibility_s,
    )
    _current.start()
    return _current


def stop() -> None:
    if _current is not None:
        _current.stop()
