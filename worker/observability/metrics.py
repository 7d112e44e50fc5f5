"""Prometheus metrics of the workers, safe under prefork, and their exporter.

**Multiprocess mode.** Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory in the
environment of ``celery worker`` (read by ``prometheus_client`` at import, so an environment
variable, not a ``.env`` setting). Every process — the prefork parent and each child, or the one
``--pool threads`` process — writes its values to memory-mapped files there, and **one exporter**
merges them: ``presence metrics --port 9108`` (a side process with the same variable), or the
worker's main process itself when ``METRICS_PORT`` is set. Empty the directory whenever the worker
host or container starts (a tmpfs or ``emptyDir`` per worker instance; never share one between
instances). Without the variable each process keeps its own registry: ``METRICS_PORT`` then works
for ``--pool threads`` only (prefork children would be invisible).

Merging: counters and histograms add up over every process that ever wrote, so the counts of a
recycled child survive; ``presence_notification_sockets_connected`` adds up the *live* processes
(each marks itself dead when it shuts down; a SIGKILLed one stays counted until the directory is
emptied); ``presence_budget_utilisation_ratio`` is the most recent value any process measured (the
budget is shared, so every process sees the same window).

Labels are bounded: outcomes, HTTP methods and status codes. Never an agent id, a URL or a secret.
Recording never raises into the update flow.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from models.audit import Outcome

log = logging.getLogger(__name__)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_PORT: Final = 9108

# -- metric names (as exposed) ----------------------------------------------------------------
UPDATES_TOTAL: Final[str] = "presence_updates_total"
"""Counter {outcome}: terminal audit rows written, one per request."""
UPDATE_LATENCY_SECONDS: Final[str] = "presence_update_latency_seconds"
"""Histogram {outcome}: ``requested_at`` → audit row written (end to end, queueing included)."""
GENESYS_REQUEST_SECONDS: Final[str] = "presence_genesys_request_seconds"
"""Histogram {method, status}: each Genesys API call; ``status`` is the HTTP code or ``error``."""
CONFIRMATION_SECONDS: Final[str] = "presence_confirmation_seconds"
"""Histogram {outcome}: PATCH answered → confirming event (or read-back)."""
LIMITER_WAIT_SECONDS: Final[str] = "presence_limiter_wait_seconds"
"""Histogram: time spent waiting for a slot of the shared budget (0 when one was free)."""
LIMITER_EXHAUSTED_TOTAL: Final[str] = "presence_limiter_exhausted_total"
"""Counter: budget waits too long to sleep through (the task re-schedules itself)."""
RATE_LIMITED_TOTAL: Final[str] = "presence_genesys_rate_limited_total"
"""Counter: HTTP 429 answers received from Genesys."""
BUDGET_UTILISATION_RATIO: Final[str] = "presence_budget_utilisation_ratio"
"""Gauge: requests in the current 60 s window ÷ the budget, measured on every slot request."""
NOTIFICATION_SOCKETS_CONNECTED: Final[str] = "presence_notification_sockets_connected"
"""Gauge: notification sockets connected (per process 0/1, summed over live processes)."""
NOTIFICATION_RECONNECTS_TOTAL: Final[str] = "presence_notification_reconnects_total"
"""Counter: notification socket reconnections."""
WFM_DELIVERIES_TOTAL: Final[str] = "presence_wfm_deliveries_total"
"""Counter {outcome}: WFM webhook deliveries (hook for the WFM publisher)."""
SHIFT_CHANGES_TOTAL: Final[str] = "presence_shift_changes_total"
"""Counter {event}: scheduled shift changes ``dispatched``, ``resent`` or ``skipped`` (stale)."""
SHIFT_LATENESS_SECONDS: Final[str] = "presence_shift_lateness_seconds"
"""Histogram: due time → dispatch of each dispatched shift change."""
REFUSED_MESSAGES_TOTAL: Final[str] = "presence_refused_messages_total"
"""Counter {queue, reason, recorded}: broker messages refused before any task ran (malformed
envelopes, unknown tasks); ``recorded`` is ``audit``, ``quarantine`` or ``log``."""

_dir = os.environ.get(MULTIPROC_ENV)
if _dir:
    os.makedirs(_dir, exist_ok=True)  # a missing directory would fail the first recording


def _suffixless(name: str) -> str:
    """prometheus_client appends ``_total`` to counters itself."""
    return name.removesuffix("_total")


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

UPDATES = Counter(_suffixless(UPDATES_TOTAL), "Terminal audit rows by outcome.", ["outcome"])
UPDATE_LATENCY = Histogram(
    UPDATE_LATENCY_SECONDS,
    "Requested → finished, by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
GENESYS_REQUEST = Histogram(
    GENESYS_REQUEST_SECONDS,
    "Genesys API call time by method and HTTP status.",
    ["method", "status"],
    buckets=CALL_BUCKETS,
)
CONFIRMATION = Histogram(
    CONFIRMATION_SECONDS,
    "PATCH answered → confirming event or read-back, by outcome.",
    ["outcome"],
    buckets=CALL_BUCKETS,
)
LIMITER_WAIT = Histogram(
    LIMITER_WAIT_SECONDS, "Wait for a slot of the shared budget.", buckets=WAIT_BUCKETS
)
LIMITER_EXHAUSTED = Counter(
    _suffixless(LIMITER_EXHAUSTED_TOTAL), "Budget waits too long to sleep; task re-scheduled."
)
RATE_LIMITED = Counter(_suffixless(RATE_LIMITED_TOTAL), "HTTP 429 answers from Genesys.")
BUDGET_UTILISATION = Gauge(
    BUDGET_UTILISATION_RATIO,
    "Requests in the current window / budget.",
    multiprocess_mode="mostrecent",
)
SOCKETS_CONNECTED = Gauge(
    NOTIFICATION_SOCKETS_CONNECTED,
    "Connected notification sockets.",
    multiprocess_mode="livesum",
)
RECONNECTS = Counter(
    _suffixless(NOTIFICATION_RECONNECTS_TOTAL), "Notification socket reconnections."
)
WFM_DELIVERIES = Counter(
    _suffixless(WFM_DELIVERIES_TOTAL), "WFM webhook deliveries by outcome.", ["outcome"]
)

SHIFT_CHANGES = Counter(
    _suffixless(SHIFT_CHANGES_TOTAL), "Scheduled shift changes by dispatch event.", ["event"]
)
SHIFT_LATENESS = Histogram(
    SHIFT_LATENESS_SECONDS,
    "Due time to dispatch of scheduled shift changes.",
    buckets=(0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 900, 3600),
)

REFUSED_MESSAGES = Counter(
    _suffixless(REFUSED_MESSAGES_TOTAL),
    "Broker messages refused before any task ran, by queue, reason and where recorded.",
    ["queue", "reason", "recorded"],
)
REFUSED_QUEUES: Final = frozenset({"presence", "wfm", "shifts"})

for _outcome in Outcome:  # every outcome exported from the start, at 0
    UPDATES.labels(_outcome.value)

_warned = False


def _safely(record: Callable[[], object]) -> None:
    """Metrics must never fail an update: log the first problem, then stay quiet."""
    global _warned
    try:
        record()
    except Exception as exc:
        if not _warned:
            _warned = True
            log.warning("recording a metric failed: %s: %s", type(exc).__name__, exc)


# -- recording (called from the flow, the client, the limiter and the listener) ---------------
def observe_update(
    outcome: str,
    *,
    requested_at: datetime | None,
    finished_at: datetime | None,
    confirm_ms: float | None,
) -> None:
    """One terminal audit row was written, with these values."""

    def record() -> None:
        UPDATES.labels(outcome).inc()
        if requested_at is not None and finished_at is not None:
            seconds = max(0.0, (finished_at - requested_at).total_seconds())
            UPDATE_LATENCY.labels(outcome).observe(seconds)
        if confirm_ms is not None:
            CONFIRMATION.labels(outcome).observe(max(0.0, confirm_ms / 1000))

    _safely(record)


def observe_genesys_call(method: str, status: int | None, seconds: float) -> None:
    _safely(lambda: GENESYS_REQUEST.labels(method, str(status or "error")).observe(seconds))


def observe_rate_limited() -> None:
    _safely(RATE_LIMITED.inc)


def observe_limiter_wait(seconds: float) -> None:
    _safely(lambda: LIMITER_WAIT.observe(max(0.0, seconds)))


def observe_budget_exhausted() -> None:
    _safely(LIMITER_EXHAUSTED.inc)


def observe_budget(in_window: int, limit: int) -> None:
    _safely(lambda: BUDGET_UTILISATION.set(in_window / max(1, limit)))


def socket_connected() -> None:
    _safely(SOCKETS_CONNECTED.inc)


def socket_disconnected() -> None:
    _safely(SOCKETS_CONNECTED.dec)


def socket_reconnecting() -> None:
    _safely(RECONNECTS.inc)


def record_wfm_delivery(outcome: str) -> None:
    """One WFM webhook delivery ended (``delivered``, ``retried``, ``failed``, ``dead_letter`` …:
    a small fixed set, never an id)."""
    _safely(lambda: WFM_DELIVERIES.labels(outcome).inc())


def record_shift_dispatch(lateness_s: list[float], resent: int, skipped: int) -> None:
    """One dispatcher run: the lateness of each change it dispatched, and how many it re-sent
    or skipped as stale."""

    def record() -> None:
        for seconds in lateness_s:
            SHIFT_LATENESS.observe(max(0.0, seconds))
        SHIFT_CHANGES.labels("dispatched").inc(len(lateness_s))
        SHIFT_CHANGES.labels("resent").inc(resent)
        SHIFT_CHANGES.labels("skipped").inc(skipped)

    _safely(record)


def record_refused_message(queue: str, reason: str, recorded: str) -> None:
    """One broker message was refused (``reason``: a fixed label of ``worker.envelopes``) and
    recorded in ``recorded``; queues other than the task queues count as ``other``."""
    label = queue if queue in REFUSED_QUEUES else "other"
    _safely(lambda: REFUSED_MESSAGES.labels(label, reason[:40], recorded).inc())


# -- exporting ------------------------------------------------------------------------------
def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def registry() -> CollectorRegistry:
    """What an exporter serves: every process's files in multiprocess mode, else this process."""
    path = multiproc_dir()
    if path is None:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
    return merged


def serve(port: int, addr: str) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``addr``:``port`` from a daemon thread of this process."""
    server, thread = start_http_server(port, addr=addr, registry=registry())
    return server, thread


def on_worker_ready(**_: Any) -> None:
    """``worker_ready`` receiver (main process): the in-worker exporter when METRICS_PORT is set."""
    from worker.settings import get_settings

    settings = get_settings()
    port, host = settings.metrics_port, settings.metrics_host
    if port is None:
        return
    if multiproc_dir() is None:
        log.warning(
            "METRICS_PORT without %s: only this process's metrics are served "
            "(prefork children are not)",
            MULTIPROC_ENV,
        )
    try:
        serve(port, host)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d (METRICS_HOST, METRICS_PORT): %s", host, port, exc)
        return
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)


def on_process_shutdown(**_: Any) -> None:
    """``worker_process_shutdown`` / ``worker_shutdown`` receiver: drop this process's live
    gauges from the merged view."""
    path = multiproc_dir()
    if path is not None:
        _safely(lambda: mark_process_dead(os.getpid(), path))  # type: ignore[no-untyped-call]
