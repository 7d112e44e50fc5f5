"""``PresenceProducer``: send ``presence.update`` by name through the broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from producer.schema import (
    DEFAULT_ORG,
    TASK_NAME,
    WAVE_MAX_AGENTS,
    WAVE_TASK_NAME,
    PresenceUpdate,
    check_org,
    queue_for,
    wave_element,
)

# Kombu's Redis transport writing the broker ledger with each push: a message a worker pops
# and dies with before holding it is enqueued again (worker/broker/ledger.py).
LEDGER_TRANSPORT = "worker.broker.ledger:Transport"


class PresenceProducer:
    """Validates payloads locally and enqueues them; needs only the broker URL.

    On a Redis broker each message is recorded in the broker ledger before its push, in the same
    round trip, so a message taken by a worker that is killed before it holds it is enqueued again
    instead of lost.

    ``org`` is the org of every update that names none (an update's own ``org`` field, when
    set, wins); each update goes to its org's queue (``producer.schema.queue_for``). Raises
    ValueError when ``org`` is no org name."""

    def __init__(self, broker_url: str, org: str = DEFAULT_ORG) -> None:
        self.org = check_org(org)
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

    def addressed(self, update: PresenceUpdate) -> PresenceUpdate:
        """``update`` as it is sent: with the producer's org unless it sets its own."""
        if self.org == DEFAULT_ORG or "org" in update.model_fields_set:
            return update
        return update.model_copy(update={"org": self.org})

    def send(self, update: PresenceUpdate, *, request_id: str | None = None) -> str:
        """Enqueue one update on its org's queue; returns its request id (the Celery task id)."""
        task_id = request_id or str(uuid.uuid4())
        sent = self.addressed(update)
        self.app.send_task(
            TASK_NAME, args=[sent.to_message()], queue=queue_for(sent.org), task_id=task_id
        )
        return task_id

    def send_many(self, updates: Iterable[PresenceUpdate]) -> list[str]:
        """Enqueue several updates over one broker connection."""
        ids = []
        with self.app.producer_or_acquire() as producer:
            for update in updates:
                task_id = str(uuid.uuid4())
                sent = self.addressed(update)
                self.app.send_task(
                    TASK_NAME,
                    args=[sent.to_message()],
                    queue=queue_for(sent.org),
                    task_id=task_id,
                    producer=producer,
                )
                ids.append(task_id)
        return ids

    def send_wave(self, updates: Iterable[PresenceUpdate]) -> list[str]:
        """Enqueue many agents' updates as ``presence.wave`` messages of at most 1,000 agents,
        applied with bulk PUTs (50 agents per Genesys call); returns the request ids in order.
        Each update still gets its own audit row; prefer this to :meth:`send_many` for hundreds
        of agents changing at once. A wave holds one org's updates and goes to its queue: updates
        of several orgs make separate waves (org by org, in order of first appearance)."""
        request_ids: list[str] = []
        by_org: dict[str, list[dict[str, Any]]] = {}
        for update in updates:
            sent = self.addressed(update)
            request_ids.append(str(uuid.uuid4()))
            by_org.setdefault(sent.org, []).append(wave_element(request_ids[-1], sent.to_message()))
        with self.app.producer_or_acquire() as producer:
            for org, elements in by_org.items():
                for start in range(0, len(elements), WAVE_MAX_AGENTS):
                    self.app.send_task(
                        WAVE_TASK_NAME,
                        args=[elements[start : start + WAVE_MAX_AGENTS]],
                        queue=queue_for(org),
                        producer=producer,
                    )
        return request_ids

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
        org: str | None = None,
    ) -> str:
        """Validate and enqueue (for ``org``, else the producer's org); raises
        pydantic.ValidationError on bad input."""
        update = PresenceUpdate(
            org=org if org is not None else self.org,
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
