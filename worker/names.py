"""Every task name, queue name and derived request id, defined once.

The presence tasks and their queue belong to the producer contract (``producer.schema``) and are
re-exported here, so worker code takes every name from one module.
"""

from __future__ import annotations

from producer.schema import QUEUE as PRESENCE_QUEUE
from producer.schema import TASK_NAME as UPDATE_TASK
from producer.schema import WAVE_TASK_NAME as WAVE_TASK

WFM_QUEUE = "wfm"
SHIFTS_QUEUE = "shifts"

WFM_SYNC_TASK = "wfm.sync"
WFM_SWEEP_TASK = "wfm.sweep"
SHIFTS_DISPATCH_TASK = "shifts.dispatch"

SHIFT_REQUEST_PREFIX = "shift-"

__all__ = [
    "PRESENCE_QUEUE",
    "SHIFTS_DISPATCH_TASK",
    "SHIFTS_QUEUE",
    "SHIFT_REQUEST_PREFIX",
    "UPDATE_TASK",
    "WAVE_TASK",
    "WFM_QUEUE",
    "WFM_SWEEP_TASK",
    "WFM_SYNC_TASK",
    "shift_request_id",
]


def shift_request_id(shift_id: int) -> str:
    """The request id a scheduled shift change is sent with: one audit row per shift row."""
    return f"{SHIFT_REQUEST_PREFIX}{shift_id}"
