"""The worker app with Celery's own per-worker ``rate_limit`` instead of the shared limiter.

Benchmark baseline only (``celery -A bench.celery_rate_limited worker``): Celery applies the
limit per worker instance, so the fleet's total is the sum over workers and nothing coordinates
them or reacts to a 429.
"""

from __future__ import annotations

import os

from worker.app import app

app.conf.worker_disable_rate_limits = False
app.conf.task_annotations = {
    "presence.update": {"rate_limit": os.environ["BENCH_CELERY_RATE_LIMIT"]}
}

__all__ = ["app"]
