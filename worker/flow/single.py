"""The flow of one presence update, free of Celery.

:func:`handle_update` either records exactly one terminal audit row and returns its outcome, or
raises :class:`~worker.retry.RetryLater` having recorded nothing. Steps: parse (validate,
resolve the definitions) → register as the agent's newest → under the agent's lock: recorded
already? superseded? → the agent's presence now (shared cache; on a miss one GET, only when a
rule needs it) → the verdict
(expected state, transition matrix, capacity guard) → subscribe → PATCH → confirm (socket
event, another process's event, else one read-back) → record.
"""

from __future__ import annotations

import logging
from typing import Any

from models import Outcome
from worker.flow import steps
from worker.flow.decisions import SUPERSEDED, Defer, ReadBack, Reject, confirm, needs_current
from worker.flow.ports import Ports
from worker.flow.record import AuditDraft
from worker.flow.request import Attempt, Request, add_note, parse, validate
from worker.genesys.client import CallLog, recording
from worker.genesys.errors import GenesysError
from worker.intents import Intent
from worker.limiter import BudgetExhausted, waiting_as
from worker.notifications.listener import PresenceEvent
from worker.ordering import AgentBusy
from worker.retry import Delay, GiveUp, RetryLater
from worker.state_cache import AgentState, state_of

log = logging.getLogger(__name__)
LOCK_RETRY_S = 1.0
DEFER_JITTER_S = 1.0


def handle_update(ports: Ports, raw: Any, attempt: Attempt) -> Outcome:
    """Apply one request; returns its terminal outcome or raises RetryLater (nothing recorded)."""
    # The request id: its budget ticket survives the re-schedules.
    with recording() as calls, waiting_as(attempt.request_id):
        try:
            parsed = parse(
                ports.catalog, attempt, raw, max_future_skew_s=ports.config.max_future_skew_s
            )
        except GenesysError as exc:
            if exc.retryable:
                raise steps.failure(exc) from None
            draft, _ = validate(attempt, raw)  # e.g. credentials or permissions
            return _finish(ports, *steps.refused(draft, exc), calls)
        except BudgetExhausted as exc:
            raise steps.budget_wait(exc) from None
        if isinstance(parsed, AuditDraft):
            return _finish(ports, parsed, Outcome.INVALID, calls)
        request = parsed
        config = ports.config
        try:
            ports.api.await_budget()  # an org over its budget: its turn first, then the work
            with ports.ordering.register_lock_and_read(
                *request.ordering_key,
                ttl_s=config.agent_lock_ttl_s,
                wait_s=config.agent_lock_wait_s,
                read=ports.intents.first_reads(request.request_id, request.user_id),
            ) as (superseded, first_reads):
                first = ports.intents.from_first_reads(request.user_id, first_reads)
                return _apply_locked(ports, request, calls, superseded, first)
        except AgentBusy as exc:
            raise steps.wait(LOCK_RETRY_S, str(exc)) from None
        except BudgetExhausted as exc:
            raise steps.budget_wait(exc) from None


def _finish(ports: Ports, draft: AuditDraft, outcome: Outcome, calls: CallLog) -> Outcome:
    steps.charge(draft, calls)
    return ports.recorder.finish(draft, outcome)


def _apply_locked(
    ports: Ports,
    request: Request,
    calls: CallLog,
    superseded: bool,
    first: tuple[Intent | None, AgentState | None],
) -> Outcome:
    """Under the agent's lock; ``superseded`` and ``first`` (the request's mark, the agent's
    cached state) were read as the lock was taken."""
    recorded = ports.audit.find_outcome(
        request_id=request.request_id,
        idempotency_key=request.update.idempotency_key,
        org=request.org,
    )
    if recorded is not None:
        return recorded  # a redelivery or a repeated key: applied once
    try:
        marked, cached = first
        if marked is not None:
            # An earlier delivery may have sent the write: read back, never write twice.
            presence = None if marked.accepted else ports.api.get_presence(request.user_id)[0]
            if steps.applied_earlier(ports, request, marked, presence):
                return _finish(ports, request.draft, Outcome.APPLIED_UNCONFIRMED, calls)
            cached = None  # the read-back refreshed the cache: read it again
        if superseded:  # read as the lock was taken
            return _finish(ports, *steps.rejected(request.draft, SUPERSEDED), calls)
        ports.confirmations.wait_subscribed()  # a cold start: priming may soon cover this agent
        _load_current(ports, request, cached)
        decision = steps.verdict(ports, request)
        if isinstance(decision, Reject):
            return _finish(ports, *steps.rejected(request.draft, decision), calls)
        if isinstance(decision, Defer):
            raise RetryLater(
                Delay.DEFER,
                decision.message,
                countdown_s=ports.config.capacity_observation_ttl_s
                + ports.jitter(0, DEFER_JITTER_S),
                code="capacity.deferred",
            )
        request.reserved = decision.reserved
        add_note(request.draft, decision.note)
        return _write_and_confirm(ports, request, calls)
    except GenesysError as exc:
        if exc.retryable:
            raise steps.failure(exc) from None
        return _finish(ports, *steps.refused(request.draft, exc), calls)


