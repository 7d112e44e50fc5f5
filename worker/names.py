"""Every task name, queue name and derived request id, defined once.

The presence tasks and their queue belong to the producer contract (``producer.schema``) and are
re-exported here, so worker code takes every name from one module.
"""

from __future__ import annotations

from producer.schema import DEFAULT_ORG
from producer.schema import QUEUE as PRESENCE_QUEUE
from producer.schema import TASK_NAME as UPDATE_TASK
from producer.schema import WAVE_TASK_NAME as WAVE_TASK

WFM_QUEUE = "wfm"
SHIFTS_QUEUE = "shifts"

WFM_SYNC_TASK = "wfm.sync"
WFM_SWEEP_TASK = "wfm.sweep"
SHIFTS_DISPATCH_TASK = "shifts.dispatch"

SHIFT_REQUEST_PREFIX = "shift-"

DEFAULT_KEY_PREFIX = "presence"
"""The Redis key prefix of the default org: the keys of a single-org deployment."""

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_ORG",
    "PRESENCE_QUEUE",
    "SHIFTS_DISPATCH_TASK",
    "SHIFTS_QUEUE",
    "SHIFT_REQUEST_PREFIX",
    "UPDATE_TASK",
    "WAVE_TASK",
    "WFM_QUEUE",
    "WFM_SWEEP_TASK",
    "WFM_SYNC_TASK",
    "org_key_prefix",
    "shift_request_id",
]


def shift_request_id(shift_id: int) -> str:
    """The request id a scheduled shift change is sent with: one audit row per shift row."""
    return f"{SHIFT_REQUEST_PREFIX}{shift_id}"


def org_key_prefix(org: str) -> str:
    """The prefix of every per-org Redis key of ``org``: ``presence`` for the default org (the
    keys a single-org deployment has always used), ``presence:org:<org>`` for any other, so no
    key of one org can name another org's agent, queue, client or request."""
    return DEFAULT_KEY_PREFIX if org == DEFAULT_ORG else f"{DEFAULT_KEY_PREFIX}:org:{org}"
