"""``shifts.dispatch``: the periodic dispatcher of scheduled shift changes (run by celery beat)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tasks.presence import wave
from worker import names
from worker.app import app
from worker.settings import get_settings
from worker.shifts.dispatch import dispatch_due, wave_queue


@app.task(name=names.SHIFTS_DISPATCH_TASK)
def dispatch() -> dict[str, Any]:
    """Send every due shift change as ``presence.wave`` messages; returns the dispatch report.

    Safe to run concurrently (two beats): claims are exclusive, see ``worker.shifts.dispatch``.
    """

    def send(elements: list[dict[str, Any]]) -> None:
        wave.apply_async(args=(elements,), queue=wave_queue(elements))

    return asdict(dispatch_due(get_settings(), send))
