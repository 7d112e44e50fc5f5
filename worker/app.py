"""The Celery application: ``celery -A worker.app worker`` (prefork or ``--pool threads``).

JSON only; ``acks_late`` with ``task_reject_on_worker_lost`` so a killed worker's message is
redelivered (every task is idempotent through the audit table); prefetch 1; retries wait in the
broker ledger (:mod:`worker.broker.ledger`), published when due by each worker's mover, so the
visibility timeout only has to exceed a task's runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from pydantic import ValidationError

from worker import names, observability, preflight
from worker.broker import guard, mover
from worker.observability import metrics
from worker.orgs import OrgsError, get_orgs
from worker.problems import settings_problem
from worker.settings import get_settings

try:
    settings = get_settings()
    orgs = get_orgs()
except ValidationError as exc:
    # One line naming the variable (never its value), not a traceback: exits with status 1.
    raise SystemExit(f"presence worker: {settings_problem(exc)}") from None
except OrgsError as exc:
    raise SystemExit(f"presence worker: {exc}") from None
# Metrics label values are bounded to the configured orgs (before any fork: children inherit).
metrics.configure_orgs(orgs)
log = logging.getLogger(__name__)
TASK_TIME_LIMIT_S = 300
MULTI_ORG_POP_TIMEOUT_S = 0.1
# A held message is redelivered after the visibility timeout: it must exceed a task's runtime,
# or a message still running would run twice. Retries are not held (the ledger keeps them).
if settings.broker_visibility_timeout_s <= TASK_TIME_LIMIT_S:
    raise SystemExit(
        "presence worker: BROKER_VISIBILITY_TIMEOUT_S must exceed "
        f"{TASK_TIME_LIMIT_S} s (the task time limit)"
    )

app = Celery(
    "presence_worker",
    broker=settings.redis_url,
    # Kombu's Redis transport with malformed messages refused before delivery
    # (worker/broker/guard.py) and surviving Redis going away (worker/broker/redis_restore.py).
    broker_transport=guard.TRANSPORT,
    include=["tasks.presence", "tasks.shifts", "tasks.wfm"],
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_disable_rate_limits=True,
    task_default_queue=names.PRESENCE_QUEUE,
    # WFM deliveries have their own queue so a failing WFM endpoint never delays presence work.
    # Shift dispatch has its own queue too, so a backlog of presence work never makes it late.
    task_routes={
        names.UPDATE_TASK: {"queue": names.PRESENCE_QUEUE},
        names.WAVE_TASK: {"queue": names.PRESENCE_QUEUE},
        names.WFM_SYNC_TASK: {"queue": names.WFM_QUEUE},
        names.WFM_SWEEP_TASK: {"queue": names.WFM_QUEUE},
        names.SHIFTS_DISPATCH_TASK: {"queue": names.SHIFTS_QUEUE},
    },
    beat_schedule={
        "wfm-sweep": {"task": names.WFM_SWEEP_TASK, "schedule": settings.wfm_sweep_interval_s},
        # Expires with its interval: after downtime, one dispatch catches up, not a pile of them.
        "shift-dispatch": {
            "task": names.SHIFTS_DISPATCH_TASK,
            "schedule": settings.shift_dispatch_interval_s,
            "options": {"expires": settings.shift_dispatch_interval_s},
        },
    },
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout_s,
        # Beside other orgs a queue is paused and resumed often: the blocking pop returns this
        # often when the queues it waits on stay empty, to pop a resumed queue soon.
        **({"polling_interval": MULTI_ORG_POP_TIMEOUT_S} if len(orgs) > 1 else {}),
    },
    broker_connection_retry_on_startup=True,
    task_time_limit=TASK_TIME_LIMIT_S,
    task_soft_time_limit=TASK_TIME_LIMIT_S - 60,
    # Task events cost CPU and Redis commands on every task; only a live view (Flower) reads
    # them. TASK_EVENTS=true (or ``-E`` on the worker command line) turns them on.
    worker_send_task_events=settings.task_events,
    task_send_sent_event=settings.task_events,
    enable_utc=True,
)
# Sentry at celeryd_init, the metrics exporter at worker_ready (worker/observability).
observability.install()
# The doctor's checks once per worker, in the main process before any pool process starts or
# any message is consumed (never in worker_process_init).
celeryd_after_setup.connect(preflight.on_worker_setup, weak=False)


@celeryd_after_setup.connect(weak=False)
def _consume_org_queues(instance: Any, **_: object) -> None:
    """A worker that consumes ``presence`` consumes every configured org's queue too. Kombu's
    Redis transport rotates its blocking pop over the queues, so a backlog in one org's queue
    never sits in front of another org's updates."""
    queues = instance.app.amqp.queues
    if names.PRESENCE_QUEUE not in queues.consume_from:
        return
    for org in orgs.values():
        if org.queue not in queues.consume_from:
            queues.select_add(org.queue)


@worker_ready.connect(weak=False)
def _start_mover(**_: object) -> None:
    """Each worker's main process publishes due retries and re-enqueues lost messages."""
    mover.start(
        app,
        settings.redis_url,
        settings.schedule_poll_s,
        settings.ledger_check_after_s,
        settings.broker_visibility_timeout_s,
    )


@worker_shutdown.connect(weak=False)
def _stop_mover(**_: object) -> None:
    mover.stop()


@worker_shutdown.connect(weak=False)
@worker_process_shutdown.connect(weak=False)
def _write_last_restamps(**_: object) -> None:
    """Calls answered in a process's last moments leave the shared budget at their completion
    time, not at their provisional stamp (their re-stamps wait for a next grant)."""
    from worker.runtime import Runtime  # late: the runtime imports most of the worker

    for runtime in Runtime.built():
        try:
            runtime.limiter.flush()
        except Exception as exc:  # Redis away at shutdown: the provisional stamps stay
            log.warning("could not write the last re-stamps of %s: %s", runtime.org.name, exc)
