"""Operating the workers: Sentry error reporting (``sentry``) and Prometheus metrics (``metrics``).

:func:`install` connects both, and the start-up log line naming the installed versions, to
Celery's worker signals; ``worker.app`` calls it. Nothing here
runs in ``worker_process_init`` (whose handlers must finish within seconds).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from worker.version import startup_line

log = logging.getLogger(__name__)
_installed = False


def on_celeryd_after_setup(**_: Any) -> None:
    """``celeryd_after_setup`` receiver (main process, logging configured): one INFO line with
    the package's version and those of celery, kombu and redis-py."""
    log.info("%s", startup_line())


def install() -> None:
    """Sentry at ``celeryd_init`` (main process, before any fork) when SENTRY_DSN is set; the
    start-up line at ``celeryd_after_setup``; the metrics exporter at ``worker_ready`` when
    METRICS_PORT is set; each process marks itself dead for the multiprocess gauges when it
    shuts down. Idempotent."""
    global _installed
    if _installed:
        return
    from worker.observability import metrics, sentry

    celeryd_after_setup.connect(on_celeryd_after_setup, weak=False)
    celeryd_init.connect(sentry.on_celeryd_init, weak=False)
    worker_ready.connect(metrics.on_worker_ready, weak=False)
    worker_process_shutdown.connect(metrics.on_process_shutdown, weak=False)
    worker_shutdown.connect(metrics.on_process_shutdown, weak=False)
    _installed = True
