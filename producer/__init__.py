"""Enqueue presence updates; on a Redis broker the only worker code used is the broker ledger's
transport (``worker.broker.ledger``: kombu and redis, no settings).

>>> from producer import PresenceProducer
>>> PresenceProducer("redis://127.0.0.1:6379/0").set_presence("<user id>", "Break", reason="Coffee")
>>> PresenceProducer("redis://127.0.0.1:6379/0", org="acme").set_presence("<user id>", "Break")
"""

from producer.api import PresenceProducer
from producer.schema import (
    DEFAULT_ORG,
    SCHEMA_VERSION,
    TASK_NAME,
    WAVE_TASK_NAME,
    PresenceUpdate,
    queue_for,
)

__all__ = [
    "DEFAULT_ORG",
    "SCHEMA_VERSION",
    "TASK_NAME",
    "WAVE_TASK_NAME",
    "PresenceProducer",
    "PresenceUpdate",
    "queue_for",
]