def _load_current(ports: Ports, request: Request, cached: AgentState | None) -> None:
    """The agent's presence: ``cached`` (read from the shared cache as the lock was taken),
    else the shared cache now (priming may have filled it meanwhile); on a miss, one GET only
    when a rule needs it (:func:`~worker.flow.decisions.needs_current`, as for a wave's
    agents), and only once a cold start's priming, which may fill it, is done."""
    state = cached if cached is not None else ports.cache.get(request.user_id)
    if state is None and needs_current(request.target, request.expected, ports.matrix):
        if ports.confirmations.wait_primed():
            state = ports.cache.get(request.user_id)
        if state is None:
            presence, _ = ports.api.get_presence(request.user_id)
            state = state_of(presence, "read")
            ports.cache.put(request.user_id, state)
    if state is not None:
        steps.describe_current(ports, request, state)


def _write_and_confirm(ports: Ports, request: Request, calls: CallLog) -> Outcome:
    """PATCH, then confirm. Once the PATCH is accepted nothing here raises: whatever the
    confirmation learns (or fails to learn) is recorded, and the change is never sent again."""
    draft, target = request.draft, request.target
    subscribed = ports.confirmations.ensure_subscribed(request.user_id)
    waiter = ports.confirmations.expect(request.user_id) if subscribed else None
    event: PresenceEvent | None = None
    try:
        try:
            intent = steps.intent(ports, request)
            with ports.intents.marking({request.request_id: intent}):
                presence, answer = ports.api.patch_presence(
                    request.user_id, target.id, request.update.message
                )
        except (GenesysError, BudgetExhausted) as exc:
            steps.release(ports, [request])  # not applied: give the room back
            if isinstance(exc, BudgetExhausted):  # never sent: the retry need not read back
                ports.intents.clear([request.request_id])
            raise
        written = state_of(presence, "patch")
        steps.accepted(
            ports,
            {request.request_id: (intent, answer.correlation_id)},
            state=(request.user_id, written),
        )
        draft.correlation_id = answer.correlation_id
        draft.api_ms = round(calls.api_s * 1000, 2)
        started = ports.clock.monotonic()
        if waiter is not None:
            event = waiter.wait_for(
                target.id, answer.correlation_id, written.modified_ms, ports.config.ack_timeout_s
            )
            if event is None:
                log.warning(
                    "no confirming event for %s within %.1f s (%d other events seen)",
                    request.user_id,
                    ports.config.ack_timeout_s,
                    len(waiter.events),
                )
    finally:
        if waiter is not None:
            ports.confirmations.done(waiter)
    shared = ports.cache.get(request.user_id) if event is None else None
    confirmation = confirm(
        target.id, written.modified_ms, socket_event=event, shared=shared, read_back=None
    )
    if confirmation is None:
        confirmation = confirm(
            target.id,
            written.modified_ms,
            socket_event=None,
            shared=None,
            read_back=_read_back(ports, request.user_id),
        )
    assert confirmation is not None  # a read-back always decides
    draft.confirm_ms = round((ports.clock.monotonic() - started) * 1000, 2)
    return _finish(ports, *steps.confirmed(draft, confirmation), calls)


def _read_back(ports: Ports, user_id: str) -> ReadBack:
    try:
        presence, _ = ports.api.get_presence(user_id)
    except (GenesysError, BudgetExhausted) as exc:
        return ReadBack(failure=str(exc))
    ports.cache.put(user_id, state_of(presence, "read"))
    return ReadBack(presence)


def record_dead_letter(ports: Ports, raw: Any, attempt: Attempt, give_up: GiveUp) -> Outcome:
    """Retries are exhausted: keep the request (requeueable) with the last error."""
    return record_ended(ports, raw, attempt, Outcome.DEAD_LETTER, give_up.code, give_up.message)


def record_ended(
    ports: Ports, raw: Any, attempt: Attempt, outcome: Outcome, code: str, message: str
) -> Outcome:
    """End the request without applying it: its row says ``outcome``, ``code`` and ``message``
    (with what its payload tells, valid or not)."""
    draft, _ = validate(attempt, raw)
    draft.error_code, draft.error_message = code, message
    return ports.recorder.finish(draft, outcome)
