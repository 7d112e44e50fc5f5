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
emptied); ``presence_budget_utilisation_ratio`` is the most recent value any process measured, per
org (each org's budget is shared by the fleet, so every process sees the same window).

**Orgs.** Every series of an update, a budget, a Genesys call, a notification channel, a WFM
delivery or a shift dispatch carries an ``org`` label (``ORG_LABELLED``); broker and process-level
series do not. Its values are bounded: the names given to ``configure_orgs`` plus ``default``;
any other value is exported as ``other`` (so a producer naming an unknown org cannot grow the
series). Recording functions take ``org`` as a keyword, ``default`` when not given: a single-org
deployment exports every series with ``org="default"``.

Labels are bounded: orgs, outcomes, HTTP methods and status codes. Never an agent id, a URL or a
secret. Recording never raises into the update flow.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
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
from producer.schema import DEFAULT_ORG

log = logging.getLogger(__name__)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_PORT: Final = 9108

# -- metric names (as exposed) ----------------------------------------------------------------
UPDATES_TOTAL: Final[str] = "presence_updates_total"
"""Counter {outcome, org}: terminal audit rows written, one per request."""
UPDATE_LATENCY_SECONDS: Final[str] = "presence_update_latency_seconds"
"""Histogram {outcome, org}: ``requested_at`` → audit row written (end to end, queueing included)."""
GENESYS_REQUEST_SECONDS: Final[str] = "presence_genesys_request_seconds"
"""Histogram {method, status, org}: each Genesys API call; ``status`` is the HTTP code or
``error``."""
CONFIRMATION_SECONDS: Final[str] = "presence_confirmation_seconds"
"""Histogram {outcome, org}: PATCH answered → confirming event (or read-back)."""
LIMITER_WAIT_SECONDS: Final[str] = "presence_limiter_wait_seconds"
"""Histogram {org}: time spent waiting for a slot of the org's budget (0 when one was free)."""
LIMITER_EXHAUSTED_TOTAL: Final[str] = "presence_limiter_exhausted_total"
"""Counter {org}: budget waits too long to sleep through (the task re-schedules itself)."""
RATE_LIMITED_TOTAL: Final[str] = "presence_genesys_rate_limited_total"
"""Counter {org}: HTTP 429 answers received from Genesys."""
BUDGET_UTILISATION_RATIO: Final[str] = "presence_budget_utilisation_ratio"
"""Gauge {org}: requests in the current 60 s window ÷ the budget, measured on every slot request."""
NOTIFICATION_SOCKETS_CONNECTED: Final[str] = "presence_notification_sockets_connected"
"""Gauge {org}: notification sockets connected (per process and org, summed over live
processes)."""
NOTIFICATION_RECONNECTS_TOTAL: Final[str] = "presence_notification_reconnects_total"
"""Counter {org}: notification socket reconnections."""
WFM_DELIVERIES_TOTAL: Final[str] = "presence_wfm_deliveries_total"
"""Counter {outcome, org}: WFM webhook deliveries (hook for the WFM publisher)."""
SHIFT_CHANGES_TOTAL: Final[str] = "presence_shift_changes_total"
"""Counter {event, org}: scheduled shift changes ``dispatched``, ``resent`` or ``skipped``
(stale)."""
SHIFT_LATENESS_SECONDS: Final[str] = "presence_shift_lateness_seconds"
"""Histogram {org}: due time → dispatch of each dispatched shift change."""
REFUSED_MESSAGES_TOTAL: Final[str] = "presence_refused_messages_total"
"""Counter {queue, reason, recorded}: broker messages refused before any task ran (malformed
envelopes, unknown tasks); ``recorded`` is ``audit``, ``quarantine`` or ``log``. No ``org``
label: a refused message is refused before its org is known (its queue says which org's it was)."""

ORG_LABELLED: Final[frozenset[str]] = frozenset(
    {
        UPDATES_TOTAL,
        UPDATE_LATENCY_SECONDS,
        GENESYS_REQUEST_SECONDS,
        CONFIRMATION_SECONDS,
        LIMITER_WAIT_SECONDS,
        LIMITER_EXHAUSTED_TOTAL,
        RATE_LIMITED_TOTAL,
        BUDGET_UTILISATION_RATIO,
        NOTIFICATION_SOCKETS_CONNECTED,
        NOTIFICATION_RECONNECTS_TOTAL,
        WFM_DELIVERIES_TOTAL,
        SHIFT_CHANGES_TOTAL,
        SHIFT_LATENESS_SECONDS,
    }
)
"""The series with an ``org`` label (every other series has none)."""

OTHER_ORG: Final = "other"
"""The label value of every org not given to ``configure_orgs`` (reserved: no org may use it)."""

_dir = os.environ.get(MULTIPROC_ENV)
if _dir:
    os.makedirs(_dir, exist_ok=True)  # a missing directory would fail the first recording


def _suffixless(name: str) -> str:
    """prometheus_client appends ``_total`` to counters itself."""
    return name.removesuffix("_total")


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

UPDATES = Counter(
    _suffixless(UPDATES_TOTAL), "Terminal audit rows by outcome and org.", ["outcome", "org"]
)
UPDATE_LATENCY = Histogram(
    UPDATE_LATENCY_SECONDS,
    "Requested → finished, by outcome and org.",
    ["outcome", "org"],
    buckets=LATENCY_BUCKETS,
)
GENESYS_REQUEST = Histogram(
    GENESYS_REQUEST_SECONDS,
    "Genesys API call time by method, HTTP status and org.",
    ["method", "status", "org"],
    buckets=CALL_BUCKETS,
)
CONFIRMATION = Histogram(
    CONFIRMATION_SECONDS,
    "PATCH answered → confirming event or read-back, by outcome and org.",
    ["outcome", "org"],
    buckets=CALL_BUCKETS,
)
LIMITER_WAIT = Histogram(
    LIMITER_WAIT_SECONDS, "Wait for a slot of the org's budget.", ["org"], buckets=WAIT_BUCKETS
)
LIMITER_EXHAUSTED = Counter(
    _suffixless(LIMITER_EXHAUSTED_TOTAL),
    "Budget waits too long to sleep; task re-scheduled.",
    ["org"],
)
RATE_LIMITED = Counter(_suffixless(RATE_LIMITED_TOTAL), "HTTP 429 answers from Genesys.", ["org"])
BUDGET_UTILISATION = Gauge(
    BUDGET_UTILISATION_RATIO,
    "Requests in the current window / budget, by org.",
    ["org"],
    multiprocess_mode="mostrecent",
)
SOCKETS_CONNECTED = Gauge(
    NOTIFICATION_SOCKETS_CONNECTED,
    "Connected notification sockets, by org.",
    ["org"],
    multiprocess_mode="livesum",
)
RECONNECTS = Counter(
    _suffixless(NOTIFICATION_RECONNECTS_TOTAL), "Notification socket reconnections.", ["org"]
)
WFM_DELIVERIES = Counter(
    _suffixless(WFM_DELIVERIES_TOTAL),
    "WFM webhook deliveries by outcome and org.",
    ["outcome", "org"],
)

SHIFT_CHANGES = Counter(
    _suffixless(SHIFT_CHANGES_TOTAL),
    "Scheduled shift changes by dispatch event and org.",
    ["event", "org"],
)
SHIFT_LATENESS = Histogram(
    SHIFT_LATENESS_SECONDS,
    "Due time to dispatch of scheduled shift changes, by org.",
    ["org"],
    buckets=(0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 900, 3600),
)

REFUSED_MESSAGES = Counter(
    _suffixless(REFUSED_MESSAGES_TOTAL),
    "Broker messages refused before any task ran, by queue, reason and where recorded.",
    ["queue", "reason", "recorded"],
)
REFUSED_QUEUES: Final = frozenset({"presence", "wfm", "shifts"})

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


_orgs: frozenset[str] = frozenset({DEFAULT_ORG})


def _export_outcomes(*orgs: str) -> None:
    """Every outcome of these orgs exported from the start, at 0 (a rate over a missing series
    is no rate at all)."""
    for org in orgs:
        for outcome in Outcome:
            UPDATES.labels(outcome=outcome.value, org=org)


_export_outcomes(DEFAULT_ORG)


def configure_orgs(names: Iterable[str]) -> None:
    """Allow these org names as ``org`` label values (``default`` always is), replacing any
    earlier call's; every other org is then exported as ``other``. Call it in each process before
    recording (a prefork child inherits its parent's). Raises ValueError for ``other``."""
    allowed = frozenset({DEFAULT_ORG, *names})
    if OTHER_ORG in allowed:
        raise ValueError(f"the org name {OTHER_ORG!r} is reserved (the metrics' overflow label)")
    global _orgs
    _orgs = allowed
    _safely(lambda: _export_outcomes(*sorted(allowed)))


def org_label(org: str) -> str:
    """The ``org`` label value of ``org``: itself when configured, else ``other``."""
    return org if org in _orgs else OTHER_ORG


# -- recording (called from the flow, the client, the limiter and the listener) ---------------
# Every function below takes the org whose work it measures (``org_label`` bounds it).
def observe_update(
    outcome: str,
    *,
    requested_at: datetime | None,
    finished_at: datetime | None,
    confirm_ms: float | None,
    org: str = DEFAULT_ORG,
) -> None:
    """One terminal audit row was written, with these values."""

    def record() -> None:
        label = org_label(org)
        UPDATES.labels(outcome=outcome, org=label).inc()
        if requested_at is not None and finished_at is not None:
            seconds = max(0.0, (finished_at - requested_at).total_seconds())
            UPDATE_LATENCY.labels(outcome=outcome, org=label).observe(seconds)
        if confirm_ms is not None:
            CONFIRMATION.labels(outcome=outcome, org=label).observe(max(0.0, confirm_ms / 1000))

    _safely(record)


def observe_genesys_call(
    method: str, status: int | None, seconds: float, *, org: str = DEFAULT_ORG
) -> None:
    _safely(
        lambda: GENESYS_REQUEST.labels(
            method=method, status=str(status or "error"), org=org_label(org)
        ).observe(seconds)
    )


def observe_rate_limited(*, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: RATE_LIMITED.labels(org=org_label(org)).inc())


def observe_limiter_wait(seconds: float, *, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: LIMITER_WAIT.labels(org=org_label(org)).observe(max(0.0, seconds)))


def observe_budget_exhausted(*, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: LIMITER_EXHAUSTED.labels(org=org_label(org)).inc())


def observe_budget(in_window: int, limit: int, *, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: BUDGET_UTILISATION.labels(org=org_label(org)).set(in_window / max(1, limit)))


def socket_connected(*, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: SOCKETS_CONNECTED.labels(org=org_label(org)).inc())


def socket_disconnected(*, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: SOCKETS_CONNECTED.labels(org=org_label(org)).dec())


def socket_reconnecting(*, org: str = DEFAULT_ORG) -> None:
    _safely(lambda: RECONNECTS.labels(org=org_label(org)).inc())


def record_wfm_delivery(outcome: str, *, org: str = DEFAULT_ORG) -> None:
    """One WFM webhook delivery ended (``delivered``, ``retried``, ``failed``, ``dead_letter`` …:
    a small fixed set, never an id)."""
    _safely(lambda: WFM_DELIVERIES.labels(outcome=outcome, org=org_label(org)).inc())


def record_shift_dispatch(
    lateness_s: list[float], resent: int, skipped: int, *, org: str = DEFAULT_ORG
) -> None:
    """One dispatcher run's changes of ``org``: the lateness of each change it dispatched, and
    how many it re-sent or skipped as stale (a run over several orgs records each org's)."""

    def record() -> None:
        label = org_label(org)
        for seconds in lateness_s:
            SHIFT_LATENESS.labels(org=label).observe(max(0.0, seconds))
        SHIFT_CHANGES.labels(event="dispatched", org=label).inc(len(lateness_s))
        SHIFT_CHANGES.labels(event="resent", org=label).inc(resent)
        SHIFT_CHANGES.labels(event="skipped", org=label).inc(skipped)

    _safely(record)


def _refused_queue(queue: str) -> str:
    """The task queues, and ``presence.<org>`` of the configured orgs; else ``other``."""
    if queue in REFUSED_QUEUES:
        return queue
    base, dot, org = queue.partition(".")
    if base == "presence" and dot and org != DEFAULT_ORG and org in _orgs:
        return queue
    return "other"


def record_refused_message(queue: str, reason: str, recorded: str) -> None:
    """One broker message was refused (``reason``: a fixed label of ``worker.envelopes``) and
    recorded in ``recorded``; queues other than the task queues (``presence.<org>`` of each
    configured org included) count as ``other``."""
    label = _refused_queue(queue)
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
