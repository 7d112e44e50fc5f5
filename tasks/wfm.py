"""``wfm.sync`` delivers one outbox row; ``wfm.sweep`` re-enqueues the ones left pending."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Task
from redis.lock import Lock

from models import DeliveryState, WfmDelivery
from models.db import session_scope
from worker import names, wfm
from worker.app import app
from worker.broker.retry import republish
from worker.observability import metrics
from worker.orgs import DEFAULT_ORG, UnknownOrg, get_orgs
from worker.retry import RetryPolicy
from worker.runtime import Runtime
from worker.settings import get_settings

log = logging.getLogger(__name__)


_warned: set[str] = set()


def _warn_once(url: str, secret: str) -> None:
    """Log each unsafe WFM setting once per process, at WARNING."""
    for warning in wfm.config_warnings(url, secret):
        if warning not in _warned:
            _warned.add(warning)
            log.warning("%s", warning)


@app.task(name=names.WFM_SYNC_TASK, bind=True, max_retries=None)
def sync(self: Task[Any, str], delivery_id: int) -> str:
    """Deliver one WFM event; retried with backoff on 5xx/408/429/timeouts, up to
    ``WFM_MAX_RETRIES``; other 4xx fail at once. Returns the delivery's state."""
    orgs = get_orgs()
    org = next(iter(orgs))
    if len(orgs) > 1:  # which org's webhook: the one of the delivery's audit row
        with session_scope(get_settings().database_url) as session:
            org = wfm.delivery_org(session, delivery_id) or DEFAULT_ORG
    try:
        runtime = Runtime.current(org)
    except UnknownOrg as exc:
        log.error("WFM delivery %d left pending: %s", delivery_id, exc)
        return "unknown-org"
    settings = runtime.settings
    if not settings.wfm_webhook_url:
        return "disabled"
    _warn_once(settings.wfm_webhook_url, settings.wfm_webhook_secret.get_secret_value())
    # One sender per delivery at a time (a sweep may re-enqueue a row whose retry is running).
    lock = runtime.redis.lock(
        f"presence:wfm:delivery:{delivery_id}", timeout=settings.wfm_timeout_s + 30
    )
    if not lock.acquire(blocking=False):
        return "busy"
    try:
        return _sync_locked(self, runtime, delivery_id)
    finally:
        _release(lock)


def _release(lock: Lock) -> None:
    """Release a delivery's lock. When Redis cannot answer (it is down, or the lock expired) the
    lock's timeout frees it: that must not replace the task's own end, such as a retry kept for
    redelivery while Redis is down, with an error that acknowledges the message away."""
    try:
        lock.release()
    except redis.RedisError as exc:
        log.warning("could not release a WFM delivery lock (it expires by itself): %s", exc)


def _sync_locked(task: Task[Any, str], runtime: Runtime, delivery_id: int) -> str:
    settings = runtime.settings
    policy = RetryPolicy.for_wfm(settings)
    assert settings.wfm_webhook_url is not None
    with session_scope(settings.database_url) as session:
        delivery = session.get(WfmDelivery, delivery_id)
        if delivery is None or delivery.state != DeliveryState.PENDING.value:
            return delivery.state if delivery is not None else "missing"
        attempted = wfm.deliver(
            session,
            delivery,
            runtime.http,
            url=settings.wfm_webhook_url,
            secret=settings.wfm_webhook_secret.get_secret_value(),
            timeout_s=settings.wfm_timeout_s,
            final=policy.exhausted(delivery.attempts + 1),
        )
        if attempted.result == "retry":
            countdown = policy.backoff_s(delivery.attempts - 1, attempted.retry_after_s)
            delivery.next_attempt_at = datetime.now(UTC) + timedelta(seconds=countdown)
    metrics.record_wfm_delivery(
        attempted.result, org=runtime.org.name
    )  # delivered | retry | failed
    if attempted.result == "retry":
        republish(task, args=(delivery_id,), countdown_s=countdown)
    return attempted.result


@app.task(name=names.WFM_SWEEP_TASK)
def sweep() -> int:
    """Re-enqueue pending deliveries whose send was lost (a crash between commit and send)."""
    settings = get_settings()
    if not any(org.settings.wfm_webhook_url for org in get_orgs().values()):
        return 0
    with session_scope(settings.database_url) as session:
        ids = wfm.stale(session, older_than_s=settings.wfm_sweep_after_s)
    for delivery_id in ids:
        sync.apply_async(args=(delivery_id,))
    if ids:
        log.info("re-enqueued %d pending WFM deliveries", len(ids))
    return len(ids)
