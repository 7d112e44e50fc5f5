"""Celery task events are off unless asked for: they cost every task CPU and Redis commands,
and only a live view (Flower) reads them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "from worker.app import app; "
    "print(app.conf.worker_send_task_events, app.conf.task_send_sent_event)"
)


@pytest.mark.parametrize(("value", "expected"), [(None, "False False"), ("true", "True True")])
def test_task_events_follow_the_setting(value: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASK_EVENTS"}
    if value is not None:
        env["TASK_EVENTS"] = value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[-2] == expected
