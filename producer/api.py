"""``PresenceProducer``: send ``presence.update`` by name through the broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from celery import Celery

from producer.schema import (
    QUEUE,
    TASK_NAME,
    WAVE_MAX_AGENTS,
    WAVE_TASK_NAME,
    PresenceUpdate,
    wave_element,
)

# Kombu's Redis transport writing the broker ledger with each push: a message a worker pops
# and dies with before holding it is enqueued again (worker/broker/ledger.py).
LEDGER_TRANSPORT = "worker.broker.ledger:Transport"


class PresenceProducer:
    """Validates payloads locally and enqueues them; needs only the broker URL.

    On a Redis broker each message is recorded in the broker ledger before its push, in the same
    round trip, so a message taken by a worker that is killed before it holds it is enqueued again
    instead of lost."""

    def __init__(self, broker_url: str) -> None:
        ledgered = broker_url.split("://", 1)[0] in ("redis", "rediss")
        self.app = Celery(
            "presence-producer",
            broker=broker_url,
            broker_transport=LEDGER_TRANSPORT if ledgered else None,
            set_as_current=False,
        )
        self.app.conf.update(
            task_serializer="json", accept_content=["json"], task_ignore_result=True
        )

    def send(self, update: PresenceUpdate, *, request_id: str | None = None) -> str:
        """Enqueue one update; returns its request id (the Celery task id)."""
        task_id = request_id or str(uuid.uuid4())
        self.app.send_task(TASK_NAME, args=[update.to_message()], queue=QUEUE, task_id=task_id)
        return task_id

    def send_many(self, updates: Iterable[PresenceUpdate]) -> list[str]:
        """Enqueue several updates over one broker connection."""
        ids = []
        with self.app.producer_or_acquire() as producer:
            for update in updates:
                task_id = str(uuid.uuid4())
                self.app.send_task(
                    TASK_NAME,
                    args=[update.to_message()],
                    queue=QUEUE,
                    task_id=task_id,
                    producer=producer,
                )
                ids.append(task_id)
        return ids

    def send_wave(self, updates: Iterable[PresenceUpdate]) -> list[str]:
        """Enqueue many agents' updates as ``presence.wave`` messages of at most 1,000 agents,
        applied with bulk PUTs (50 agents per Genesys call); returns the request ids in order.
        Each update still gets its own audit row; prefer this to :meth:`send_many` for hundreds
        of agents changing at once."""
        elements = [wave_element(str(uuid.uuid4()), u.to_message()) for u in updates]
        with self.app.producer_or_acquire() as producer:
            for start in range(0, len(elements), WAVE_MAX_AGENTS):
                self.app.send_task(
                    WAVE_TASK_NAME,
                    args=[elements[start : start + WAVE_MAX_AGENTS]],
                    queue=QUEUE,
                    producer=producer,
                )
        return [e["request_id"] for e in elements]

    def set_presence(
        self,
        user_id: str,
        state: str,
        *,
        reason: str | None = None,
        source: str = "api",
        expected_state: str | None = None,
        idempotency_key: str | None = None,
        message: str | None = None,
    ) -> str:
        """Validate and enqueue; raises pydantic.ValidationError on bad input."""
        update = PresenceUpdate(
            user_id=user_id,
            state=state,
            reason=reason,
            source=source,
            expected_state=expected_state,
            idempotency_key=idempotency_key,
            message=message,
            requested_at=datetime.now(UTC),
        )
        return self.send(update)

    def close(self) -> None:
        self.app.close()
