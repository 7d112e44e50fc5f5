"""The flow of one presence update (DESIGN.md §2), free of Celery.

``handle_update`` either writes exactly one terminal audit row and returns its outcome, or
raises :class:`RetryLater`. The Celery task only maps ``RetryLater`` onto ``Task.retry``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from models import AuditRecord, Outcome
from models.db import session_scope
from producer.schema import PresenceUpdate
from worker import audit, wfm
from worker.catalog import Definition, UnknownPresence
from worker.genesys.client import CallLog, recording
from worker.genesys.errors import GenesysError
from worker.genesys.models import UserPresence
from worker.limiter import BudgetExhausted
from worker.observability import metrics
from worker.ordering import AgentBusy
from worker.rules.capacity import takes_out_of_routing
from worker.runtime import Runtime
from worker.state_cache import AgentState

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Try the request again after ``countdown_s``.

    ``failed`` marks a real failure that counts toward the retry limit (5xx, 429, timeouts);
    waiting for budget or for another worker's lock does not.
    """

    def __init__(
        self, countdown_s: float, message: str, *, failed: bool, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.countdown_s = countdown_s
        self.message = message
        self.failed = failed
        self.code = code


@dataclass(slots=True)
class Attempt:
    request_id: str
    failures: int = 0  # earlier attempts that failed
    worker: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class Draft:
    """The audit row being assembled."""

    fields: dict[str, Any]

    def set(self, **values: Any) -> None:
        self.fields.update(values)


def backoff_s(rt: Runtime, failures: int, retry_after_s: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the platform's Retry-After."""
    base = min(rt.settings.retry_backoff_max_s, rt.settings.retry_backoff_s * (2**failures))
    delay = random.uniform(base / 2, base)
    return max(delay, retry_after_s or 0.0)


def invalid_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "Invalid payload — " + "; ".join(parts)


def base_fields(attempt: Attempt, raw: Any) -> dict[str, Any]:
    payload = raw if isinstance(raw, dict) else {"raw": str(raw)[:500]}
    return {
        "request_id": attempt.request_id,
        "started_at": attempt.started_at,
        "attempts": attempt.failures + 1,
        "worker": attempt.worker,
        "payload": payload,
    }


def validated(draft: Draft, raw: Any, attempt: Attempt) -> PresenceUpdate | None:
    """The payload as a PresenceUpdate, described on ``draft``; None when it is invalid (then
    ``draft`` holds the one-line reason)."""
    try:
        update = PresenceUpdate.model_validate(raw)
    except ValidationError as exc:
        draft.set(error_code="invalid.payload", error_message=invalid_message(exc))
        if isinstance(raw, dict):
            user_id = raw.get("user_id")
            draft.set(user_id=str(user_id)[:64] if user_id is not None else None)
        return None
    draft.set(
        user_id=update.user_id,
        source=update.source,
        reason=update.reason,
        idempotency_key=update.idempotency_key,
        requested_at=update.requested_at,
        to_state=update.state,
        queue_wait_ms=round((attempt.started_at - update.requested_at).total_seconds() * 1000, 2),
    )
    return update


def finish(rt: Runtime, draft: Draft, outcome: Outcome, call_log: CallLog | None = None) -> Outcome:
    now = datetime.now(UTC)
    draft.set(outcome=outcome.value, finished_at=now)
    if call_log is not None:
        draft.set(
            genesys_requests=call_log.calls,
            limiter_wait_ms=round(call_log.limiter_wait_s * 1000, 2),
        )
    delivery_id = None
    with session_scope(rt.settings.database_url) as session:
        record, written = audit.write(session, draft.fields)
        result = Outcome(record.outcome)
        if written and rt.settings.wfm_webhook_url:
            delivery = wfm.outbox_row(session, record)  # same transaction as the audit row
            delivery_id = delivery.id if delivery is not None else None
    if written:  # committed: the one place every terminal outcome passes, once per request
        log.info("request %s → %s", draft.fields["request_id"], outcome.value)
        metrics.observe_update(draft.fields)
    if delivery_id is not None:
        rt.enqueue_wfm(delivery_id)  # only after commit; a crash here is the sweeper's job
    return result


def finish_batch(rt: Runtime, entries: list[tuple[Draft, Outcome]]) -> list[Outcome]:
    """:func:`finish` for many requests in one transaction (a wave's batch); same promises.

    A concurrent duplicate (a unique key already taken) makes the batch fall back to one
    transaction per row, which keeps the row written first.
    """
    if not entries:
        return []
    now = datetime.now(UTC)
    for draft, outcome in entries:
        draft.set(outcome=outcome.value, finished_at=now)
    deliveries: list[int] = []
    try:
        with session_scope(rt.settings.database_url) as session:
            records = [AuditRecord(**draft.fields) for draft, _ in entries]
            session.add_all(records)
            session.flush()
            if rt.settings.wfm_webhook_url:
                for record in records:
                    delivery = wfm.outbox_row(session, record)
                    if delivery is not None:
                        deliveries.append(delivery.id)
    except IntegrityError:
        return [finish(rt, draft, outcome) for draft, outcome in entries]
    for draft, outcome in entries:
        log.info("request %s → %s", draft.fields["request_id"], outcome.value)
        metrics.observe_update(draft.fields)
    for delivery_id in deliveries:
        rt.enqueue_wfm(delivery_id)
    return [outcome for _, outcome in entries]


def record_dead_letter(rt: Runtime, raw: Any, attempt: Attempt, error: RetryLater) -> Outcome:
    """Retries are exhausted: keep the request (requeueable) with the last error."""
    draft = Draft(base_fields(attempt, raw))
    if isinstance(raw, dict):
        draft.set(
            user_id=raw.get("user_id"),
            source=raw.get("source"),
            idempotency_key=raw.get("idempotency_key"),
        )
    draft.set(
        error_code=error.code,
        error_message=f"Gave up after {attempt.failures + 1} attempts: {error.message}",
    )
    return finish(rt, draft, Outcome.DEAD_LETTER)


def handle_update(rt: Runtime, raw: Any, attempt: Attempt) -> Outcome:
    """Apply one request; returns its terminal outcome or raises RetryLater."""
    draft = Draft(base_fields(attempt, raw))
    update = validated(draft, raw, attempt)
    if update is None:
        return finish(rt, draft, Outcome.INVALID)
    age_s = (attempt.started_at - update.requested_at).total_seconds()
    with recording() as call_log:
        try:
            target = rt.catalog.resolve(update.state, update.reason)
            expected = rt.catalog.resolve(update.expected_state) if update.expected_state else None
        except UnknownPresence as exc:
            draft.set(error_code="unknown.presence", error_message=str(exc))
            return finish(rt, draft, Outcome.INVALID, call_log)
        except GenesysError as exc:
            if exc.retryable:
                raise retry_or_fail(rt, attempt, exc) from None
            return _failed(rt, draft, exc, call_log)  # e.g. credentials or permissions
        except BudgetExhausted as exc:
            raise wait_later(rt, age_s, exc.retry_in_s, str(exc)) from None
        draft.set(to_state=target.label, to_definition_id=target.id)
        stamp_us = int(update.requested_at.timestamp() * 1_000_000)
        # Duplicates (a repeated idempotency key) share one identity, or the copy would supersede
        # the original and neither would be applied.
        rt.ordering.register(update.user_id, stamp_us, order_id(update, attempt))
        try:
            with rt.ordering.lock(
                update.user_id,
                ttl_s=rt.settings.agent_lock_ttl_s,
                wait_s=rt.settings.ack_timeout_s + rt.settings.http_timeout_s,
            ):
                return _apply_locked(
                    rt, update, target, expected, stamp_us, attempt, draft, call_log
                )
        except AgentBusy as exc:
            raise wait_later(rt, age_s, 1.0, str(exc)) from None
        except BudgetExhausted as exc:
            raise wait_later(rt, age_s, exc.retry_in_s, str(exc)) from None


def wait_later(rt: Runtime, age_s: float, countdown_s: float, message: str) -> RetryLater:
    if age_s > rt.settings.max_request_age_s:
        return RetryLater(
            0, f"still waiting after {age_s:.0f} s: {message}", failed=True, code="too.old"
        )
    return RetryLater(countdown_s + random.uniform(0, 0.5), message, failed=False)


def retry_or_fail(rt: Runtime, attempt: Attempt, exc: GenesysError) -> RetryLater:
    return RetryLater(
        backoff_s(rt, attempt.failures, exc.retry_after_s),
        exc.message,
        failed=True,
        code=exc.code or str(exc.status),
    )


def order_id(update: PresenceUpdate, attempt: Attempt) -> str:
    """The request's identity for per-agent ordering: its idempotency key, else its request id."""
    return update.idempotency_key or attempt.request_id


def as_state(presence: UserPresence, seen_via: str) -> AgentState:
    modified = presence.modified_date
    return AgentState(
        presence.presence_definition.id,
        presence.presence_definition.system_presence or "",
        int(modified.timestamp() * 1000) if modified is not None else 0,
        seen_via,
    )


def is_in(current: Definition | None, expected: Definition) -> bool:
    """A system presence matches any of its secondary presences; a secondary only itself."""
    if current is None:
        return False
    return current.system == expected.system if expected.primary else current.id == expected.id


def _current_state(rt: Runtime, user_id: str) -> tuple[Definition | None, str]:
    """The agent's current definition: from the shared cache, or one GET on a miss."""
    cached = rt.cache.get(user_id)
    if cached is None:
        presence, _ = rt.client.get_presence(user_id)
        cached = as_state(presence, "read")
        rt.cache.put(user_id, cached)
    definition = rt.catalog.by_id(cached.definition_id)
    label = definition.label if definition is not None else cached.system_presence
    return definition, label


def _apply_locked(
    rt: Runtime,
    update: PresenceUpdate,
    target: Definition,
    expected: Definition | None,
    stamp_us: int,
    attempt: Attempt,
    draft: Draft,
    call_log: CallLog,
) -> Outcome:
    with session_scope(rt.settings.database_url) as session:
        existing = audit.find_existing(
            session, request_id=attempt.request_id, idempotency_key=update.idempotency_key
        )
        if existing is not None:
            return Outcome(existing.outcome)  # a redelivery or a repeated key: applied once
    if rt.ordering.is_superseded(update.user_id, stamp_us, order_id(update, attempt)):
        draft.set(error_message="A newer request for this agent was accepted")
        return finish(rt, draft, Outcome.SUPERSEDED, call_log)
    try:
        current, current_label = _current_state(rt, update.user_id)
        draft.set(from_state=current_label, from_definition_id=current.id if current else None)
        if expected is not None and not is_in(current, expected):
            draft.set(
                error_code="unexpected.state",
                error_message=f"Expected {expected.label} but the agent is {current_label}",
            )
            return finish(rt, draft, Outcome.REJECTED_TRANSITION, call_log)
        if current is not None:
            verdict = rt.matrix.check(current, target)
            if not verdict.allowed:
                draft.set(error_code="transition.denied", error_message=verdict.reason)
                return finish(rt, draft, Outcome.REJECTED_TRANSITION, call_log)
        reserved: tuple[str, ...] = ()
        if takes_out_of_routing(current, target):
            if update.capacity_policy == "force":
                draft.set(note=f"capacity guard bypassed: {update.force_reason}")
            else:
                room = rt.capacity.check_and_reserve(attempt.request_id, update.user_id)
                if not room.allowed:
                    deadline = update.defer_until or update.requested_at + timedelta(
                        seconds=rt.settings.capacity_defer_max_s
                    )
                    if update.capacity_policy == "defer" and datetime.now(UTC) < deadline:
                        raise RetryLater(
                            rt.settings.capacity_observation_ttl_s + random.uniform(0, 1),
                            f"waiting for room: {room.reason}",
                            failed=False,
                            code="capacity.deferred",
                        )
                    draft.set(error_code="capacity.insufficient", error_message=room.reason)
                    return finish(rt, draft, Outcome.REJECTED_CAPACITY, call_log)
                reserved = room.queues
        subscribed = rt.listener.ensure_subscribed(update.user_id)
        waiter = rt.listener.expect(update.user_id) if subscribed else None
        try:
            try:
                presence, answer = rt.client.patch_presence(
                    update.user_id, target.id, update.message
                )
            except (GenesysError, BudgetExhausted):
                rt.capacity.release(attempt.request_id, reserved)  # not applied: give room back
                raise
            draft.set(correlation_id=answer.correlation_id, api_ms=round(call_log.api_s * 1000, 2))
            written = as_state(presence, "patch")
            rt.cache.put(update.user_id, written)
            modified_ms = written.modified_ms
            confirm_started = time.perf_counter()
            event = (
                waiter.wait_for(
                    target.id, answer.correlation_id, modified_ms, rt.settings.ack_timeout_s
                )
                if waiter is not None
                else None
            )
            if event is not None:
                draft.set(confirm_ms=round((time.perf_counter() - confirm_started) * 1000, 2))
                return finish(rt, draft, Outcome.CONFIRMED, call_log)
            if waiter is not None:
                log.warning(
                    "no confirming event for %s within %.1f s (%d other events seen); reading back",
                    update.user_id,
                    rt.settings.ack_timeout_s,
                    len(waiter.events),
                )
        finally:
            if waiter is not None:
                rt.listener.done(waiter)
        readback, _ = rt.client.get_presence(update.user_id)
        draft.set(confirm_ms=round((time.perf_counter() - confirm_started) * 1000, 2))
        rt.cache.put(update.user_id, as_state(readback, "read"))
        if readback.presence_definition.id == target.id:
            return finish(rt, draft, Outcome.APPLIED_UNCONFIRMED, call_log)
        draft.set(
            error_code="drifted",
            error_message=f"Read back {readback.presence_definition.system_presence} after the change",
        )
        return finish(rt, draft, Outcome.DRIFTED, call_log)
    except GenesysError as exc:
        if exc.retryable:
            raise retry_or_fail(rt, attempt, exc) from None
        return _failed(rt, draft, exc, call_log)


def _failed(rt: Runtime, draft: Draft, exc: GenesysError, call_log: CallLog) -> Outcome:
    """The platform refused (400/401/403/404, bad credentials): ``failed``, its code and message."""
    hint = " (check the OAuth client's roles)" if exc.status == 403 else ""
    draft.set(
        error_code=exc.code or (str(exc.status) if exc.status else "refused"),
        error_message=f"{exc.message}{hint}",
        correlation_id=exc.correlation_id or draft.fields.get("correlation_id"),
    )
    return finish(rt, draft, Outcome.FAILED, call_log)
