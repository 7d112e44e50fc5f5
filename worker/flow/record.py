"""The one recorder of terminal outcomes: audit row, WFM outbox row, metrics, after-commit enqueue.

Every request of either flow ends here, once. :class:`AuditDraft` is the row being assembled,
typed field by field against :class:`models.AuditRecord`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from models import AuditRecord, Outcome
from producer.schema import DEFAULT_ORG

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AuditDraft:
    """The audit row of one request, filled in as the flow learns; written by :class:`Recorder`."""

    request_id: str
    started_at: datetime
    org: str = DEFAULT_ORG
    attempts: int = 1
    worker: str | None = None
    payload: dict[str, Any] | None = None
    idempotency_key: str | None = None
    user_id: str | None = None
    source: str | None = None
    reason: str | None = None
    requested_at: datetime | None = None
    from_state: str | None = None
    from_definition_id: str | None = None
    to_state: str | None = None
    to_definition_id: str | None = None
    queue_wait_ms: float | None = None
    limiter_wait_ms: float | None = None
    api_ms: float | None = None
    confirm_ms: float | None = None
    genesys_requests: int = 0
    error_code: str | None = None
    error_message: str | None = None
    correlation_id: str | None = None
    note: str | None = None
    requeued_as: str | None = None
    outcome: Outcome | None = None
    finished_at: datetime | None = None

    def to_row(self) -> dict[str, Any]:
        """The row to insert, column name → value (not yet made storable); raises ValueError
        when the draft is not finished."""
        if self.outcome is None or self.finished_at is None:
            raise ValueError(f"audit draft of {self.request_id} has no outcome yet")
        row = {name: getattr(self, name) for name in AUDIT_COLUMNS}
        row["outcome"] = self.outcome.value
        return row


DRAFT_FIELDS = frozenset(f.name for f in fields(AuditDraft))
AUDIT_COLUMNS = tuple(c.key for c in AuditRecord.__table__.columns if c.key != "id")
"""The audit table's columns a draft fills (every one but the id; the tests hold them equal)."""


@dataclass(frozen=True, slots=True)
class Written:
    """What a store did with one draft: its terminal outcome (the one already recorded, for a
    concurrent duplicate), whether this write created it, and its WFM delivery id if any."""

    outcome: Outcome
    new: bool
    delivery_id: int | None = None


class AuditStore(Protocol):
    """Where terminal rows live. Implementations: :class:`worker.audit.SqlAuditStore`."""

    def find_outcome(
        self, *, request_id: str, idempotency_key: str | None, org: str = DEFAULT_ORG
    ) -> Outcome | None:
        """The recorded outcome of this request id, or of this idempotency key in ``org``
        (keys are unique per org), if any."""

    def audited(
        self, request_ids: list[str], idempotency_keys: list[str], org: str = DEFAULT_ORG
    ) -> set[str]:
        """Which of these request ids, and of these idempotency keys in ``org``, have a
        terminal row."""

    def write(self, drafts: list[AuditDraft], *, outbox: bool) -> list[Written]:
        """Insert the finished drafts (and, with ``outbox``, a WFM outbox row for each that
        changed the agent) in one transaction, one :class:`Written` per draft in order. A draft
        whose request already has a row is not written again. Raises on database errors."""


class Recorder:
    """Finishes requests: stamps the outcome, writes through the store, then — only after the
    commit — logs, observes metrics and enqueues WFM deliveries."""

    def __init__(
        self,
        store: AuditStore,
        *,
        now: Callable[[], datetime],
        observe: Callable[[AuditDraft], None],
        enqueue_wfm: Callable[[int], None],
        wfm_enabled: bool,
    ) -> None:
        self.store = store
        self.now = now
        self.observe = observe
        self.enqueue_wfm = enqueue_wfm
        self.wfm_enabled = wfm_enabled

    def finish(self, draft: AuditDraft, outcome: Outcome) -> Outcome:
        """Record one request; returns its terminal outcome (an earlier row's, for a duplicate)."""
        return self.finish_many([(draft, outcome)])[0]

    def finish_many(self, entries: list[tuple[AuditDraft, Outcome]]) -> list[Outcome]:
        """Record many requests in one transaction; the outcomes in order."""
        if not entries:
            return []
        finished_at = self.now()
        for draft, outcome in entries:
            draft.outcome = outcome
            draft.finished_at = finished_at
        written = self.store.write([d for d, _ in entries], outbox=self.wfm_enabled)
        for (draft, _), result in zip(entries, written, strict=True):
            if result.new:
                log.info("request %s → %s", draft.request_id, result.outcome.value)
                self.observe(draft)
        for result in written:
            if result.delivery_id is not None:
                self.enqueue_wfm(result.delivery_id)  # a crash before this is the sweeper's job
        return [result.outcome for result in written]
