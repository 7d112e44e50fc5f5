"""One request as both flows see it: the attempt, the validated and resolved change, its draft."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from producer.schema import PresenceUpdate, invalid_message, org_of
from worker.catalog import Definition, UnknownPresence
from worker.flow.ports import Catalog
from worker.flow.record import AuditDraft


@dataclass(slots=True)
class Attempt:
    """One delivery of a request to a worker: which request, how many real failures came
    before, who runs it and since when."""

    request_id: str
    started_at: datetime
    failures: int = 0
    worker: str = ""

    def for_request(self, request_id: str) -> Attempt:
        """The same delivery, for another request id (an element of a wave)."""
        return Attempt(request_id, self.started_at, self.failures, self.worker)


@dataclass(slots=True)
class Request:
    """A valid change, resolved to presence definitions, and what the flow learns about it."""

    attempt: Attempt
    raw: dict[str, Any]
    update: PresenceUpdate
    target: Definition
    expected: Definition | None
    draft: AuditDraft
    current: Definition | None = None
    current_label: str | None = None
    current_ms: int = 0  # the agent's modifiedDate as last known before the change (0: unknown)
    reserved: tuple[str, ...] = ()

    @property
    def user_id(self) -> str:
        return self.update.user_id

    @property
    def request_id(self) -> str:
        return self.attempt.request_id

    @property
    def org(self) -> str:
        """The org the agent belongs to (the payload's ``org``, ``default`` when it names none)."""
        return self.update.org

    @property
    def order_id(self) -> str:
        """The request's identity for per-agent ordering: the original's for a requeued copy,
        else its idempotency key, else its id. Copies and duplicates (a repeated key) share it,
        or the original's marker would supersede the copy (or the copy the original)."""
        return self.update.requeue_of or self.update.idempotency_key or self.attempt.request_id

    @property
    def stamp_us(self) -> int:
        return int(self.update.requested_at.timestamp() * 1_000_000)

    @property
    def ordering_key(self) -> tuple[str, int, str]:
        return self.user_id, self.stamp_us, self.order_id

    def set_current(
        self, definition: Definition | None, label: str, definition_id: str, modified_ms: int
    ) -> None:
        """Record the agent's presence before the change (on the draft too)."""
        self.current = definition
        self.current_label = label
        self.current_ms = modified_ms
        self.draft.from_state = label
        self.draft.from_definition_id = definition.id if definition is not None else definition_id


def add_note(draft: AuditDraft, note: str | None) -> None:
    """Append ``note`` to the row's notes (None adds nothing)."""
    if note:
        draft.note = f"{draft.note}; {note}" if draft.note else note


def new_draft(attempt: Attempt, raw: Any) -> AuditDraft:
    """The audit draft of a request, before anything is known about its payload; its org is
    the one the payload names when that is a valid org name, else ``default``."""
    payload = raw if isinstance(raw, dict) else {"raw": str(raw)[:500]}
    return AuditDraft(
        request_id=attempt.request_id,
        org=org_of(raw),
        started_at=attempt.started_at,
        attempts=attempt.failures + 1,
        worker=attempt.worker,
        payload=payload,
    )


def validate(
    attempt: Attempt, raw: Any, *, max_future_skew_s: float | None = None
) -> tuple[AuditDraft, PresenceUpdate | None]:
    """The request's draft, filled with what its payload says; the payload as a PresenceUpdate,
    or None when it is invalid (the draft then carries the one-line reason). With
    ``max_future_skew_s``, a ``requested_at`` further ahead of the attempt is invalid: it would
    win against every later request for the agent."""
    draft = new_draft(attempt, raw)
    try:
        update = PresenceUpdate.model_validate(raw)
    except ValidationError as exc:
        draft.error_code, draft.error_message = "invalid.payload", invalid_message(exc)
        if isinstance(raw, dict) and raw.get("user_id") is not None:
            draft.user_id = str(raw["user_id"])[:64]
        return draft, None
    ahead_s = (update.requested_at - attempt.started_at).total_seconds()
    if max_future_skew_s is not None and ahead_s > max_future_skew_s:
        draft.user_id = update.user_id
        draft.error_code = "invalid.payload"
        draft.error_message = (
            f"Invalid payload — requested_at: {ahead_s:.0f} s in the future; at most "
            f"{max_future_skew_s:g} s ahead is accepted (REQUESTED_AT_MAX_SKEW_S)"
        )
        return draft, None
    draft.user_id = update.user_id
    draft.source = update.source
    draft.reason = update.reason
    draft.idempotency_key = update.idempotency_key
    draft.requested_at = update.requested_at
    draft.to_state = update.state
    draft.queue_wait_ms = round(
        (attempt.started_at - update.requested_at).total_seconds() * 1000, 2
    )
    if update.requeue_of is not None:
        add_note(draft, f"requeue of {update.requeue_of}")
    return draft, update


def parse(
    catalog: Catalog, attempt: Attempt, raw: Any, *, max_future_skew_s: float
) -> Request | AuditDraft:
    """The request, validated and resolved; or, when it is invalid, its draft carrying the
    one-line reason (to be recorded ``invalid``).

    Raises ``GenesysError`` or ``BudgetExhausted`` when the definitions cannot be fetched.
    """
    draft, update = validate(attempt, raw, max_future_skew_s=max_future_skew_s)
    if update is None:
        return draft
    assert isinstance(raw, dict)  # it validated
    try:
        target = catalog.resolve(update.state, update.reason)
        expected = catalog.resolve(update.expected_state) if update.expected_state else None
    except UnknownPresence as exc:
        draft.error_code, draft.error_message = "unknown.presence", str(exc)
        return draft
    draft.to_state, draft.to_definition_id = target.label, target.id
    return Request(attempt, raw, update, target, expected, draft)
