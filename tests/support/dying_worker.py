"""``celery -A tests.support.dying_worker worker``: the worker's own app, except that its process
SIGKILLs itself right after its consumer pops a presence message and before it holds it — the
window in which a crash used to lose the message."""

from __future__ import annotations

import os
import signal
from typing import Any

from worker.app import app
from worker.broker import ledger

__all__ = ["app"]


def _die_before_holding(self: ledger.QoS, message: Any, delivery_tag: str) -> None:
    raw = getattr(message, "_raw", None)
    if isinstance(raw, dict) and ledger.ledgered_id(raw) is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    ledger.kombu_virtual.QoS.append(self, message, delivery_tag)


ledger.QoS.append = _die_before_holding  # type: ignore[method-assign]
