"""Operating the workers: Sentry error reporting (``sentry``) and Prometheus metrics (``metrics``).

:func:`install` connects both to Celery's worker signals; ``worker.app`` calls it. Nothing here
runs in ``worker_process_init`` (whose handlers must finish within seconds).
"""

from __future__ import annotations

from celery.signals import celeryd_init, worker_process_shutdown, worker_ready, worker_shutdown

_installed = False


def install() -> None:
    """Sentry at ``celeryd_init`` (main process, before any fork) when SENTRY_DSN is set; the
    metrics exporter at ``worker_ready`` when METRICS_PORT is set; each process marks itself dead
    for the multiprocess gauges when it shuts down. Idempotent."""
    global _installed
    if _installed:
        return
    from worker.observability import metrics, sentry

    celeryd_init.connect(sentry.on_celeryd_init, weak=False)
    worker_ready.connect(metrics.on_worker_ready, weak=False)
    worker_process_shutdown.connect(metrics.on_process_shutdown, weak=False)
    worker_shutdown.connect(metrics.on_process_shutdown, weak=False)
    _installed = True
